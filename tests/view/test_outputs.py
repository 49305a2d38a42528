"""What predict / mapupdate folders hold for sharing: GeoParquet, STAC items, previews with legends."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
from PIL import Image
from pystac.extensions.projection import ProjectionExtension
from pystac.validation import validate_dict

from geolabel.classes import IGNORE, STATUS_COLORS, ClassMap
from geolabel.data.vectors import write_vectors
from geolabel.errors import InputError
from geolabel.predict import render_preview
from tests.view.conftest import IMAGERY_CREDIT


def _valid_item(path) -> pystac.Item:
    """The item, checked against STAC's core JSON schema (pystac's local copy: no network) and
    read back through the projection extension."""
    data = json.loads(path.read_text())
    validate_dict(data, extensions=[])  # the extension schemas live online; their fields are checked below
    item = pystac.Item.from_dict(data)
    proj = ProjectionExtension.ext(item)
    assert proj.code and proj.code.startswith("EPSG:") and len(proj.shape) == 2 and len(proj.transform) == 6
    west, south, east, north = item.bbox
    assert -180 <= west < east <= 180 and -90 <= south < north <= 90
    return item


def _conforms_to_geoparquet(path) -> None:
    """The file passes an independent GeoParquet validator's core conformance tests."""
    import geoparquet_validator

    report = geoparquet_validator.check(str(path))
    failed = [o for o in report["outcomes"] if o["status"] == "fail"]
    assert geoparquet_validator.conformant(report, "core") and not failed, failed
    assert any(o["status"] == "pass" for o in report["outcomes"])


def test_predict_writes_geoparquet_and_a_stac_item(predict_folder, virac_dataset):
    parquet = gpd.read_parquet(predict_folder / "polygons.parquet")
    geojson = gpd.read_file(predict_folder / "polygons.geojson")
    assert len(parquet) == len(geojson) > 5 and not (predict_folder / "polygons.gpkg").exists()
    assert parquet.crs.to_epsg() == 3857 and geojson.crs.to_epsg() == 4326  # source CRS / RFC 7946
    assert {"class", "area", "confidence"} <= set(parquet.columns) and parquet.geometry.is_valid.all()
    geo = json.loads(pq.read_schema(predict_folder / "polygons.parquet").metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["version"].startswith("1.")  # GeoParquet metadata
    _conforms_to_geoparquet(predict_folder / "polygons.parquet")

    item = _valid_item(predict_folder / "item.json")
    assert set(item.assets) == {"classes.tif", "probabilities.tif", "preview.png", "polygons.parquet", "polygons.geojson",
                                "polygons.pmtiles"}
    assert item.assets["classes.tif"].media_type == pystac.MediaType.COG and item.assets["preview.png"].roles == ["overview"]
    assert item.assets["polygons.parquet"].media_type == pystac.MediaType.VND_APACHE_PARQUET
    assert ProjectionExtension.ext(item.assets["classes.tif"]).shape == [384, 768]
    assert item.properties["geolabel:model"].endswith("model.keras")
    licensors = [p["name"] for p in item.properties["providers"] if "licensor" in p["roles"]]
    assert licensors == [IMAGERY_CREDIT] and "license" not in item.properties
    assert [link.href for link in item.links if link.rel == "derived_from"] == [str(virac_dataset[0])]


def test_mapupdate_writes_changes_in_the_asked_formats_and_an_odbl_item(mapupdate_folder, virac_dataset):
    parquet = gpd.read_parquet(mapupdate_folder / "changes.parquet")
    _conforms_to_geoparquet(mapupdate_folder / "changes.parquet")
    gpkg = gpd.read_file(mapupdate_folder / "changes.gpkg")
    assert not (mapupdate_folder / "changes.geojson").exists()
    assert len(parquet) == len(gpkg) > 5 and set(parquet.status) <= set(STATUS_COLORS)
    assert parquet.crs.to_epsg() == 4326 and {"confidence", "osm_id", "output"} <= set(parquet.columns)
    summary = json.loads((mapupdate_folder / "summary.json").read_text())
    assert summary["files"][:2] == ["changes.parquet", "changes.gpkg"]

    item = _valid_item(mapupdate_folder / "item.json")
    assert {"changes.parquet", "changes.gpkg", "changes.osc", "summary.json", "preview.png"} <= set(item.assets)
    assert item.properties["license"] == "ODbL-1.0"
    licensors = [p["name"] for p in item.properties["providers"] if "licensor" in p["roles"]]
    assert licensors == [IMAGERY_CREDIT, "OpenStreetMap contributors"]
    assert item.properties["geolabel:model"].endswith("probabilities.tif")
    assert [link.title for link in item.links if link.rel == "derived_from"] == ["imagery.tif", "osm-buildings.geojson"]


def test_vector_formats_are_checked(tmp_path):
    frame = gpd.GeoDataFrame(geometry=gpd.points_from_xy([0.0], [0.0]), crs="EPSG:4326")
    with pytest.raises(InputError, match="--vector-format"):
        write_vectors(frame, tmp_path, "x", ["shp"])


def _split_legend(path) -> tuple[np.ndarray, np.ndarray]:
    """(image, legend strip) of a preview: the strip starts at the first mostly white row."""
    png = np.asarray(Image.open(path).convert("RGB"))
    start = int(np.argmax((png == 255).all(axis=2).mean(axis=1) > 0.5))
    return png[:start], png[start:].reshape(-1, 3)


def test_prediction_preview_is_cropped_to_the_data_with_a_legend(predict_folder):
    image, legend = _split_legend(predict_folder / "preview.png")
    assert image.shape[:2] == (256 + 2, 512 + 2)  # the imagery's 512 x 256 px, plus the crop's margin
    assert (legend == ClassMap().colors[1]).all(axis=1).sum() > 20  # the building swatch
    assert (legend.max(axis=1) < 80).sum() > 20  # dark legend text


def test_prediction_outlines_stay_visible_on_a_roof_of_the_class_colour(tmp_path):
    red = np.array(ClassMap().colors[1], np.float32)
    image = np.broadcast_to(red[:, None, None], (3, 40, 40)).copy()  # a roof of the building colour
    classes = np.zeros((40, 40), np.uint8)
    classes[10:30, 10:30] = 1
    classes[:, 38:] = IGNORE
    render_preview(image, "uint8", classes, ClassMap(), tmp_path / "p.png")
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    assert png.shape[1] == 38 + 2  # cropped to the data (plus its margin)
    halo = png[9, 10:30]  # the ring just outside the building
    assert (halo == 0).all()  # black against the red roof
    assert np.abs(png[10, 12] - halo[0]).sum() > 200  # the outline itself differs strongly from the halo


def test_mapupdate_preview_is_cropped_to_the_imagery_with_a_status_legend(mapupdate_folder):
    image, legend = _split_legend(mapupdate_folder / "preview.png")
    assert image.shape[:2] == (256 + 8, 512 + 8)  # the imagery's 512 x 256 px, plus the crop's margin
    for color in STATUS_COLORS.values():
        assert (legend == color).all(axis=1).sum() > 20, color
