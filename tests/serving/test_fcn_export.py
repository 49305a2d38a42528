"""A real FCN (inner reflect padding of 34 px) exported with `geolabel export` loads, serves and refuses small inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests


@pytest.fixture(scope="module")
def fcn_base(tmp_path_factory):
    """`geolabel export` of build_model("fcn", 2) saved as a .keras run: BASE/1."""
    from click.testing import CliRunner

    from geolabel.cli import cli
    from geolabel.models import build_model

    root = tmp_path_factory.mktemp("fcn")
    model = build_model("fcn", 2)
    model.save(root / "fcn.keras")
    result = CliRunner().invoke(cli, ["export", str(root / "fcn.keras"), "--out", str(root / "base"), "--version", "1"])
    assert result.exit_code == 0, (result.output, result.exception)
    return root


def test_fcn_warmup_requests_fit_the_network(fcn_base):
    """Warm-up images are at least the FCN's minimum (36 px: 4-px stride, reflect padding needs > 34)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    extra = fcn_base / "base" / "1" / "assets.extra"
    meta = json.loads((extra / "geolabel.json").read_text())
    assert meta["stride"] == 4 and meta["min_input_size"] == 33  # 33..36 px pad to 36
    sides = []
    for record in tf.data.TFRecordDataset(str(extra / "tf_serving_warmup_requests")):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        for key, proto in request.inputs.items():
            if key == "images":
                sides += [d.size for d in proto.tensor_shape.dim[1:3]]
    assert sides and min(sides) >= 36


def test_fcn_export_is_served_and_small_requests_are_400(fcn_base):
    import keras

    from geolabel.serving.server import ModelServer

    model = keras.saving.load_model(fcn_base / "fcn.keras", compile=False)
    with ModelServer(
        model_name="fcn", model_base_path=fcn_base / "base", rest_api_port=0, port=None, host="127.0.0.1", poll_seconds=0
    ) as srv:
        srv.wait_available(timeout=120)
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models/fcn"
        status = requests.get(url, timeout=30).json()["model_version_status"]
        assert status == [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
        x = np.random.default_rng(0).uniform(0, 255, (1, 40, 44, 3)).astype(np.float32)
        r = requests.post(url + ":predict", json={"inputs": x.tolist()}, timeout=120)
        assert r.status_code == 200, r.text[:300]
        np.testing.assert_allclose(np.asarray(r.json()["outputs"]["probabilities"]), np.asarray(model(x)), atol=1e-4)
        odd = requests.post(url + ":predict", json={"inputs": x[:, :33, :35].tolist()}, timeout=120)  # pads to 36
        assert odd.status_code == 200 and np.asarray(odd.json()["outputs"]["classes"]).shape == (1, 33, 35)
        for shape in ((1, 8, 8, 3), (1, 32, 40, 3)):
            small = requests.post(url + ":predict", json={"inputs": np.full(shape, 100.0).tolist()}, timeout=120)
            assert small.status_code == 400 and small.headers["Content-Type"] == "application/json"
            assert small.json() == {
                "error": f"assertion failed: [images of {shape[1]}x{shape[2]} px are smaller than the smallest input "
                "this model accepts, 33x33 px (36 px after padding to a multiple of its stride 4)]"
            }
        # the server keeps serving after the refusals
        assert requests.post(url + ":predict", json={"inputs": x.tolist()}, timeout=120).status_code == 200
