"""geolabel fetch sources: local OSM extracts, local GeoTIFFs (8 and 16 bit), AOIs and their errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.warp import transform_bounds

from geolabel.classes import BUILDINGS, BUILDINGS_ROADS
from geolabel.data.aoi import aoi_from_file, aoi_from_place, parse_bbox, resolve_aoi
from geolabel.data.chips import read_chips, shard_paths
from geolabel.data.fetch import FetchOptions, fetch_dataset
from geolabel.data.osm import overpass_to_frame, read_osm_extract
from geolabel.data.rasterize import rasterize_labels
from geolabel.data.raster import GeoBlock, write_raster
from geolabel.errors import InputError

EXTRACTS = {  # file -> (buildings at least, roads at least), counts from the data README
    "bavaria-10.068_48.135_10.071_48.137.osm": (30, 5),
    "west-oakland.osm.bz2": (23, 10),
    "helsinki.osm.pbf": (480, 2000),
    "kotka-finland.osm.pbf": (2150, 100),
}


@pytest.mark.parametrize("name", sorted(EXTRACTS))
def test_osm_extracts_read_buildings_and_roads(shared_data, name):
    frame, info = read_osm_extract(shared_data / "osm-extracts" / name, BUILDINGS_ROADS)
    buildings, roads = frame[frame["class"] == "building"], frame[frame["class"] == "road"]
    assert len(buildings) >= EXTRACTS[name][0] and len(roads) >= EXTRACTS[name][1]
    assert set(buildings.geom_type) <= {"Polygon", "MultiPolygon"}
    assert set(roads.geom_type) <= {"LineString", "MultiLineString"} and (roads["width"] > 0).all()
    assert frame.crs.to_epsg() == 4326 and buildings["osm_id"].notna().all()
    if name.endswith(".osm"):
        assert info["osm_timestamp"] == "2020-08-10T00:00:00Z"


def test_extract_rasterises_with_buffered_roads(shared_data, tmp_path):
    frame, _ = read_osm_extract(shared_data / "osm-extracts" / "bavaria-10.068_48.135_10.071_48.137.osm", BUILDINGS_ROADS)
    left, bottom, right, top = transform_bounds("EPSG:4326", "EPSG:3857", *frame.total_bounds)
    res = 0.5
    width, height = int((right - left) / res) + 1, int((top - bottom) / res) + 1
    grid = GeoBlock(np.full((1, height, width), 100, np.uint8), rasterio.transform.from_origin(left, top, res, res), rasterio.CRS.from_epsg(3857), 0)
    write_raster(tmp_path / "grid.tif", grid)
    counts = rasterize_labels(frame, tmp_path / "grid.tif", tmp_path / "labels.tif", BUILDINGS_ROADS)
    # building pixels ~ building area (EPSG:3857 area / pixel area, buildings painted over roads)
    area = frame[frame["class"] == "building"].to_crs(3857).union_all().area / res**2
    assert counts["building"] == pytest.approx(area, rel=0.03)
    # road pixels ~ sum of length x width (scale factor of Web Mercator at this latitude: 1/cos(lat))
    roads = frame[frame["class"] == "road"]
    metric = roads.to_crs(roads.estimate_utm_crs())
    scale = 1 / np.cos(np.radians(48.136))
    expected = (metric.length * metric["width"]).sum() * scale**2 / res**2
    assert counts["road"] == pytest.approx(expected, rel=0.35)  # overlaps at junctions and buildings on top
    # the same labels given in the grid's CRS (as fetch stores them) buffer to the same ground width
    again = rasterize_labels(frame.to_crs(3857), tmp_path / "grid.tif", tmp_path / "labels-3857.tif", BUILDINGS_ROADS)
    assert again["road"] == pytest.approx(counts["road"], rel=0.01)


def test_fetch_with_an_osm_extract_records_its_timestamp(shared_data, tmp_path):
    extract = shared_data / "osm-extracts" / "bavaria-10.068_48.135_10.071_48.137.osm"
    bbox = (10.068, 48.135, 10.071, 48.137)
    left, bottom, right, top = transform_bounds("EPSG:4326", "EPSG:3857", *bbox)
    res = 1.0
    width, height = int((right - left) / res), int((top - bottom) / res)
    grid = GeoBlock(np.full((3, height, width), 120, np.uint8), rasterio.transform.from_origin(left, top, res, res), rasterio.CRS.from_epsg(3857), 0)
    write_raster(tmp_path / "grid.tif", grid)
    manifest = fetch_dataset(tmp_path / "ds", str(tmp_path / "grid.tif"), str(extract), bbox=bbox, classes=BUILDINGS_ROADS,
                             options=FetchOptions(chip_size=64, split_block=1))
    assert manifest["labels"]["kind"] == "osm-extract" and manifest["osm_timestamp"] == "2020-08-10T00:00:00Z"
    assert manifest["counts"]["features"]["building"] >= 30 and manifest["counts"]["features"]["road"] >= 5
    assert manifest["counts"]["pixels"]["road"] > 0 and manifest["counts"]["pixels"]["building"] > 0
    assert len(manifest["labels"]["sha256"]) == 64
    assert any("OpenStreetMap" in line for line in manifest["attribution"])


def test_overpass_multipolygon_relation_keeps_its_hole():
    outer = [{"lon": x, "lat": y} for x, y in ((0, 0), (0.001, 0), (0.001, 0.001), (0, 0.001), (0, 0))]
    inner = [{"lon": x, "lat": y} for x, y in ((0.0004, 0.0004), (0.0006, 0.0004), (0.0006, 0.0006), (0.0004, 0.0006), (0.0004, 0.0004))]
    response = {"elements": [
        {"type": "relation", "id": 7, "tags": {"type": "multipolygon", "building": "yes"},
         "members": [{"type": "way", "ref": 1, "role": "outer", "geometry": outer}, {"type": "way", "ref": 2, "role": "inner", "geometry": inner}]},
        {"type": "way", "id": 9, "tags": {"highway": "residential"}, "geometry": outer[:3]},
        {"type": "way", "id": 10, "tags": {"highway": "proposed"}, "geometry": outer[:3]},
    ]}
    frame = overpass_to_frame(response, BUILDINGS_ROADS)
    assert list(frame["class"]) == ["building", "road"]
    assert frame.geometry.iloc[0].area == pytest.approx(1e-6 - 4e-8)
    assert frame["width"].iloc[1] == 6.0


def _inria_vectors(shared_data, tmp_path):
    with rasterio.open(shared_data / "inria-austin" / "buildings-mask.tif") as src:
        mask = src.read(1)
        polygons = [shapely.geometry.shape(g) for g, v in shapes(mask, mask=mask > 0, transform=src.transform) if v > 0]
        crs = src.crs
    path = tmp_path / "buildings.geojson"
    gpd.GeoDataFrame({"kind": ["building"] * len(polygons)}, geometry=polygons, crs=crs).to_file(path)
    return path, mask


def test_local_geotiff_clipped_to_aoi_keeps_its_grid(shared_data, tmp_path):
    vectors, mask = _inria_vectors(shared_data, tmp_path)
    image = shared_data / "inria-austin" / "image.tif"
    aoi = transform_bounds("EPSG:26914", "EPSG:4326", 617160.0, 3344160.0, 617340.0, 3344340.0)
    manifest = fetch_dataset(
        tmp_path / "ds", str(image), str(vectors), bbox=aoi, classes=BUILDINGS,
        options=FetchOptions(chip_size=128, split_block=1, class_column="kind"),
    )
    with rasterio.open(tmp_path / "ds" / "imagery.tif") as out, rasterio.open(image) as src:
        assert out.crs == src.crs and out.res == src.res
        col, row = ~src.transform * (out.transform.c, out.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6  # the source grid, not resampled
        col, row = round(col), round(row)
        window = rasterio.windows.Window(int(col), int(row), out.width, out.height)
        inside = out.dataset_mask() > 0
        assert inside.mean() > 0.95
        expected = src.read(window=window)
        expected[:, (expected == 0).all(axis=0)] = 1  # without a source nodata, real black is lifted off 0
        assert np.array_equal(out.read()[:, inside], expected[:, inside])
    with rasterio.open(tmp_path / "ds" / "labels.tif") as lab:
        labels = lab.read(1)
    truth = (mask[int(row) : int(row) + labels.shape[0], int(col) : int(col) + labels.shape[1]] > 0).astype(np.uint8)
    known = labels != 255
    assert (labels[known] == truth[known]).mean() > 0.999
    assert manifest["imagery"]["kind"] == "raster" and manifest["crs"] == "EPSG:26914"
    assert manifest["chips"]["train"] + manifest["chips"]["val"] >= 4 and manifest["chips"]["val"] >= 1


def test_16bit_geotiff_gives_stretched_uint8_chips(shared_data, tmp_path):
    image = shared_data / "spacenet" / "atlanta-pan.tif"
    with rasterio.open(image) as src:
        aoi = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    manifest = fetch_dataset(
        tmp_path / "ds", str(image), str(shared_data / "spacenet" / "atlanta-buildings.geojson"), bbox=aoi,
        options=FetchOptions(chip_size=256, split_block=1, val_fraction=0.3),
    )
    assert manifest["dtype"] == "uint16" and manifest["bands"] == 1
    assert len(manifest["chips"]["uint8_scaling"]) == 1
    assert manifest["counts"]["pixels"]["building"] > 1000
    chips = list(read_chips(shard_paths(tmp_path / "ds" / "chips", "train")))
    assert chips and chips[0].image.shape == (256, 256, 1) and chips[0].image.std() > 10


@pytest.mark.parametrize(
    "text, message",
    [
        ("10,50,9,51", "west 10.0 is not less than east"),
        ("10,51,11,50", "south 51.0 is not less than north"),
        ("10,50,200,51", "outside -180..180"),
        ("10,50,11", "needs 4 numbers"),
        ("a,b,c,d", "not numbers"),
    ],
)
def test_bad_bbox_fails_fast_naming_it(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_bbox(text)
    assert err.value.source == "--bbox"


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_aoi_files_and_their_errors(tmp_path):
    good = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(39.24, -6.05, 39.25, -6.04)], crs=4326).to_crs(3857).to_file(good)
    assert aoi_from_file(good).bbox == pytest.approx((39.24, -6.05, 39.25, -6.04))
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InputError, match="empty"):
        aoi_from_file(empty)
    no_crs = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]).to_file(no_crs)
    with pytest.raises(InputError, match="no CRS"):
        aoi_from_file(no_crs)
    with pytest.raises(InputError, match="no such AOI file"):
        aoi_from_file(tmp_path / "nope.geojson")
    with pytest.raises(InputError, match="exactly one"):
        resolve_aoi(bbox="0,0,1,1", aoi=good)


def test_bad_sources_fail_fast(shared_data, tmp_path):
    labels = str(shared_data / "oam-osm" / "virac-ph" / "osm-buildings.geojson")
    with pytest.raises(InputError, match=r"needs \{z\}"):
        fetch_dataset(tmp_path / "a", "http://127.0.0.1:9/{x}/{y}.png", labels, bbox="0,0,1,1", options=FetchOptions(zoom=3))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a readable raster"):
        fetch_dataset(tmp_path / "b", str(tmp_path / "junk.tif"), labels, bbox="0,0,1,1")
    with pytest.raises(InputError, match="does not overlap"):
        fetch_dataset(tmp_path / "c", str(shared_data / "inria-austin" / "image.tif"), labels, bbox="10,10,11,11")
    with pytest.raises(InputError, match="zoom"):
        fetch_dataset(tmp_path / "d", "http://127.0.0.1:9/{z}/{x}/{y}.png", labels, bbox="0,0,1,1")


class _Nominatim(BaseHTTPRequestHandler):
    def log_message(self, *args):
        return

    def do_GET(self):
        body = json.dumps([{
            "place_id": 1, "osm_type": "relation", "osm_id": 1, "lat": "-6.05", "lon": "39.245", "class": "boundary",
            "type": "administrative", "display_name": "Test Town", "importance": 0.5,
            "boundingbox": ["-6.06", "-6.04", "39.24", "39.25"],
            "geojson": {"type": "Polygon", "coordinates": [[[39.24, -6.06], [39.25, -6.06], [39.25, -6.04], [39.24, -6.04], [39.24, -6.06]]]},
        }]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_place_is_geocoded_at_the_configured_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Nominatim)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        aoi = aoi_from_place("Test Town", f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    assert aoi.bbox == pytest.approx((39.24, -6.06, 39.25, -6.04))
    assert aoi.source == "place Test Town"


def test_remote_cog_read_with_http_range_requests(shared_data, tmp_path):
    from tests.servers import tile_server_process

    image = shared_data / "inria-austin" / "image.tif"
    vectors, _ = _inria_vectors(shared_data, tmp_path)  # labels on this image (labels elsewhere are refused)
    aoi = transform_bounds("EPSG:26914", "EPSG:4326", 617200.0, 3344200.0, 617300.0, 3344300.0)
    with tile_server_process(image.parent) as url:
        manifest = fetch_dataset(
            tmp_path / "ds", f"{url}/image.tif", str(vectors), bbox=aoi, classes=BUILDINGS,
            options=FetchOptions(chip_size=128, val_fraction=0.0, class_column="kind"),
        )
    assert manifest["imagery"]["url"].startswith("http://127.0.0.1")
    assert 334 <= manifest["width"] <= 345 and 334 <= manifest["height"] <= 345  # 100 m at 0.3 m, AOI box reprojected
    with rasterio.open(tmp_path / "ds" / "imagery.tif") as out, rasterio.open(image) as src:
        col, row = (round(v) for v in ~src.transform * (out.transform.c, out.transform.f))
        window = rasterio.windows.Window(col, row, out.width, out.height)
        inside = out.dataset_mask() > 0
        expected = src.read(window=window)
        expected[:, (expected == 0).all(axis=0)] = 1
        assert np.array_equal(out.read()[:, inside], expected[:, inside])
