"""`geolabel predict --beam`: Beam block-wise prediction equals local windowed prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

import apache_beam  # noqa: F401  (installed by make setup; a missing one must fail, not skip)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, shared_data):
    """A 384 x 384 crop of the real Inria Austin image and a tiny seeded U-Net."""
    import keras
    from rasterio.windows import Window

    from geolabel.data.raster import open_raster, read_block, write_raster
    from geolabel.models import build_model

    root = tmp_path_factory.mktemp("beam")
    with open_raster(shared_data / "inria-austin" / "image.tif") as src:
        write_raster(root / "image.tif", read_block(src, Window(300, 300, 384, 384)))
    keras.utils.set_random_seed(3)
    model = build_model("unet", 2, depth=2, width=4)
    # an untrained model, biased so that about a quarter of the pixels come out as buildings
    with open_raster(root / "image.tif") as src:
        image = np.moveaxis(read_block(src, Window(0, 0, 128, 128)).array[:3], 0, -1)[None].astype("float32")
    probs = np.asarray(model(image))
    margin = np.log(probs[..., 1] + 1e-7) - np.log(probs[..., 0] + 1e-7)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    bias[1] -= np.quantile(margin, 0.75)
    logits.set_weights([kernel, bias])
    model.save(root / "model.keras")
    return root



OPTIONS = dict(window=64, overlap=16, batch_size=4)


@pytest.fixture(scope="module")
def local(scene):
    """`geolabel predict`'s library call on the scene: the reference."""
    from geolabel.models import load_model
    from geolabel.predict.predictor import keras_predict_fn, predict_raster

    predict_raster(keras_predict_fn(load_model(scene / "model.keras")), scene / "image.tif", scene / "local", **OPTIONS)
    return scene / "local"


def test_beam_prediction_equals_local_predict(scene, local):
    import geopandas as gpd
    import rasterio

    from tests.cog import cog_problems
    from geolabel.pipelines.beam_predict import predict_raster_beam
    from geolabel.vectorize.polygons import PolygonSpec, polygonize_raster

    options = OPTIONS
    # a tiny model's buildings are not confident: keep them all, to compare the polygons
    out = predict_raster_beam(scene / "model.keras", scene / "image.tif", scene / "beam", block_size=128,
                              polygons=PolygonSpec("dp", tolerance=0.5, min_area=2.0, min_confidence=0.0), **options)
    assert json.loads((scene / "beam" / "beam.json").read_text())["blocks"] == 9
    assert not (scene / "beam" / "parts").exists()
    for name in ("classes.tif", "probabilities.tif"):
        beam = scene / "beam" / name
        assert cog_problems(beam) == []
        with rasterio.open(local / name) as a, rasterio.open(beam) as b:
            assert (a.crs, a.transform, a.shape, a.count, a.dtypes, a.nodata) == (b.crs, b.transform, b.shape, b.count, b.dtypes, b.nodata)
            assert a.tags()["classes"] == b.tags()["classes"] and a.descriptions == b.descriptions
            diff = np.abs(a.read().astype(int) - b.read().astype(int))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= diff.size * 1e-4, (name, diff.max(), np.count_nonzero(diff))
    assert out["preview"].is_file()

    # polygons: per block on the workers, merged across seams == local `predict --polygons dp`
    local = polygonize_raster(local / "classes.tif", local / "probabilities.tif", method="dp", tolerance=0.5, min_area=2.0,
                              min_confidence=0.0)
    merged = gpd.read_file(out["polygons"])
    assert out["geojson"].is_file()
    assert len(merged) == len(local) > 5
    assert set(merged["class"]) == {"building"}
    assert abs(merged["area"].sum() - local["area"].sum()) < 1e-3 * local["area"].sum()
    # same objects; outlines differ at most by the simplification of objects cut by a block seam
    for geom in merged.geometry:
        match = local.geometry.iloc[int(np.argmax(local.geometry.intersection(geom).area))]
        # the outlines differ by at most the simplification tolerance along their length
        assert geom.symmetric_difference(match).area <= 0.5 * match.length
        assert geom.hausdorff_distance(match) <= 2 * 0.5
    np.testing.assert_allclose(np.sort(merged["confidence"]), np.sort(local["confidence"]), atol=1e-6)


def test_predict_command_with_beam_flag(scene, local, capsys):
    import geopandas as gpd
    import rasterio

    from geolabel.cli import main

    out = scene / "cli"
    main(["predict", str(scene / "model.keras"), str(scene / "image.tif"), "-o", str(out), "--window", "64", "--overlap", "16",
          "--batch-size", "4", "--beam", "--beam-args", "--direct_running_mode=in_memory --direct_num_workers=1",
          "--polygons", "dp", "--min-confidence", "0"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["beam"]["runner_args"] == ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    assert summary["objects"] == len(gpd.read_file(summary["polygons"])) > 0  # the flags' PolygonSpec reached Beam
    with rasterio.open(out / "classes.tif") as a, rasterio.open(local / "classes.tif") as b:
        assert np.array_equal(a.read(), b.read())
