"""`geolabel fetch` on the command line: the bundled-style tile source over loopback, a vector label file."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from geolabel.cli import cli
from geolabel.data.tiles import TileRange
from geolabel.data.tileserver import TileServer

VIRAC = TileRange(21, 1772464, 966380, 1772467, 966383)


def test_fetch_command_writes_a_dataset(shared_data, tmp_path):
    city = shared_data / "oam-osm" / "virac-ph"
    bbox = ",".join(repr(v) for v in VIRAC.bounds_lonlat())
    config = tmp_path / "fetch.yaml"
    config.write_text("zoom: 19\nsplit_block: 1\n")  # a flag overrides the file: zoom 21
    with TileServer(city / "tiles") as server:
        args = ["fetch", "--bbox", bbox, "--imagery", server.template("jpg"), "--zoom", "21", "--config", str(config),
                "--labels", str(city / "osm-buildings.geojson"), "-o", str(tmp_path / "ds")]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "chips train 13 val 3" in result.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["imagery"]["tiles"] == {"total": 16, "present": 16, "missing": 0}
    assert manifest["labels"]["kind"] == "vector-file"


def test_fetch_command_reports_bad_input_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["fetch", "--bbox", "0,0,1,1", "--imagery", "http://127.0.0.1:9/tiles.png", "-o", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a readable raster" in str(result.exception) or "not a readable raster" in result.output


def test_fetch_options_are_checked_before_any_work(tmp_path):
    config = tmp_path / "fetch.yaml"
    config.write_text("chip_size: 128\ntile_px: 512\n")
    args = ["fetch", "--bbox", "0,0,1,1", "--imagery", "http://127.0.0.1:9/{z}/{x}/{y}.png", "--config", str(config),
            "-o", str(tmp_path / "ds")]
    result = subprocess.run([sys.executable, "-m", "geolabel.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"{config}: unknown option(s) tile_px" in result.stderr and "Traceback" not in result.stderr
    config.write_text("chip_size: 100\n")
    result = subprocess.run([sys.executable, "-m", "geolabel.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"{config}: chip_size: 100 is not a positive multiple of 16" in result.stderr
    result = subprocess.run([sys.executable, "-m", "geolabel.cli", *args, "--chip-size", "100"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "--chip-size: 100 is not a positive multiple of 16" in result.stderr
    assert not (tmp_path / "ds").exists()


def test_pipeline_fetch_options_keep_null_and_subdomain_strings():
    from geolabel.config import load_config
    from geolabel.data.fetch import FetchOptions

    options = load_config(FetchOptions, values={"max_tiles": None, "subdomains": "a1,a2"}, chip_size=128)
    assert options.max_tiles is None  # a pipeline's `max_tiles: null` lifts the tile limit, as `fetch --yes`
    assert options.subdomains == ("a1", "a2") and options.chip_size == 128
    assert load_config(FetchOptions, subdomains="abc").subdomains == ("a", "b", "c")


def test_fetch_for_pipeline_takes_a_source_config(shared_data, tmp_path):
    from geolabel.data.fetch import fetch_for_pipeline
    from geolabel.data.chips import shard_paths

    city = shared_data / "oam-osm" / "virac-ph"
    with TileServer(city / "tiles") as server:
        source = {"bbox": list(VIRAC.bounds_lonlat()), "imagery": server.template("jpg"), "zoom": 21,
                  "labels": str(city / "osm-buildings.geojson"), "chip_size": 128, "options": {"split_block": 2, "chips_per_shard": 10}}
        manifest = fetch_for_pipeline(source, ["background", "building"], tmp_path / "ds")
    assert manifest["chips"]["train"] + manifest["chips"]["val"] == 64
    shards = shard_paths(tmp_path / "ds" / "chips", "train")
    assert len(shards) == manifest["chips"]["shards"]["train"] == -(-manifest["chips"]["train"] // 10)
    assert shards[0].name.endswith(f"-of-{len(shards):05d}.tfrecord.gz")


def test_fetch_align_keeps_the_source_labels_and_aligns_into_labels_gpkg(shared_data, tmp_path):
    import geopandas as gpd
    import numpy as np

    from geolabel.models.alignment import MultiscaleAligner

    # an aligner with all-zero weights predicts a zero field: aligned == fetched, exactly
    model = MultiscaleAligner(scales=(2, 1), filters=(4, 4, 4))
    model([np.zeros((1, 64, 64, 3), "float32"), np.zeros((1, 64, 64, 3), "float32")])
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    model.save(tmp_path / "aligner.keras")

    city = shared_data / "oam-osm" / "virac-ph"
    bbox = ",".join(repr(v) for v in VIRAC.bounds_lonlat())
    out = tmp_path / "ds"
    with TileServer(city / "tiles") as server:
        args = ["fetch", "--bbox", bbox, "--imagery", server.template("jpg"), "--zoom", "21",
                "--labels", str(city / "osm-buildings.geojson"), "--split-block", "1",
                "--align", str(tmp_path / "aligner.keras"), "-o", str(out)]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        stamp = (out / "labels.gpkg").stat().st_mtime_ns
        again = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert again.exit_code == 0, again.output
    assert (out / "labels.gpkg").stat().st_mtime_ns == stamp  # the re-run skipped the alignment
    manifest = json.loads((out / "manifest.json").read_text())
    source, aligned = gpd.read_file(out / "labels-source.gpkg"), gpd.read_file(out / "labels.gpkg")
    assert manifest["files"]["labels_source"] == "labels-source.gpkg"
    assert manifest["alignment"]["polygons"] == len(aligned) == len(source) > 0
    assert manifest["alignment"]["mean_move_px"] == 0.0
    assert aligned.crs == source.crs
    assert np.allclose(aligned.geometry.area.sum(), source.geometry.area.sum(), rtol=1e-6)
