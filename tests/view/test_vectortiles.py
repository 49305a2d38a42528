"""PMTiles vector tiles of polygons and map-update changes, read back with the PMTiles reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pyogrio
import pystac
import pytest
import shapely
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import Compression, TileType

from geolabel.cli import main
from geolabel.data import vectortiles
from geolabel.data.tiles import WEB_MERCATOR, WEB_MERCATOR_QUAD
from geolabel.data.vectortiles import EXTENT, MAX_ZOOM, ZOOM_LEVELS, default_max_zoom, write_pmtiles
from geolabel.errors import InputError
from tests.view.conftest import IMAGERY_CREDIT


def _read(path: Path) -> tuple[dict, dict, dict[tuple[int, int, int], dict]]:
    """(header, metadata, {(z, x, y): decoded tile}) of a PMTiles archive."""
    with open(path, "rb") as file:
        source = MmapSource(file)
        reader = Reader(source)
        tiles = {zxy: mapbox_vector_tile.decode(gzip.decompress(data)) for zxy, data in all_tiles(source)}
        return reader.header(), reader.metadata(), tiles


def _features(tiles: dict, layer: str, z: int) -> dict[int, tuple[dict, shapely.Geometry]]:
    """{feature id: (properties, its pieces from every tile of zoom `z` united, in Web-Mercator metres)}."""
    pieces, properties = {}, {}
    for (tz, x, y), decoded in tiles.items():
        if tz != z:
            continue
        left, bottom, right, top = WEB_MERCATOR_QUAD.xy_bounds(x, y, z)
        scale = np.array([(right - left) / EXTENT, (top - bottom) / EXTENT])
        for feature in decoded.get(layer, {"features": []})["features"]:
            geom = shapely.transform(shapely.geometry.shape(feature["geometry"]), lambda c: c * scale + (left, bottom))
            pieces.setdefault(feature["id"], []).append(geom)
            assert properties.setdefault(feature["id"], feature["properties"]) == feature["properties"]  # same in every tile
    return {i: (properties[i], shapely.union_all(parts)) for i, parts in pieces.items()}


def test_every_building_is_in_the_deepest_tiles_with_its_outline_and_attributes(virac, tmp_path):
    frame = gpd.read_file(virac[1])  # real OSM buildings of Virac, EPSG:4326
    n = len(frame)
    frame["confidence"] = np.linspace(0, 1, n).astype(np.float32)
    frame.loc[0, "confidence"] = np.nan  # missing: left out of the tile, as MVT has no null
    frame["status"] = np.where(np.arange(n) % 2, "new", "unchanged")
    frame["checked"] = np.arange(n) % 3 == 0
    path = write_pmtiles(frame, tmp_path / "buildings.pmtiles", "buildings", attribution=["Imagery (c) A & B", "OSM"])
    header, metadata, tiles = _read(path)

    assert header["tile_type"] == TileType.MVT and header["tile_compression"] == Compression.GZIP and header["clustered"]
    assert header["max_zoom"] == MAX_ZOOM and header["min_zoom"] == MAX_ZOOM - ZOOM_LEVELS + 1  # small buildings: z14-z18
    assert {z for z, _, _ in tiles} == set(range(header["min_zoom"], header["max_zoom"] + 1))
    west, south, east, north = frame.total_bounds
    assert header["min_lon_e7"] <= west * 1e7 + 1 and header["max_lon_e7"] >= east * 1e7 - 1
    assert header["min_lat_e7"] <= south * 1e7 + 1 and header["max_lat_e7"] >= north * 1e7 - 1
    assert west * 1e7 < header["center_lon_e7"] < east * 1e7 and south * 1e7 < header["center_lat_e7"] < north * 1e7
    assert header["min_zoom"] <= header["center_zoom"] <= header["max_zoom"]
    assert metadata["vector_layers"] == [{"id": "buildings", "minzoom": header["min_zoom"], "maxzoom": header["max_zoom"],
                                          "fields": {"osm_id": "Number", "confidence": "Number", "status": "String",
                                                     "checked": "Boolean"}}]
    assert metadata["attribution"] == "Imagery (c) A &amp; B | OSM"  # HTML, as web maps show it

    assert sorted(_features(tiles, "buildings", header["min_zoom"])) == list(range(1, n + 1))
    deepest = _features(tiles, "buildings", header["max_zoom"])
    assert sorted(deepest) == list(range(1, n + 1))  # every building, its id = row + 1
    web = frame.to_crs(WEB_MERCATOR)
    matrix = WEB_MERCATOR_QUAD.matrix(header["max_zoom"])
    rounding = matrix.cellSize * matrix.tileWidth / EXTENT * 2**0.5 / 2  # a vertex moved to the nearest MVT unit
    for i, (properties, geom) in deepest.items():
        row = frame.iloc[i - 1]
        expected = {"osm_id": int(row.osm_id), "status": row.status, "checked": bool(row.checked),
                    **({"confidence": pytest.approx(float(row.confidence))} if i > 1 else {})}
        assert properties == expected
        assert shapely.hausdorff_distance(geom, web.geometry.iloc[i - 1]) <= rounding  # 2.6 cm at z18


def test_bigger_features_get_shallower_zooms(virac):
    geoms = gpd.read_file(virac[1]).to_crs(WEB_MERCATOR).geometry.to_numpy()
    deepest = default_max_zoom(shapely.transform(geoms, lambda c: c * 16))
    assert deepest < MAX_ZOOM  # 16 times larger again: 4 zooms less to span as many screen pixels
    assert default_max_zoom(shapely.transform(geoms, lambda c: c * 256)) == deepest - 4


def test_an_empty_layer_is_a_readable_archive(tmp_path):
    frame = gpd.GeoDataFrame({"status": []}, geometry=[], crs="EPSG:32651")
    header, metadata, tiles = _read(write_pmtiles(frame, tmp_path / "changes.pmtiles", "changes"))
    assert header["tile_type"] == TileType.MVT and list(tiles) == [(0, 0, 0)]
    assert tiles[(0, 0, 0)]["changes"]["features"] == [] and "attribution" not in metadata


def test_polygons_without_a_crs_are_refused(tmp_path):
    frame = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)])
    with pytest.raises(InputError, match="no CRS"):
        write_pmtiles(frame, tmp_path / "p.pmtiles", "polygons")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_archive_and_leaves_no_temporary(virac, tmp_path, monkeypatch):
    path = tmp_path / "buildings.pmtiles"
    path.write_bytes(b"old archive")
    encoded = []

    def encode_then_fail(*args, **kwargs):
        encoded.append(1)
        if len(encoded) == 3:
            raise RuntimeError("killed")
        return mapbox_vector_tile.encode(*args, **kwargs)

    monkeypatch.setattr(vectortiles.mapbox_vector_tile, "encode", encode_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        write_pmtiles(gpd.read_file(virac[1]), path, "buildings")
    assert path.read_bytes() == b"old archive" and [p.name for p in tmp_path.iterdir()] == ["buildings.pmtiles"]


def test_predict_pmtiles_hold_every_polygon_and_are_a_stac_asset(predict_folder):
    polygons = gpd.read_parquet(predict_folder / "polygons.parquet")
    header, metadata, tiles = _read(predict_folder / "polygons.pmtiles")
    features = _features(tiles, "polygons", header["max_zoom"])
    assert sorted(features) == list(range(1, len(polygons) + 1)) and len(polygons) > 5
    assert [features[i][0] for i in sorted(features)] == [
        {"class": row["class"], "area": pytest.approx(row["area"]), "confidence": pytest.approx(row["confidence"])}
        for _, row in polygons.iterrows()]
    assert metadata["attribution"] == IMAGERY_CREDIT
    gdal = pyogrio.read_dataframe(predict_folder / "polygons.pmtiles")  # GDAL's reader (QGIS's), deepest zoom
    assert sorted(set(gdal.mvt_id)) == list(range(1, len(polygons) + 1)) and set(gdal["class"]) == set(polygons["class"])
    item = json.loads((predict_folder / "item.json").read_text())
    asset = item["assets"]["polygons.pmtiles"]
    assert asset["type"] == pystac.MediaType.VND_PMTILES == "application/vnd.pmtiles" and asset["roles"] == ["data"]


def test_mapupdate_pmtiles_hold_every_change_with_its_status_and_the_osm_credit(mapupdate_folder):
    changes = gpd.read_parquet(mapupdate_folder / "changes.parquet")
    header, metadata, tiles = _read(mapupdate_folder / "changes.pmtiles")
    features = _features(tiles, "changes", header["max_zoom"])
    assert sorted(features) == list(range(1, len(changes) + 1))
    assert [features[i + 1][0]["status"] for i in range(len(changes))] == changes.status.tolist()
    assert metadata["attribution"].startswith(IMAGERY_CREDIT + " | ") and "OpenStreetMap contributors" in metadata["attribution"]
    assert "changes.pmtiles" in json.loads((mapupdate_folder / "summary.json").read_text())["files"]
    assert json.loads((mapupdate_folder / "item.json").read_text())["assets"]["changes.pmtiles"]["type"] == "application/vnd.pmtiles"


def test_predict_pmtiles_without_polygons_is_a_one_line_error(virac_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path / "model.keras"), str(virac_dataset[0]), "--out", str(out), "--pmtiles"])
    assert exit_.value.code == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines() == ["Error: --pmtiles: needs --polygons: the archive holds the polygons"]
