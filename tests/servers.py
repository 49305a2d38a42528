"""Loopback test servers: a fault-injecting tile server and a mock Overpass API.

- `FaultyTileServer`: geolabel's TileServer whose handler answers a chosen fraction of
  tiles with 500, 429 (with Retry-After) or a stall longer than the client's timeout
  on their first attempts, then serves them normally. Which tiles fail is a hash of
  the path, so runs are reproducible.
- `MockOverpass`: answers Overpass QL `(south,west,north,east)` bbox queries with the
  real OSM building polygons of a GeoJSON file, as Overpass JSON (`out geom`), with an
  `osm3s.timestamp_osm_base`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from geolabel.data.tileserver import TileRequestHandler, TileServer

OSM_BASE = "2022-06-14T10:21:03Z"
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def tile_server_process(folder: str | Path):
    """geolabel's TileServer in a child process (`python -m geolabel.data.tileserver`); yields its base URL.

    Needed where the client holds the GIL while it waits on the network (GDAL's /vsicurl/
    inside rasterio), which would starve an in-process server thread.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "geolabel.data.tileserver", str(folder)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        url = child.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"tile server process did not start (got {url!r})")
        yield url
    finally:
        child.terminate()
        child.wait(timeout=10)


class _FaultyHandler(TileRequestHandler):
    def do_GET(self, head: bool = False) -> None:
        server = self.server
        path = urlsplit(self.path).path
        with server.lock:
            attempt = server.attempts.get(path, 0)
            server.attempts[path] = attempt + 1
            server.requests += 1
        if server.delay:
            time.sleep(server.delay)
        fault = server.fault_for(path, attempt)
        if fault is not None:
            with server.lock:
                server.faults[fault] = server.faults.get(fault, 0) + 1
        if fault == "500":
            self.send_body(HTTPStatus.INTERNAL_SERVER_ERROR, b"injected failure\n", "text/plain", head)
        elif fault == "429":
            self.send_body(HTTPStatus.TOO_MANY_REQUESTS, b"slow down\n", "text/plain", head, {"Retry-After": str(server.retry_after)})
        elif fault == "timeout":
            time.sleep(server.stall)
            try:
                self.send_body(HTTPStatus.SERVICE_UNAVAILABLE, b"too late\n", "text/plain", head)
            except OSError:
                pass
        else:
            super().do_GET(head)


class FaultyTileServer(TileServer):
    """A TileServer that fails a `fraction` of tiles `failures` times each before serving them.

    Args:
        folder: tile tree root.
        fraction: share of tile paths that misbehave.
        failures: failed attempts per misbehaving path before it succeeds.
        kinds: faults to rotate through ("500", "429", "timeout").
        stall: seconds a "timeout" fault waits before answering.
        retry_after: Retry-After seconds sent with 429.
        delay: seconds every request waits before it is answered (a slow server).
    """

    def __init__(self, folder, fraction: float = 0.3, failures: int = 2, kinds=("500", "429", "timeout"), stall: float = 1.0, retry_after: float = 0, delay: float = 0.0, seed: str = "geolabel"):
        super().__init__(folder, handler=_FaultyHandler)
        httpd = self.httpd
        httpd.lock = threading.Lock()
        httpd.attempts = {}
        httpd.faults = {}
        httpd.requests = 0
        httpd.stall = stall
        httpd.retry_after = retry_after
        httpd.delay = delay

        def fault_for(path: str, attempt: int) -> str | None:
            digest = int(hashlib.sha1(f"{seed}:{path}".encode()).hexdigest(), 16)
            if attempt >= failures or (digest % 10_000) / 10_000 >= fraction:
                return None
            return kinds[(digest // 10_000 + attempt) % len(kinds)]

        httpd.fault_for = fault_for

    @property
    def faults(self) -> dict[str, int]:
        return dict(self.httpd.faults)

    @property
    def requests(self) -> int:
        return self.httpd.requests


def geojson_to_overpass(path: Path, bbox: tuple[float, float, float, float] | None = None) -> list[dict]:
    """Overpass `out geom` way elements for the polygons of a GeoJSON file (osm_id -> way id)."""
    features = json.loads(Path(path).read_text())["features"]
    elements = []
    for i, feature in enumerate(features):
        geometry = feature["geometry"]
        if geometry["type"] != "Polygon":
            continue
        ring = geometry["coordinates"][0]
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        if bbox is not None:
            west, south, east, north = bbox
            if max(lons) < west or min(lons) > east or max(lats) < south or min(lats) > north:
                continue
        osm_id = (feature.get("properties") or {}).get("osm_id") or i + 1
        elements.append({
            "type": "way", "id": int(osm_id),
            "bounds": {"minlat": min(lats), "minlon": min(lons), "maxlat": max(lats), "maxlon": max(lons)},
            "geometry": [{"lat": lat, "lon": lon} for lon, lat in ring],
            "tags": {"building": "yes"},
        })
    return elements


_BBOX = re.compile(r"\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)")


class _OverpassHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        return

    def _answer(self, query: str) -> None:
        self.server.queries.append(query)
        match = _BBOX.search(query)
        if "[out:json]" not in query or match is None:
            body = b"Error: line 1: parse error: this mock understands [out:json] bbox queries only\n"
            self.send_response(HTTPStatus.BAD_REQUEST)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        south, west, north, east = (float(v) for v in match.groups())
        elements = geojson_to_overpass(self.server.geojson, (west, south, east, north)) if '"building"' in query else []
        payload = {
            "version": 0.6, "generator": "geolabel test mock Overpass",
            "osm3s": {"timestamp_osm_base": OSM_BASE, "copyright": "The data included in this document is from www.openstreetmap.org. The data is made available under ODbL."},
            "elements": elements,
        }
        body = json.dumps(payload).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(parse_qs(urlsplit(self.path).query).get("data", [""])[0])

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        self._answer(form.get("data", [""])[0])


class MockOverpass:
    """Mock Overpass API on 127.0.0.1 (`port` 0: any free one) serving the buildings of `geojson`; `url` is its interpreter."""

    def __init__(self, geojson: str | Path, port: int = 0):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _OverpassHandler)
        self.httpd.daemon_threads = True
        self.httpd.geojson = Path(geojson)
        self.httpd.queries = []
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/api/interpreter"

    @property
    def queries(self) -> list[str]:
        return list(self.httpd.queries)

    def __enter__(self) -> MockOverpass:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self._thread.join()
        self.httpd.server_close()


class _WmsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        return

    def do_GET(self) -> None:
        import io

        import numpy as np
        import rasterio
        from PIL import Image
        from rasterio.windows import Window

        query = {k.upper(): v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if query.get("REQUEST", "").lower() != "getmap" or query.get("CRS", query.get("SRS", "")).upper() != "EPSG:3857":
            self.send_error(HTTPStatus.BAD_REQUEST, "GetMap in EPSG:3857 only")
            return
        left, bottom, right, top = (float(v) for v in query["BBOX"].split(","))
        width, height = int(query["WIDTH"]), int(query["HEIGHT"])
        with rasterio.open(self.server.raster) as src:
            col, row = ~src.transform * (left, top)
            col2, row2 = ~src.transform * (right, bottom)
            window = Window(round(col), round(row), round(col2) - round(col), round(row2) - round(row))
            data = src.read(window=window, out_shape=(src.count, height, width), boundless=True, fill_value=0)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(data.transpose(1, 2, 0))).save(buffer, format="PNG")
        body = buffer.getvalue()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RasterWms:
    """A minimal WMS 1.3.0 GetMap server on 127.0.0.1 rendering from an RGB GeoTIFF in EPSG:3857.

    `template` is a geolabel WMS tile template for it.
    """

    def __init__(self, raster: str | Path):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _WmsHandler)
        self.httpd.daemon_threads = True
        self.httpd.raster = str(raster)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def template(self) -> str:
        host, port = self.httpd.server_address[:2]
        return (f"http://{host}:{port}/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=image&STYLES=&CRS=EPSG:3857"
                "&BBOX={bbox-epsg-3857}&WIDTH={width}&HEIGHT={height}&FORMAT=image/png")

    def __enter__(self) -> RasterWms:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self._thread.join()
        self.httpd.server_close()
