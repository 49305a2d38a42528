"""Every registered segmentation model exports, becomes AVAILABLE in `geolabel serve` and answers
a request of the smallest size its export accepts (and refuses one pixel less with a 400)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from geolabel.models import MODELS

SMALLER = {"ternaus": {"width": 8}}  # a narrower decoder keeps the export quick; the encoder is VGG's


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_is_served_down_to_its_smallest_input(name, tmp_path):
    from geolabel.models import build_model
    from geolabel.serving.export import export_run
    from geolabel.serving.server import ModelServer

    model = build_model(name, 2, **SMALLER.get(name, {}))
    model.save(tmp_path / f"{name}.keras")
    export_run(tmp_path / f"{name}.keras", tmp_path / "base", 1)
    meta = json.loads((tmp_path / "base" / "1" / "assets.extra" / "geolabel.json").read_text())
    side = int(meta["min_input_size"])
    with ModelServer(model_name=name, model_base_path=tmp_path / "base", rest_api_port=0, port=None,
                     host="127.0.0.1", poll_seconds=0) as srv:
        srv.wait_available(timeout=180)
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models/{name}"
        status = requests.get(url, timeout=30).json()["model_version_status"]
        assert [s["state"] for s in status] == ["AVAILABLE"]
        x = np.random.default_rng(0).uniform(0, 255, (1, side, side, 3)).round()
        r = requests.post(url + ":predict", json={"inputs": x.tolist()}, timeout=180)
        assert r.status_code == 200, r.text[:300]
        assert np.asarray(r.json()["outputs"]["classes"]).shape == (1, side, side)
        if side > 1:
            small = requests.post(url + ":predict", json={"inputs": x[:, 1:, 1:].tolist()}, timeout=180)
            assert small.status_code == 400 and "smaller than the smallest input" in small.json()["error"]
