"""One scene-standardised run, one real raster, every door: the same classes.

The shipped model was trained with per-scene colour standardisation. Local `geolabel
predict`, Beam (DirectRunner), the TF Serving export behind `geolabel serve` reached by
`geolabel predict --endpoint` with no other option, and map update's probability step must
all feed it the same pixels, so they must all draw the same map.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geolabel.cli import cli

WINDOW = ["--window", "512", "--overlap", "64", "--precision", "float32"]  # the export computes in float32


@pytest.fixture(scope="module")
def kampala(shared_data, tmp_path_factory):
    """A real 768 x 768 z21 GeoTIFF of Kampala (3 x 3 shared XYZ tiles, Web Mercator)."""
    import morecantile
    from PIL import Image
    from rasterio.transform import from_bounds

    folder = shared_data / "oam-osm" / "kampala-ug" / "tiles" / "21"
    x0 = min(int(p.name) for p in folder.iterdir()) + 24
    y0 = min(int(q.stem) for p in folder.iterdir() for q in p.glob("*.jpg"))
    rows = [np.concatenate([np.asarray(Image.open(folder / str(x0 + c) / f"{y0 + r}.jpg").convert("RGB"))
                            for c in range(3)], axis=1) for r in range(3)]
    image = np.concatenate(rows, axis=0)
    tms = morecantile.tms.get("WebMercatorQuad")
    west, _, _, north = tms.xy_bounds(morecantile.Tile(x0, y0, 21))
    _, south, east, _ = tms.xy_bounds(morecantile.Tile(x0 + 2, y0 + 2, 21))
    path = tmp_path_factory.mktemp("door") / "kampala.tif"
    with rasterio.open(path, "w", driver="GTiff", width=768, height=768, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=from_bounds(west, south, east, north, 768, 768)) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    return path


@pytest.fixture(scope="module")
def local(kampala):
    out = kampala.parent / "local"
    result = CliRunner().invoke(cli, ["predict", str(kampala), "-o", str(out), *WINDOW, "--polygons"])
    assert result.exit_code == 0, (result.output, result.exception)
    return read(out)


def read(folder) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(folder / "classes.tif") as src, rasterio.open(folder / "probabilities.tif") as prob:
        return src.read(1), prob.read(2).astype(np.float32) / 255.0


def test_polygons_made_beside_the_prediction_are_those_of_the_written_files(local, kampala):
    """At the model's own resolution `predict --polygons` meshes the tiles as they are written
    (`StreamedPolygons`): the same polygons as meshing the finished classes.tif."""
    import geopandas as gpd

    from geolabel.vectorize.polygons import polygonize_raster

    out = kampala.parent / "local"
    made = gpd.read_file(out / "polygons.gpkg")
    again = polygonize_raster(out / "classes.tif", out / "probabilities.tif", method="mesh", min_area=2.0)
    assert len(made) == len(again) > 5
    assert made.union_all().symmetric_difference(again.union_all()).area < 1e-6 * again.area.sum()
    assert sorted(made["confidence"].round(9)) == sorted(again["confidence"].round(9))


def test_the_run_is_scene_standardised(local):
    from geolabel.predict.run_inputs import RunInputs

    assert RunInputs.of("pretrained").scene_norm
    classes, _ = local
    assert 0.05 < (classes == 1).mean() < 0.8  # a real map, not all one class


def test_beam_door(kampala, local):
    from geolabel.pipelines.beam_predict import predict_raster_beam
    from geolabel.predict.run_inputs import RunInputs

    expects = RunInputs.of("pretrained")
    predict_raster_beam("pretrained", kampala, kampala.parent / "beam", block_size=512, window=512, overlap=64,
                        preview=False, precision="float32", scene_norm=expects.scene_norm,
                        scene_contrast=expects.scene_contrast, scaling=expects.scaling)
    classes, prob = read(kampala.parent / "beam")
    assert (classes == local[0]).mean() > 0.9999
    assert np.abs(prob - local[1]).max() <= 1 / 255 + 1e-6


def test_served_export_door_needs_no_client_option(kampala, local, tmp_path):
    from geolabel.serving.export import export_run
    from geolabel.serving.server import ModelServer

    export_run("pretrained", tmp_path / "export", 1)
    server = ModelServer(model_name="buildings", model_base_path=tmp_path / "export", rest_api_port=0, port=0,
                         host="127.0.0.1", poll_seconds=0.5).start()
    try:
        server.wait_available(timeout=120)
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/buildings"
        result = CliRunner().invoke(cli, ["predict", "--endpoint", url, str(kampala), "-o", str(tmp_path / "served"),
                                          "--window", "512", "--overlap", "64"])
        assert result.exit_code == 0, (result.output, result.exception)
        # a client that sends one whole image to serving_default gets it standardised by its own statistics
        from geolabel.serving.client import ServingClient

        with rasterio.open(kampala) as src:
            whole = np.moveaxis(src.read(), 0, -1)[None, :512, :512].astype(np.float32)
        plain = ServingClient(url)(whole)
    finally:
        server.stop()
    classes, prob = read(tmp_path / "served")
    np.testing.assert_array_equal(classes, local[0])
    assert np.abs(prob - local[1]).max() <= 1 / 255 + 1e-6
    # ... what the local model gives that image standardised by its own statistics (nodata = 0 on every band)
    from geolabel.data.standardize import band_stats, standardize
    from geolabel.models import load_model
    from geolabel.predict import keras_predict_fn
    from geolabel.predict.run_inputs import RunInputs

    valid = whole[0].any(axis=-1)
    x = standardize(whole[0], band_stats(whole[0], valid).with_contrast(RunInputs.of("pretrained").scene_contrast))
    x[~valid] = 0.0
    expected = keras_predict_fn(load_model("pretrained"), precision="float32")(x[None])
    np.testing.assert_allclose(plain, expected, atol=1e-3)


def test_mapupdate_door(kampala, local, tmp_path):
    from geolabel.mapupdate.update import predict_probabilities

    predict_probabilities(kampala, tmp_path, "pretrained", precision="float32", window=512, overlap=64)
    classes, prob = read(tmp_path / "predict")
    np.testing.assert_array_equal(classes, local[0])
    np.testing.assert_array_equal(prob, local[1])


def test_bfloat16_export_draws_the_float32_map(kampala, tmp_path):
    """`geolabel export --precision bfloat16` (servers with AMX): the graph computes in bf16, the
    probabilities come back float32 and the classes agree with float32 on >= 99.5 % of the pixels."""
    import json

    import tensorflow as tf

    from geolabel.data.standardize import band_stats, standardize
    from geolabel.models import load_model
    from geolabel.predict import keras_predict_fn
    from geolabel.predict.run_inputs import RunInputs

    result = CliRunner().invoke(cli, ["export", "pretrained", "--out", str(tmp_path / "export"), "--version", "1",
                                      "--precision", "bfloat16"])
    assert result.exit_code == 0, (result.output, result.exception)
    version = tmp_path / "export" / "1"
    assert json.loads((version / "assets.extra" / "geolabel.json").read_text())["precision"] == "bfloat16"
    with rasterio.open(kampala) as src:
        whole = np.moveaxis(src.read(), 0, -1)[None].astype(np.float32)
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    assert "DT_BFLOAT16" in str(signature.graph.as_graph_def())  # the convolutions run in bf16
    prob = signature(images=tf.constant(whole))["probabilities"].numpy()
    assert prob.dtype == np.float32
    x = standardize(whole[0], band_stats(whole[0], whole[0].any(axis=-1)).with_contrast(RunInputs.of("pretrained").scene_contrast))
    expected = keras_predict_fn(load_model("pretrained"), precision="float32")(x[None])
    assert (prob.argmax(-1) == expected.argmax(-1)).mean() >= 0.995
