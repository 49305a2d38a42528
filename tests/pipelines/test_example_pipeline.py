"""`geolabel pipeline run --config pipelines/example.yaml`, as shipped, offline on the bundled sample.

Only the training budgets and the network size are made small (`--set`), and the blessing
floor is lowered (`--min-iou 0`); the sources, the loopback tile server the fetch starts
itself and the clean mask are those of the shipped file. The network guard of conftest.py
fails any connection that is not loopback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import geolabel.pipelines
from geolabel import sample
from geolabel.cli import main
from geolabel.errors import InputError
from geolabel.pipelines.config import load_pipeline_config

import tfx  # noqa: F401  (installed by make setup; a missing one must fail, not skip)

EXAMPLE = Path(geolabel.pipelines.__file__).with_name("example.yaml")
SMALL = [
    "model.options={depth: 2, width: 4}",
    *(f"{stage}={{epochs: 1, steps_per_epoch: 2, eval_steps: 1, batch_size: 2, lr: 0.001, options: {{crop: 64}}}}"
      for stage in ("pretrain_budget", "finetune_budget")),
]


def test_example_bboxes_lie_inside_the_bundled_data():
    from rasterio.warp import transform_bounds

    from geolabel.data.raster import open_raster
    from geolabel.data.tiles import local_tile_range

    config = load_pipeline_config(EXAMPLE)
    tiles = sample.resolve(config.pretrain.imagery).partition("{")[0]
    w, s, e, n = local_tile_range(tiles, config.pretrain.zoom).bounds_lonlat()
    assert w <= config.pretrain.bbox[0] < config.pretrain.bbox[2] <= e and s <= config.pretrain.bbox[1] < config.pretrain.bbox[3] <= n
    with open_raster(sample.resolve(config.finetune.imagery)) as src:
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    assert w <= config.finetune.bbox[0] < config.finetune.bbox[2] <= e and s <= config.finetune.bbox[1] < config.finetune.bbox[3] <= n


def test_example_pipeline_runs_offline_and_pushes_a_loadable_model(tmp_path, capsys):
    import tensorflow as tf

    from geolabel.data.raster import read_raster

    main(["pipeline", "run", "--config", str(EXAMPLE), "--root", str(tmp_path), "--min-iou", "0",
          *(arg for setting in SMALL for arg in ("--set", setting))])
    out = capsys.readouterr().out
    assert re.search(r"^executed: fetch_osm, pretrain, fetch_clean, finetune, .*evaluate, push$", out, re.M), out
    pushed = re.search(r"^pushed:\s+(\S+)$", out, re.M)
    assert pushed and Path(pushed[1]).parent == tmp_path / "serving" / "buildings", out
    assert os.listdir(pushed[1]) and (Path(pushed[1]) / "saved_model.pb").is_file()

    model = tf.saved_model.load(pushed[1])
    image = np.moveaxis(read_raster(sample.CLEAN_IMAGE).array[:3, :64, :64], 0, -1)[None].astype("float32")
    result = model.signatures["serving_default"](images=tf.constant(image))
    assert result["probabilities"].shape == (1, 64, 64, 2) and result["classes"].shape == (1, 64, 64)
    np.testing.assert_allclose(result["probabilities"].numpy().sum(-1), 1.0, atol=1e-4)
    fetched = list((tmp_path / "pipeline_root" / "fetch_osm").rglob("manifest.json"))
    assert fetched and '"http://127.0.0.1:' in fetched[0].read_text()  # served on loopback by the fetch itself


@pytest.mark.parametrize(
    "setting, name",
    [
        ("pretrain_budget.epoch=1", "epoch: no such option"),
        ("nonsense=1", "nonsense: no such option"),
        ("pretrain_budget.epochs", "expected KEY.PATH=VALUE"),
        ("pretrain.imagery=sample:oam/nowhere/tiles/{z}/{x}/{y}.jpg", "sample:oam/nowhere"),
    ],
)
def test_bad_override_names_it(setting, name):
    with pytest.raises(InputError, match=re.escape(name)):
        load_pipeline_config(EXAMPLE, [setting])


def test_bad_override_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "run", "--config", str(EXAMPLE), "--set", "model.nope=1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.nope: no such option" in err, err
