"""geolabel fetch against real tiles from a misbehaving loopback server: 200 answers with a cut JPEG or
an HTML page, bodies cut mid-transfer, bad tiles left in the cache, huge jobs, labels that miss the imagery."""

from __future__ import annotations

import logging
import socket
import time
import tracemalloc
from http import HTTPStatus
from urllib.parse import urlsplit

import geopandas as gpd
import pytest
import shapely

from geolabel.cli import main
from geolabel.data.fetch import FetchOptions, fetch_dataset
from geolabel.data.http import HttpClient
from geolabel.data.overlap import check_labels_on_imagery
from geolabel.data.tiles import TileCache, TileRange, TileTemplate, fetch_tiles, mosaic_tiles, tile_range
from geolabel.errors import FetchError, InputError
from tests.servers import FaultyTileServer, MockOverpass, _FaultyHandler

VIRAC = TileRange(21, 1772464, 966380, 1772467, 966383)  # 4 x 4 tiles with 55 OSM buildings
HUGE = (124.0, 13.5, 124.5, 14.0)  # 0.5 x 0.5 degrees around Virac: 8,739,086 tiles at z21
HTML = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>upstream timed out</body></html>\n"


class _BodyFaultHandler(_FaultyHandler):
    """FaultyTileServer's faults plus four in the body of a 200 answer: "truncated" (the first half
    of the JPEG, Content-Length to match), "html" (an HTML error page), "cut" (the whole tile's
    Content-Length, then the connection closed halfway through the body), "stall" (half the body,
    then silence for the server's `stall` seconds before the rest)."""

    def send_body(self, status: int, body: bytes, content_type: str, head: bool = False, headers: dict | None = None) -> None:
        path = urlsplit(self.path).path
        fault = self.server.fault_for(path, self.server.attempts[path] - 1) if status == HTTPStatus.OK else None
        if fault == "truncated":
            body = body[: len(body) // 2]
        elif fault == "html":
            body, content_type = HTML, "text/html"
        super().send_body(status, body, content_type, head or fault in ("cut", "stall"), headers)
        if fault == "cut" and not head:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
        if fault == "stall" and not head:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(self.server.stall)
            try:
                self.wfile.write(body[len(body) // 2 :])
            except OSError:  # the client gave up on this answer
                self.close_connection = True


class BodyFaultTileServer(FaultyTileServer):
    """FaultyTileServer whose `kinds` may also be "truncated", "html" or "cut" (see _BodyFaultHandler)."""

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        self.httpd.RequestHandlerClass = _BodyFaultHandler

    def attempts(self, tile: tuple[int, int, int]) -> int:
        return self.httpd.attempts.get("/{}/{}/{}.jpg".format(*tile), 0)

    def heal(self) -> None:
        """Serve every tile normally from now on."""
        self.httpd.fault_for = lambda path, attempt: None


def _served(tiles, tile) -> bytes:
    z, x, y = tile
    return (tiles / str(z) / str(x) / f"{y}.jpg").read_bytes()


def _cli(capsys, *args) -> tuple[int, str]:
    """`geolabel ARGS` in this process: (exit code, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- 1, 2: bad bodies are retried, never cached


@pytest.mark.parametrize("kind", ["truncated", "html", "cut"])
def test_bad_or_cut_bodies_are_retried_and_only_good_tiles_cached(shared_data, tmp_path, kind):
    tiles = shared_data / "oam-osm" / "virac-ph" / "tiles"
    with BodyFaultTileServer(tiles, fraction=0.5, failures=2, kinds=(kind,)) as server:
        cache = TileCache(tmp_path / "cache")
        client = HttpClient(connections=4, retries=3, backoff=0.01)
        counts = fetch_tiles(TileTemplate(server.template("jpg")), VIRAC.tiles(), cache, client)
        faults = server.faults
    assert counts == {"cached": 0, "fetched": 16, "missing": 0}
    assert faults[kind] >= 6 and client.stats["retries"] == faults[kind]
    for tile in VIRAC.tiles():
        assert cache.get(tile) == _served(tiles, tile), tile


def test_a_body_cut_halfway_is_retried_by_the_http_client(shared_data):
    tiles = shared_data / "oam-osm" / "virac-ph" / "tiles"
    tile = next(VIRAC.tiles())
    with BodyFaultTileServer(tiles, fraction=1.0, failures=1, kinds=("cut",)) as server:
        client = HttpClient(connections=1, retries=2, backoff=0.01)
        body = client.get_bytes(TileTemplate(server.template("jpg")).url_for(*tile))
        assert server.attempts(tile) == 2 and server.faults == {"cut": 1}
    assert body == _served(tiles, tile)
    assert client.stats["retries"] == 1


def test_a_body_that_stalls_midway_times_out_and_is_retried(shared_data):
    tiles = shared_data / "oam-osm" / "virac-ph" / "tiles"
    tile = next(VIRAC.tiles())
    with BodyFaultTileServer(tiles, fraction=1.0, failures=1, kinds=("stall",), stall=4.0) as server:
        client = HttpClient(connections=1, retries=2, backoff=0.01, timeout=0.3)
        start = time.perf_counter()
        body = client.get_bytes(TileTemplate(server.template("jpg")).url_for(*tile))
        assert time.perf_counter() - start < 2.5  # the timeout between bytes cut the 4 s stall short
        assert server.attempts(tile) == 2 and server.faults == {"stall": 1}
    assert body == _served(tiles, tile)
    assert client.stats["retries"] == 1


def test_a_tile_that_stays_bad_is_one_line_naming_its_url_and_poisons_nothing(shared_data, tmp_path, capsys):
    city = shared_data / "oam-osm" / "virac-ph"
    bbox = ",".join(repr(v) for v in VIRAC.bounds_lonlat())
    out = tmp_path / "ds"
    with BodyFaultTileServer(city / "tiles", fraction=0.3, failures=1000, kinds=("html", "truncated")) as server:
        template = server.template("jpg")
        args = ["fetch", "--bbox", bbox, "--imagery", template, "--zoom", "21", "--labels", str(city / "osm-buildings.geojson"),
                "--split-block", "1", "--retries", "2", "--connections", "2", "-o", str(out)]
        code, err = _cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert f"Error: {server.url}/21/" in err and "failed after 3 attempts" in err
        assert "not an image tile (starts b'<!DOCTYPE html>" in err or "truncated or corrupt image tile" in err
        cache = TileCache(out / "cache" / "tiles" / TileTemplate(template).key)
        for tile in VIRAC.tiles():  # nothing bad entered the cache
            assert cache.get(tile) in (None, _served(city / "tiles", tile))
        # the next run, once the server answers properly, fetches the rest and finishes
        server.heal()
        requests = server.requests
        code, err = _cli(capsys, *args)
        assert code == 0, err
        assert server.requests > requests
    assert (out / "manifest.json").is_file()


def test_a_bad_tile_left_in_the_cache_is_dropped_and_fetched_again(shared_data, tmp_path, caplog):
    city = shared_data / "oam-osm" / "virac-ph"
    out = tmp_path / "ds"
    first, second = list(VIRAC.tiles())[:2]
    with FaultyTileServer(city / "tiles", fraction=0.0) as server:
        template = server.template("jpg")
        cache = TileCache(out / "cache" / "tiles" / TileTemplate(template).key)
        for tile in VIRAC.tiles():  # a previous run of an older version: every tile cached, two of them bad
            cache.put(tile, _served(city / "tiles", tile))
        cache.put(first, HTML)
        cache.put(second, _served(city / "tiles", second)[:5000])
        with caplog.at_level(logging.WARNING, logger="geolabel"):
            manifest = fetch_dataset(out, template, str(city / "osm-buildings.geojson"), bbox=VIRAC.bounds_lonlat(),
                                     options=FetchOptions(zoom=21, split_block=1), command="test")
        assert server.requests == 2  # only the two bad tiles went to the server
    assert manifest["imagery"]["tiles"] == {"total": 16, "present": 16, "missing": 0}
    assert cache.get(first) == _served(city / "tiles", first) and cache.get(second) == _served(city / "tiles", second)
    assert str(cache.path(first)) in caplog.text and str(cache.path(second)) in caplog.text


def test_mosaic_of_a_bad_cached_tile_names_the_cache_file(shared_data, tmp_path):
    tiles = shared_data / "oam-osm" / "virac-ph" / "tiles"
    cache = TileCache(tmp_path / "cache")
    for tile in VIRAC.tiles():
        cache.put(tile, _served(tiles, tile))
    bad = (21, VIRAC.x0 + 1, VIRAC.y0 + 2)
    cache.put(bad, _served(tiles, bad)[:3000])
    with pytest.raises(FetchError, match="truncated or corrupt image tile") as err:
        mosaic_tiles(cache, VIRAC, tmp_path / "m.tif", source="http://example/{z}/{x}/{y}.jpg")
    assert str(err.value).startswith(str(cache.path(bad)))


# ---------------------------------------------------------------- 3: huge jobs are sized and refused up front


def test_a_huge_job_is_refused_with_its_size_before_any_download(shared_data, tmp_path):
    city = shared_data / "oam-osm" / "virac-ph"
    count = len(tile_range(HUGE, 21))
    assert count == 8_739_086
    with FaultyTileServer(city / "tiles", fraction=0.0) as server:
        start = time.perf_counter()
        with pytest.raises(InputError) as err:
            fetch_dataset(tmp_path / "ds", server.template("jpg"), str(city / "osm-buildings.geojson"), bbox=HUGE,
                          options=FetchOptions(zoom=21))
        assert time.perf_counter() - start < 5
        with pytest.raises(InputError, match="16 tiles at zoom 21 .* more than the 10 fetched"):  # the limit is an option
            fetch_dataset(tmp_path / "small", server.template("jpg"), str(city / "osm-buildings.geojson"), bbox=VIRAC.bounds_lonlat(),
                          options=FetchOptions(zoom=21, max_tiles=10))
        assert server.requests == 0
    message = str(err.value)
    assert message.startswith("bbox 124.0,13.5,124.5,14.0: 8,739,086 tiles at zoom 21 (about 209.7 GB to download)")
    assert "more than the 100,000" in message and "--yes" in message and "\n" not in message
    assert not (tmp_path / "ds" / "cache").exists()


def test_yes_starts_a_huge_job_without_listing_its_tiles(shared_data, tmp_path, capsys, caplog):
    city = shared_data / "oam-osm" / "virac-ph"
    with FaultyTileServer(city / "tiles", fraction=1.0, failures=1000, kinds=("500",)) as server:
        args = ["fetch", "--bbox", ",".join(map(str, HUGE)), "--imagery", server.template("jpg"), "--zoom", "21",
                "--labels", str(city / "osm-buildings.geojson"), "--retries", "0", "--connections", "2", "-o", str(tmp_path / "ds")]
        code, err = _cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and "8,739,086 tiles at zoom 21 (about 209.7 GB to download)" in err
        assert server.requests == 0
        tracemalloc.start()
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="geolabel"):
            code, err = _cli(capsys, *args, "--yes")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        requests = server.requests
    # past the estimate, the download started at once: the first tile's 500 ends it
    assert code == 2 and "HTTP 500" in err and f"{server.url}/21/" in err
    assert "fetching 8,739,086 tiles at zoom 21" in caplog.text
    assert 1 <= requests <= 8
    assert seconds < 30 and peak < 50e6  # 8.7 million tiles were never listed


# ---------------------------------------------------------------- 4: labels that miss the imagery


def test_labels_of_another_city_are_refused_naming_both_inputs(shared_data, tmp_path, capsys):
    virac, kampala = shared_data / "oam-osm" / "virac-ph", shared_data / "oam-osm" / "kampala-ug"
    bbox = ",".join(repr(v) for v in VIRAC.bounds_lonlat())
    out = tmp_path / "ds"
    with FaultyTileServer(virac / "tiles", fraction=0.0) as server:
        code, err = _cli(capsys, "fetch", "--bbox", bbox, "--imagery", server.template("jpg"), "--zoom", "21",
                         "--labels", str(kampala / "osm-buildings.geojson"), "-o", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"Error: {kampala / 'osm-buildings.geojson'}: does not overlap the imagery {server.template('jpg')}")
    assert "the labels span lon/lat 32.5" in err and "lon/lat 124.26" in err
    assert not (out / "labels.gpkg").exists() and not (out / "chips").exists() and not (out / "manifest.json").exists()


def test_labels_in_a_wrongly_declared_crs_are_refused(shared_data, tmp_path):
    city = shared_data / "oam-osm" / "virac-ph"
    buildings = gpd.read_file(city / "osm-buildings.geojson").to_crs(32651)  # UTM 51N, metres
    buildings.to_file(tmp_path / "utm.gpkg")  # declared right: works like the lon/lat file
    buildings.set_crs(3857, allow_override=True).to_file(tmp_path / "wrong.gpkg")  # the same numbers declared Web Mercator
    with FaultyTileServer(city / "tiles", fraction=0.0) as server:
        options = FetchOptions(zoom=21, split_block=1)
        good = fetch_dataset(tmp_path / "good", server.template("jpg"), str(tmp_path / "utm.gpkg"), bbox=VIRAC.bounds_lonlat(), options=options)
        with pytest.raises(InputError, match="does not overlap the imagery .* another CRS than their file declares") as err:
            fetch_dataset(tmp_path / "wrong", server.template("jpg"), str(tmp_path / "wrong.gpkg"), bbox=VIRAC.bounds_lonlat(), options=options)
    assert good["counts"]["features"]["building"] == 55 and good["counts"]["pixels"]["building"] > 10_000
    assert err.value.source == str(tmp_path / "wrong.gpkg")


def test_no_building_on_the_imagery_is_refused(shared_data, tmp_path):
    virac, kampala = shared_data / "oam-osm" / "virac-ph", shared_data / "oam-osm" / "kampala-ug"
    with FaultyTileServer(virac / "tiles", fraction=0.0) as server, MockOverpass(kampala / "osm-buildings.geojson") as overpass:
        with pytest.raises(InputError, match=r"^osm: has no building feature on the imagery http://127\.0\.0\.1") as err:
            fetch_dataset(tmp_path / "ds", server.template("jpg"), "osm", bbox=VIRAC.bounds_lonlat(),
                          options=FetchOptions(zoom=21, overpass_url=overpass.url))
        assert len(overpass.queries) == 1
    assert "lon/lat 124.26361,13.96872,124.26430,13.96939" in str(err.value)


def test_check_labels_on_imagery(shared_data):
    buildings = gpd.read_file(shared_data / "oam-osm" / "virac-ph" / "osm-buildings.geojson")
    bounds = VIRAC.bounds_3857()
    buildings["class"] = "building"
    assert check_labels_on_imagery(buildings, bounds, "EPSG:3857", ["building"], "b.geojson", "img.tif") == 55
    roads = buildings.assign(**{"class": "road"})
    with pytest.raises(InputError, match="^b.geojson: has no building feature on the imagery img.tif .*, only road$"):
        check_labels_on_imagery(roads, bounds, "EPSG:3857", ["building"], "b.geojson", "img.tif")
    with pytest.raises(InputError, match="has no building feature on the imagery img.tif"):
        check_labels_on_imagery(buildings.iloc[:0], bounds, "EPSG:3857", ["building"], "b.geojson", "img.tif")
    elsewhere = buildings.set_geometry(buildings.geometry.translate(1.0, 0.0))
    with pytest.raises(InputError, match="b.geojson: does not overlap the imagery img.tif"):
        check_labels_on_imagery(elsewhere, bounds, "EPSG:3857", ["building"], "b.geojson", "img.tif")
    unclassed = gpd.GeoDataFrame(geometry=[shapely.box(*VIRAC.bounds_lonlat())], crs=4326)  # no class column: every feature counts
    assert check_labels_on_imagery(unclassed, bounds, "EPSG:3857", ["building"], "b.geojson", "img.tif") == 1
