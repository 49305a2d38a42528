"""A small static XYZ tile server over a folder of `{z}/{x}/{y}.{ext}` tiles.

Also answers single HTTP range requests, so a GeoTIFF/COG in the folder can be read
remotely (GDAL's /vsicurl/).

Serves on 127.0.0.1 by default (the demo serves the bundled tiles with it, tests use
it as a real tile source). Only files under the folder are served; anything else is
404. Runs in a background thread as a context manager, or in the foreground with
`serve_forever`.
"""

from __future__ import annotations

import mimetypes
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from geolabel.errors import InputError

TILE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".pbf": "application/x-protobuf"}


class TileRequestHandler(BaseHTTPRequestHandler):
    """Serve files under `server.root`; 404 for anything outside it or absent."""

    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid delayed-ACK stalls

    def log_message(self, format: str, *args) -> None:  # quiet: tile servers log a line per tile
        return

    def resolve(self) -> Path | None:
        """The file this request names, or None."""
        parts = [p for p in unquote(urlsplit(self.path).path).split("/") if p]
        if not parts or any(p in (".", "..") or "\\" in p for p in parts):
            return None
        path = self.server.root.joinpath(*parts)
        try:
            path.resolve().relative_to(self.server.root)
        except ValueError:
            return None
        return path if path.is_file() else None

    def send_body(self, status: int, body: bytes, content_type: str, head: bool = False, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self, head: bool = False) -> None:
        path = self.resolve()
        if path is None:
            self.send_body(HTTPStatus.NOT_FOUND, b"no such tile\n", "text/plain", head)
            return
        content_type = TILE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = path.read_bytes()
        headers = {"Cache-Control": "public, max-age=86400", "Accept-Ranges": "bytes"}
        wanted = _byte_range(self.headers.get("Range"), len(data))
        if wanted is None:
            self.send_body(HTTPStatus.OK, data, content_type, head, headers)
        elif wanted == "unsatisfiable":
            self.send_body(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", content_type, head, {"Content-Range": f"bytes */{len(data)}"})
        else:
            start, end = wanted
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self.send_body(HTTPStatus.PARTIAL_CONTENT, data[start : end + 1], content_type, head, headers)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)


def _byte_range(header: str | None, size: int):
    """(first, last) byte of a single `Range: bytes=...` request, "unsatisfiable", or None (whole file)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes="):].strip().partition("-")
    try:
        if first == "":
            count = int(last)
            return (max(0, size - count), size - 1) if count > 0 and size else "unsatisfiable"
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start <= end and start < size else "unsatisfiable"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    root: Path


class TileServer:
    """Serve a folder of XYZ tiles over HTTP.

    Args:
        folder: the tile tree root (holds `{z}/{x}/{y}.ext`).
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one.
        handler: request handler class (subclass `TileRequestHandler` to customise).

    Example:
        with TileServer("tiles") as server:
            print(server.template("jpg"))  # http://127.0.0.1:PORT/{z}/{x}/{y}.jpg
    """

    def __init__(self, folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, handler: type[TileRequestHandler] = TileRequestHandler):
        root = Path(folder)
        if not root.is_dir():
            raise InputError(folder, "tile folder does not exist")
        self.root = root.resolve()
        self.httpd = _Server((host, port), handler)
        self.httpd.root = self.root
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def template(self, ext: str = "jpg") -> str:
        """The XYZ URL template of the served tiles."""
        return f"{self.url}/{{z}}/{{x}}/{{y}}.{ext}"

    def start(self) -> TileServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="geolabel-tileserver", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> TileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m geolabel.data.tileserver FOLDER [--port N] [--host H]`: serve until interrupted.

    Prints the base URL on the first line of stdout (useful with --port 0).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m geolabel.data.tileserver", description="Serve a folder of XYZ tiles over HTTP.")
    parser.add_argument("folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = TileServer(args.folder, host=args.host, port=args.port)
    print(server.url, flush=True)
    print(f"tiles: {server.template('<ext>')}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
