"""geolabel fetch: tile math, exact georeferencing, OSM labels from a mock Overpass, the dataset folder."""

from __future__ import annotations

import json
import math

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer

from geolabel.data.chips import read_chips, shard_paths
from geolabel.data.fetch import FetchOptions, fetch_dataset
from geolabel.data.http import HttpClient
from tests.cog import cog_problems
from geolabel.data.tiles import TileCache, TileFolder, TileRange, TileTemplate, fetch_tiles, mosaic_tiles, read_tiles, tile_range
from geolabel.data.tileserver import TileServer
from geolabel.errors import InputError
from tests.servers import OSM_BASE, MockOverpass

ZANZIBAR = TileRange(21, 1277180, 1083844, 1277183, 1083847)  # 4 x 4 tiles with buildings
VIRAC = TileRange(21, 1772464, 966380, 1772467, 966383)


def _corner_3857(x: int, y: int, z: int) -> tuple[float, float]:
    """Web-Mercator corner of a tile, independently: tile -> lon/lat (slippy-map formulas) -> pyproj."""
    n = 2**z
    lon = x / n * 360 - 180
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    return Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)


def test_tile_range_of_its_own_bounds_is_itself():
    assert tile_range(ZANZIBAR.bounds_lonlat(), 21) == ZANZIBAR
    assert tile_range(VIRAC.bounds_lonlat(), 21) == VIRAC
    assert len(tile_range((-180, -85, 180, 85), 2)) == 16


def test_template_placeholders_and_validation():
    assert TileTemplate("http://h/{z}/{x}/{-y}.png").url_for(3, 1, 2) == "http://h/3/1/5.png"
    assert TileTemplate("http://{s}.h/{z}/{x}/{y}", ("a", "b")).url_for(1, 1, 0) == "http://b.h/1/1/0"
    assert TileTemplate("http://h/{q}.jpg").url_for(3, 3, 5) == "http://h/213.jpg"
    wms = TileTemplate("http://h/wms?SERVICE=WMS&REQUEST=GetMap&BBOX={bbox-epsg-3857}&WIDTH={width}&HEIGHT={height}")
    bbox = [float(v) for v in wms.url_for(1, 0, 0).split("BBOX=")[1].split("&")[0].split(",")]
    assert bbox == pytest.approx([-20037508.342789244, 0, 0, 20037508.342789244])
    with pytest.raises(InputError, match=r"needs \{z\}"):
        TileTemplate("http://h/tiles/{x}/{y}.png")
    with pytest.raises(InputError, match="unknown placeholder"):
        TileTemplate("http://h/{z}/{x}/{y}/{zoom}.png")


def test_a_local_tile_folder_mosaics_as_the_fetched_cache_does(shared_data, tmp_path):
    """One tile assembler: the shared XYZ folder read in place gives the fetched cache's mosaic, pixel for pixel,
    with absent tiles as nodata and counted."""
    tiles = shared_data / "oam-osm" / "zanzibar-tz" / "tiles"
    cache = TileCache(tmp_path / "cache")
    with TileServer(tiles) as server:
        fetch_tiles(TileTemplate(server.template("jpg")), ZANZIBAR.tiles(), cache, HttpClient(connections=4))
    wider = TileRange(ZANZIBAR.z, ZANZIBAR.x0, ZANZIBAR.y0, ZANZIBAR.x1 + 1, ZANZIBAR.y1)  # + 4 tiles not in the cache
    fetched = mosaic_tiles(cache, wider, tmp_path / "fetched.tif", block_tiles=3)
    local = mosaic_tiles(TileFolder(tiles), ZANZIBAR, tmp_path / "local.tif", block_tiles=3)
    assert fetched == {"tiles": 16, "missing": 4} and local == {"tiles": 16, "missing": 0}
    with rasterio.open(tmp_path / "fetched.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        assert np.array_equal(a.read(window=((0, 1024), (0, 1024))), b.read())
        assert a.transform == b.transform and not a.read(window=((0, 1024), (1024, 1280))).any()
    array, present = read_tiles(TileFolder(tiles), ZANZIBAR, rows=range(1, 2), columns=range(2, 4))
    assert array.shape == (3, 256, 512) and present.all()
    with rasterio.open(tmp_path / "local.tif") as b:
        assert np.array_equal(array, b.read(window=((256, 512), (512, 1024))))


def test_zanzibar_mosaic_bounds_are_exact_to_the_millimetre(shared_data, tmp_path):
    tiles = shared_data / "oam-osm" / "zanzibar-tz" / "tiles"
    cache = TileCache(tmp_path / "cache")
    with TileServer(tiles) as server:
        counts = fetch_tiles(TileTemplate(server.template("jpg")), ZANZIBAR.tiles(), cache, HttpClient(connections=4))
    assert counts["fetched"] == 16
    out = tmp_path / "mosaic.tif"
    mosaic_tiles(cache, ZANZIBAR, out)
    left, top = _corner_3857(ZANZIBAR.x0, ZANZIBAR.y0, 21)
    right, bottom = _corner_3857(ZANZIBAR.x1 + 1, ZANZIBAR.y1 + 1, 21)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 3857
        assert (src.width, src.height, src.count) == (1024, 1024, 3)
        assert np.allclose(src.bounds, (left, bottom, right, top), rtol=0, atol=1e-3)
        # pixel size = 2 pi R / 2^21 / 256 exactly
        assert src.transform.a == pytest.approx(2 * math.pi * 6378137 / 2**21 / 256, rel=1e-12)
        tile = src.read(window=((256, 512), (512, 768)))
    from PIL import Image

    served = np.asarray(Image.open(tiles / "21" / str(ZANZIBAR.x0 + 2) / f"{ZANZIBAR.y0 + 1}.jpg").convert("RGB"))
    assert np.array_equal(tile.transpose(1, 2, 0), served)
    assert cog_problems(out) == []
    # the same area through WMS GetMap (a server rendering from this mosaic) gives the same pixels
    from tests.servers import RasterWms

    with RasterWms(out) as wms:
        wms_cache = TileCache(tmp_path / "wms-cache")
        fetch_tiles(TileTemplate(wms.template), ZANZIBAR.tiles(), wms_cache, HttpClient(connections=2))
    mosaic_tiles(wms_cache, ZANZIBAR, tmp_path / "wms.tif")
    with rasterio.open(out) as xyz, rasterio.open(tmp_path / "wms.tif") as via_wms:
        assert via_wms.transform == xyz.transform and np.array_equal(via_wms.read(), xyz.read())


@pytest.fixture(scope="module")
def zanzibar_dataset(shared_data, tmp_path_factory):
    city = shared_data / "oam-osm" / "zanzibar-tz"
    out = tmp_path_factory.mktemp("fetch") / "zanzibar"
    with TileServer(city / "tiles") as server, MockOverpass(city / "osm-buildings.geojson") as overpass:
        manifest = fetch_dataset(
            out, server.template("jpg"), "osm", bbox=ZANZIBAR.bounds_lonlat(),
            options=FetchOptions(zoom=21, overpass_url=overpass.url, split_block=1, val_fraction=0.25),
            command="geolabel fetch (test)",
        )
        queries = overpass.queries
    return out, manifest, queries


def test_dataset_folder_from_tiles_and_mock_overpass(zanzibar_dataset):
    out, manifest, queries = zanzibar_dataset
    for name in ("imagery.tif", "labels.tif", "labels.gpkg", "manifest.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["classes"] == ["background", "building"]
    assert manifest["osm_timestamp"] == OSM_BASE
    assert manifest["labels"]["kind"] == "overpass" and "[out:json]" in queries[0]
    assert manifest["crs"] == "EPSG:3857"
    assert manifest["counts"]["features"]["building"] > 0
    assert manifest["counts"]["pixels"]["building"] > 0
    assert any("OpenStreetMap" in line for line in manifest["attribution"])
    with rasterio.open(out / "imagery.tif") as img, rasterio.open(out / "labels.tif") as lab:
        assert (img.transform, img.width, img.height, img.crs) == (lab.transform, lab.width, lab.height, lab.crs)
        assert lab.dtypes[0] == "uint8" and lab.nodata == 255
    assert cog_problems(out / "labels.tif") == []
    assert gpd.read_file(out / "labels.gpkg").crs.to_epsg() == 3857


def test_a_known_osm_building_lands_on_its_pixels(zanzibar_dataset, shared_data):
    out, _, _ = zanzibar_dataset
    buildings = gpd.read_file(shared_data / "oam-osm" / "zanzibar-tz" / "osm-buildings.geojson").to_crs("EPSG:3857")
    with rasterio.open(out / "labels.tif") as lab:
        labels = lab.read(1)
        transform = lab.transform
        area = shapely.box(*lab.bounds)
    inside = buildings[buildings.within(area)]
    assert len(inside) > 5
    polygon = inside.geometry.iloc[int(np.argmax(inside.area.values))]
    # independent: which pixel centres does the polygon cover?
    rows, cols = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
    xs, ys = transform * (cols + 0.5, rows + 0.5)
    covered = shapely.contains_xy(polygon, xs, ys)
    labelled = labels == 1
    assert covered.sum() > 500
    assert labelled[covered].all()
    # every disagreement is within one pixel of the outline (neighbouring buildings aside)
    near = polygon.buffer(transform.a * 1.5)
    others = shapely.contains_xy(shapely.union_all(buildings[buildings.intersects(area)].geometry.values).difference(polygon), xs, ys)
    stray = labelled & ~covered & ~others
    assert shapely.contains_xy(near, xs[stray], ys[stray]).all()


def test_chips_are_split_by_blocks_and_carry_geo_bounds(zanzibar_dataset):
    out, manifest, _ = zanzibar_dataset
    train = list(read_chips(shard_paths(out / "chips", "train")))
    val = list(read_chips(shard_paths(out / "chips", "val")))
    assert len(train) == manifest["chips"]["train"] and len(val) == manifest["chips"]["val"]
    assert len(train) + len(val) == 16 and len(val) >= 1
    boxes = [shapely.box(*c.bounds) for c in train]
    for chip in val:
        assert all(shapely.box(*chip.bounds).intersection(b).area < 1e-6 for b in boxes)
    chip = train[0]
    assert chip.image.shape == (256, 256, 3) and chip.mask.shape == (256, 256) and chip.crs == "EPSG:3857"
    with rasterio.open(out / "imagery.tif") as img:
        # chip bounds travel as float32 (tf.train.FloatList): ~0.5 m at these coordinates, so snap to the chip grid
        col, row = ~img.transform * (chip.bounds[0], chip.bounds[3])
        col, row = round(col / 256) * 256, round(row / 256) * 256
        assert np.allclose(img.transform * (col, row), (chip.bounds[0], chip.bounds[3]), atol=1.0)
        window = rasterio.windows.Window(col, row, 256, 256)
        assert np.array_equal(img.read(window=window).transpose(1, 2, 0), chip.image)


def test_rerun_skips_finished_work(zanzibar_dataset, shared_data):
    out, manifest, _ = zanzibar_dataset
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    city = shared_data / "oam-osm" / "zanzibar-tz"
    state = json.loads((out / ".fetch-state.json").read_text())
    # a second run with the same inputs (same URLs) touches nothing
    url = manifest["imagery"]["url"]
    port = int(url.split(":")[2].split("/")[0])
    overpass_port = int(manifest["labels"]["url"].split(":")[2].split("/")[0])
    with TileServer(city / "tiles", port=port) as server, MockOverpass(city / "osm-buildings.geojson", overpass_port) as overpass:
        assert server.template("jpg") == url and overpass.url == manifest["labels"]["url"]
        manifest2 = fetch_dataset(
            out, url, "osm", bbox=ZANZIBAR.bounds_lonlat(),
            options=FetchOptions(zoom=21, overpass_url=overpass.url, split_block=1, val_fraction=0.25),
            command="geolabel fetch (test)",
        )
        assert overpass.queries == []
    assert manifest2 == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == stamps
    assert json.loads((out / ".fetch-state.json").read_text()) == state


def test_missing_tiles_become_nodata(shared_data, tmp_path):
    tiles = shared_data / "oam-osm" / "virac-ph" / "tiles"
    trange = TileRange(21, VIRAC.x0, VIRAC.y0 - 1, VIRAC.x0 + 1, VIRAC.y0)  # top row absent on the server
    with TileServer(tiles) as server:
        client = HttpClient(connections=2)
        cache = TileCache(tmp_path / "cache")
        counts = fetch_tiles(TileTemplate(server.template("jpg")), trange.tiles(), cache, client)
    assert counts == {"cached": 0, "fetched": 4, "missing": 2}
    mosaic_tiles(cache, trange, tmp_path / "m.tif")
    with rasterio.open(tmp_path / "m.tif") as src:
        mask = src.dataset_mask()
    assert (mask[:256] == 0).all() and (mask[256:] == 255).mean() > 0.99
