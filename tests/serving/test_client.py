"""The REST client as a predict_fn: same numbers as in-process, concurrency, PNG encoding, bad endpoints."""

from __future__ import annotations

import numpy as np
import pytest

from geolabel.errors import FetchError, InputError
from geolabel.serving.client import ServingClient


def test_client_matches_in_process(rest_url, tiny_runs, real_tiles):
    import keras

    model = keras.saving.load_model(tiny_runs["seg"], compile=False)
    with ServingClient(f"{rest_url}/v1/models/seg", concurrency=3, rows_per_request=1) as client:
        client.wait_available(timeout=10)
        probs = client(real_tiles)
        assert probs.shape == (4, 32, 32, 2) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, np.asarray(model(real_tiles)), atol=1e-5)
        assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
        assert "serving_bytes" in client.metadata()["metadata"]["signature_def"]["signature_def"]
        out = client.predict({"patches": np.full((1, 32, 32, 3), 50.0)}, signature_name="polygons")
        assert out["output"].shape == (1, 4, 2)
    with ServingClient(f"{rest_url}/v1/models/seg/versions/1:predict", encoding="png") as client:
        png = client(np.rint(real_tiles))
    np.testing.assert_allclose(png, np.asarray(model(np.rint(real_tiles))), atol=1e-5)


def test_client_errors(rest_url):
    for bad in ("ftp://x/v1/models/a", "http://127.0.0.1:1/v2/models/a", "http://127.0.0.1:1/v1/models/a/b"):
        with pytest.raises(InputError):
            ServingClient(bad)
    with pytest.raises(InputError, match="Servable not found"):
        ServingClient(f"{rest_url}/v1/models/nope")(np.zeros((1, 8, 8, 3)))
    with pytest.raises(FetchError):
        ServingClient("http://127.0.0.1:9/v1/models/a", retries=2, timeout=2)(np.zeros((1, 8, 8, 3)))


def test_predict_cli_endpoint_matches_local(rest_url, tiny_runs, shared_data, tmp_path):
    """`geolabel predict --endpoint` writes the same georeferenced classes as local predict (real Inria crop)."""
    import rasterio
    from click.testing import CliRunner
    from rasterio.windows import Window

    from geolabel.cli import cli

    src_path = shared_data / "inria-austin" / "image.tif"
    crop = tmp_path / "crop.tif"
    with rasterio.open(src_path) as src:
        window = Window(300, 400, 200, 160)
        profile = src.profile | {"width": 200, "height": 160, "transform": src.window_transform(window)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
    common = ["--window", "128", "--overlap", "16", "--batch-size", "2"]
    runner = CliRunner()
    served = runner.invoke(
        cli, ["predict", "--endpoint", f"{rest_url}/v1/models/seg", str(crop), "-o", str(tmp_path / "served"), *common]
    )
    assert served.exit_code == 0, (served.output, served.exception)
    # the exported SavedModel computes in float32: compare with a float32 local run (auto picks bfloat16 on bf16 CPUs)
    local = runner.invoke(
        cli, ["predict", str(tiny_runs["seg"]), str(crop), "-o", str(tmp_path / "local"), *common, "--precision", "float32"]
    )
    assert local.exit_code == 0, (local.output, local.exception)
    with rasterio.open(tmp_path / "served" / "classes.tif") as a, rasterio.open(tmp_path / "local" / "classes.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform and a.shape == (160, 200)
        agree = (a.read(1) == b.read(1)).mean()
    assert agree > 0.999
    missing = runner.invoke(cli, ["predict", "-o", str(tmp_path / "x")])  # no INPUT (one argument = the shipped model's input)
    assert missing.exit_code != 0 and "INPUT" in missing.output


def test_mapupdate_cli_endpoint_matches_local_probabilities(rest_url, tiny_runs, shared_data, tmp_path):
    """`geolabel mapupdate --endpoint` gives the same statuses as the same model's local probabilities."""
    import json

    import geopandas as gpd
    import shapely
    from click.testing import CliRunner

    from geolabel.cli import cli
    from geolabel.data.raster import read_raster

    image = shared_data / "inria-austin" / "image.tif"
    block = read_raster(image)
    left, bottom, right, top = block.bounds
    buildings = [shapely.box(left + 30 * i, bottom + 30 * i, left + 30 * i + 15, bottom + 30 * i + 10) for i in range(1, 8)]
    osm = tmp_path / "osm.geojson"
    gpd.GeoDataFrame({"osm_id": list(range(1, 8))}, geometry=buildings, crs=block.crs).to_file(osm, driver="GeoJSON")
    runner = CliRunner()
    local = runner.invoke(cli, ["predict", str(tiny_runs["seg"]), str(image), "-o", str(tmp_path / "local"),
                                "--window", "256", "--overlap", "32", "--precision", "float32"])  # as served
    assert local.exit_code == 0, (local.output, local.exception)
    by_file = runner.invoke(cli, ["mapupdate", str(image), "--osm", str(osm), "--probabilities",
                                  str(tmp_path / "local" / "probabilities.tif"), "-o", str(tmp_path / "from-file")])
    served = runner.invoke(cli, ["mapupdate", str(image), "--osm", str(osm), "--endpoint", f"{rest_url}/v1/models/seg",
                                 "-o", str(tmp_path / "served")])
    assert by_file.exit_code == 0 and served.exit_code == 0, (served.output, served.exception)
    counts = [json.loads((tmp_path / d / "summary.json").read_text())["counts"] for d in ("from-file", "served")]
    mapped = ("missing", "shifted", "unchanged")
    assert [c[s] for s in mapped for c in counts[:1]] == [c[s] for s in mapped for c in counts[1:]]
    assert sum(counts[1][s] for s in mapped) == 7
    # the served probabilities are the local ones (same windows, same blending); the count of "new"
    # blobs is not compared: an untrained model's blobs hover at p = 0.5, where one quantum flips them
    here, there = (read_raster(tmp_path / d / "probabilities.tif").array for d in ("local", "served/predict"))
    assert here.shape == there.shape
    close = np.abs(here.astype(int) - there.astype(int)) <= 1
    # the last windows are padded differently on each side of the wire (the client sends them cut)
    assert close[:, :-100, :-100].mean() > 0.9999 and close.mean() > 0.99
