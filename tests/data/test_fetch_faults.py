"""geolabel fetch under a misbehaving tile server, and killed halfway then resumed."""

from __future__ import annotations

import email.utils
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from geolabel.data.fetch import FetchOptions, fetch_dataset
from geolabel.data.http import HttpClient
from geolabel.data.tiles import TileCache, TileRange, TileTemplate, fetch_tiles, mosaic_tiles
from geolabel.data.tileserver import TileServer
from geolabel.errors import FetchError
from tests.servers import FaultyTileServer

ROOT = Path(__file__).resolve().parents[2]
VIRAC = TileRange(21, 1772464, 966380, 1772467, 966383)
OUTPUTS = ("imagery.tif", "labels.tif", "labels.gpkg", "manifest.json", "chips/train-00000-of-00001.tfrecord.gz", "chips/val-00000-of-00001.tfrecord.gz")


class _StatusServer:
    """Answers every request with one fixed status (and Retry-After)."""

    def __init__(self, status: int, retry_after: str | None = None):
        outer = self
        self.hits = 0
        self.hit_times: list[float] = []  # wall clock, comparable with an HTTP date

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def do_GET(self):
                outer.hits += 1
                outer.hit_times.append(time.time())
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/x"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retry_after_as_a_date_is_honoured_and_a_malformed_one_falls_back_to_the_backoff():
    # Timed at the server's hits, not around the call: on a loaded machine the call's own
    # start-up and teardown took 0.5 s more than the date asks for (CI, 2 workers).
    date = int(time.time()) + 3
    for value, earliest, latest in ((email.utils.formatdate(date, usegmt=True), date, date + 2.0), ("soon", None, 1.0)):
        server = _StatusServer(503, retry_after=value)
        client = HttpClient(connections=1, retries=1, backoff=0.01)
        try:
            with pytest.raises(FetchError, match="after 2 attempts"):
                client.get_bytes(server.url)
        finally:
            server.close()
        assert server.hits == 2
        first, second = server.hit_times
        if earliest is None:
            assert second - first < latest, value
        else:
            assert earliest <= second < latest, (value, second)


def test_404_is_missing_and_4xx_fails_fast_and_5xx_gives_up():
    for status, expect in ((404, None), (403, FetchError), (503, FetchError)):
        server = _StatusServer(status)
        client = HttpClient(connections=1, retries=2, backoff=0.01)
        try:
            if expect is None:
                assert client.get_bytes(server.url) is None
            else:
                with pytest.raises(FetchError, match=str(status) if status == 403 else "after 3 attempts"):
                    client.get_bytes(server.url)
            assert server.hits == (3 if status == 503 else 1)
        finally:
            server.close()


def test_retry_after_is_honoured():
    server = _StatusServer(429, retry_after="1")
    client = HttpClient(connections=1, retries=1, backoff=0.01)
    start = time.perf_counter()
    try:
        with pytest.raises(FetchError):
            client.get_bytes(server.url)
    finally:
        server.close()
    assert time.perf_counter() - start >= 1.0
    assert server.hits == 2


def test_faults_500_429_timeouts_still_give_identical_mosaic(shared_data, tmp_path):
    tiles = shared_data / "oam-osm" / "virac-ph" / "tiles"
    with TileServer(tiles) as server:
        clean = TileCache(tmp_path / "clean")
        fetch_tiles(TileTemplate(server.template("jpg")), VIRAC.tiles(), clean, HttpClient(connections=4))
    with FaultyTileServer(tiles, fraction=0.6, failures=2, stall=1.0) as faulty:
        flaky = TileCache(tmp_path / "flaky")
        client = HttpClient(connections=4, retries=4, backoff=0.01, timeout=0.3)
        counts = fetch_tiles(TileTemplate(faulty.template("jpg")), VIRAC.tiles(), flaky, client)
        faults = faulty.faults
    assert counts == {"cached": 0, "fetched": 16, "missing": 0}
    assert set(faults) == {"500", "429", "timeout"} and sum(faults.values()) >= 8
    assert client.stats["retries"] >= sum(faults.values())
    mosaic_tiles(clean, VIRAC, tmp_path / "clean.tif")
    mosaic_tiles(flaky, VIRAC, tmp_path / "flaky.tif")
    assert (tmp_path / "clean.tif").read_bytes() == (tmp_path / "flaky.tif").read_bytes()


_CHILD = """
import sys
from geolabel.data.fetch import FetchOptions, fetch_dataset
fetch_dataset(sys.argv[1], sys.argv[2], sys.argv[3], bbox=[float(v) for v in sys.argv[4].split(",")],
              options=FetchOptions(zoom=21, split_block=1, val_fraction=0.25, connections=2, name="virac"), command="test")
"""


@pytest.mark.parametrize("kill_when", ["tiles", "imagery"])
def test_killed_fetch_resumes_byte_identical(shared_data, tmp_path, kill_when):
    city = shared_data / "oam-osm" / "virac-ph"
    bbox = ",".join(repr(v) for v in VIRAC.bounds_lonlat())
    labels = str(city / "osm-buildings.geojson")
    with FaultyTileServer(city / "tiles", fraction=0.0, delay=0.15) as server:
        url = server.template("jpg")
        reference = tmp_path / "reference"
        fetch_dataset(reference, url, labels, bbox=VIRAC.bounds_lonlat(),
                      options=FetchOptions(zoom=21, split_block=1, val_fraction=0.25, connections=2, name="virac"), command="test")
        resumed = tmp_path / "resumed"
        env = {**os.environ, "GEOLABEL_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(resumed), url, labels, bbox], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        try:
            while time.time() < deadline and child.poll() is None:
                if kill_when == "tiles" and len(list(resumed.glob("cache/tiles/*/21/*/*.tile"))) >= 4:
                    break
                if kill_when == "imagery" and (resumed / "imagery.tif").exists():
                    break
                time.sleep(0.02)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL, "the fetch finished before it could be killed"
        assert not (resumed / "manifest.json").exists()
        fetch_dataset(resumed, url, labels, bbox=VIRAC.bounds_lonlat(),
                      options=FetchOptions(zoom=21, split_block=1, val_fraction=0.25, connections=2, name="virac"), command="test")
    for name in OUTPUTS:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    leftovers = [p.name for p in resumed.rglob("*") if p.name.startswith(".") and p.name != ".fetch-state.json" and "cache" not in p.parts]
    assert leftovers == []  # a killed run's temporaries are cleared on resume
