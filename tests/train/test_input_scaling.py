"""A run trained on 16-bit grey imagery (SpaceNet) records how its chips were made, and `predict` feeds the
model the same pixels: the image a run was trained on is predicted, stretched as its chips were."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from geolabel.cli import main
from geolabel.data.fetch import FetchOptions, fetch_dataset
from geolabel.data.imagery import InputScaling, to_uint8
from geolabel.train import TrainConfig, train
from geolabel.train.trainer import load_run_input


def test_predict_stretches_16_bit_input_as_the_run_was_trained(shared_data, tmp_path, capsys):
    image = shared_data / "spacenet" / "atlanta-pan.tif"
    with rasterio.open(image) as src:
        aoi = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        pixels, profile = src.read(), src.profile
    manifest = fetch_dataset(tmp_path / "ds", str(image), str(shared_data / "spacenet" / "atlanta-buildings.geojson"),
                             bbox=aoi, options=FetchOptions(chip_size=128, split_block=1, val_fraction=0.3))
    assert manifest["dtype"] == "uint16" and manifest["bands"] == 1
    config = TrainConfig(model="unet", model_config={"depth": 2, "width": 4, "norm": "none"}, train=[str(tmp_path / "ds")],
                         crop=32, batch_size=2, epochs=1, steps_per_epoch=2, val_steps=1, seed=0)
    train(config, tmp_path / "run")
    stretch = tuple(tuple(pair) for pair in manifest["chips"]["uint8_scaling"])
    assert load_run_input(tmp_path / "run") == InputScaling(bands=(1, 1, 1), stretch=stretch)

    main(["predict", str(tmp_path / "run"), str(image), "-o", str(tmp_path / "pred"), "--window", "256"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["classes"].endswith("classes.tif")
    # the same pixels as an 8-bit RGB image stretched by hand, as the chips were: the same probabilities
    grey = to_uint8(pixels, list(stretch))
    stretched = tmp_path / "stretched.tif"
    with rasterio.open(stretched, "w", **{**profile, "count": 3, "dtype": "uint8", "nodata": None}) as dst:
        dst.write(np.repeat(grey, 3, axis=0))
    main(["predict", str(tmp_path / "run"), str(stretched), "-o", str(tmp_path / "by-hand"), "--window", "256"])
    with rasterio.open(tmp_path / "pred" / "probabilities.tif") as a, rasterio.open(tmp_path / "by-hand" / "probabilities.tif") as b:
        assert np.array_equal(a.read(), b.read())
    # the TF Serving export takes the raw 16-bit grey pixels and does the same in its graph
    import tensorflow as tf

    from geolabel.models import load_model
    from geolabel.serving.export import export_run

    served = tf.saved_model.load(str(export_run(tmp_path / "run", tmp_path / "export", 1)))
    raw = np.moveaxis(pixels, 0, -1)[None, :256, :256].astype(np.float32)
    assert raw.max() > 255  # 16-bit values, one band
    out = served.signatures["serving_default"](images=tf.constant(raw))["probabilities"].numpy()
    expected = np.asarray(load_model(tmp_path / "run")(np.moveaxis(np.repeat(grey, 3, axis=0), 0, -1)[None, :256, :256]
                                                      .astype(np.float32)))
    np.testing.assert_allclose(out, expected, atol=1e-5)
