"""`geolabel demo` end to end with a reduced training budget: every output exists and is valid."""

import json
import xml.etree.ElementTree as ET

import geopandas as gpd
import rasterio

from geolabel.cli import main
from tests.cog import cog_problems
from geolabel.mapupdate.osc import osc_problems


def test_demo_produces_every_output(tmp_path):
    out = tmp_path / "demo"
    try:
        main(["demo", "--out", str(out), "--budget", "small"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"].split(" ")[0] for s in summary["steps"]] == [
        "fetch", "fetch", "fetch", "train:", "evaluate", "predict", "predict", "polygons", "map-update", "export", "serve"]
    for raster in ("predict-city/classes.tif", "predict-city/probabilities.tif", "predict-austin/classes.tif",
                   "data/osm-zanzibar-tz/imagery.tif"):
        assert cog_problems(out / raster) == [], raster
    polygons = gpd.read_file(out / "predict-city" / "polygons.gpkg")
    assert len(polygons) == summary["polygons"] and polygons.geometry.is_valid.all()
    assert osc_problems(out / "mapupdate" / "changes.osc") == []
    assert ET.parse(out / "mapupdate" / "changes.osc").getroot().tag == "osmChange"
    assert summary["endpoint_agreement"] > 0.99
    assert 0.0 <= summary["held_out_iou"] <= 1.0
    # the shipped model, with no training, beats the demo's minute of training on the unseen city
    assert summary["city_iou_vs_osm_shipped_model"] > max(summary["city_iou_vs_osm"], 0.3)
    with rasterio.open(out / "predict-city-pretrained" / "classes.tif") as shipped:
        assert "OpenStreetMap contributors" in shipped.tags()["attribution"]
    report = (out / "report.md").read_text()
    for png in ("imagery-osm.png", "predict-city/preview.png", "predict-city/polygons.png", "mapupdate/preview.png", "run/curves.png"):
        assert (out / png).is_file() and png in report
