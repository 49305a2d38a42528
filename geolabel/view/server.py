"""The local web map server of `geolabel view` (loopback by default).

Routes: `/` the page, `/static/...` the vendored Leaflet and the viewer's own script,
`/tiles/LAYER/Z/X/Y.png` raster tiles rendered from the COGs, `/vectors/LAYER.geojson` a vector
layer in EPSG:4326. Built on `geolabel.data.tileserver` (threads, lifecycle, static files).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from urllib.parse import urlsplit

from geolabel.data.tileserver import TileRequestHandler, TileServer
from geolabel.view.layers import Collection, vector_geojson
from geolabel.view.page import STATIC, page_html
from geolabel.view.tiles import tile_png

TILE_ROUTE = re.compile(r"^/tiles/(\d+)/(\d+)/(\d+)/(\d+)\.png$")
VECTOR_ROUTE = re.compile(r"^/vectors/(\d+)\.geojson$")


class ViewRequestHandler(TileRequestHandler):
    """The page, tiles and vectors of `server.collection`; static files under `/static/`."""

    def resolve(self):
        """Only files under /static/ are served from the package's view folder."""
        return super().resolve() if urlsplit(self.path).path.startswith("/static/") else None

    def do_GET(self, head: bool = False) -> None:
        path = urlsplit(self.path).path
        layers = self.server.collection.layers
        if path in ("/", "/index.html"):
            self.send_body(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8", head)
        elif match := TILE_ROUTE.match(path):
            index, z, x, y = (int(v) for v in match.groups())
            png = tile_png(layers[index], z, x, y) if index < len(layers) and layers[index].is_raster else None
            if png is None:
                self.send_body(HTTPStatus.NOT_FOUND, b"no such tile\n", "text/plain", head)
            else:
                self.send_body(HTTPStatus.OK, png, "image/png", head, {"Cache-Control": "no-cache"})
        elif match := VECTOR_ROUTE.match(path):
            index = int(match.group(1))
            if index < len(layers) and not layers[index].is_raster:
                cache = self.server.vectors  # read once; concurrent first reads just compute it twice
                if index not in cache:
                    cache[index] = json.dumps(vector_geojson(layers[index])).encode()
                self.send_body(HTTPStatus.OK, cache[index], "application/geo+json", head)
            else:
                self.send_body(HTTPStatus.NOT_FOUND, b"no such vector layer\n", "text/plain", head)
        else:
            super().do_GET(head)


class ViewServer(TileServer):
    """Serve the web map of `collection` on `host:port` (0: a free port).

    Example:
        with ViewServer(collect_layers(["pred/"])) as server:
            print(server.url)
    """

    def __init__(self, collection: Collection, host: str = "127.0.0.1", port: int = 0):
        super().__init__(STATIC.parent, host, port, ViewRequestHandler)
        self.httpd.collection = collection
        self.httpd.page = page_html(collection).encode("utf-8")
        self.httpd.vectors = {}
