"""XYZ/TMS/WMS tile sources: tile ranges, a disk tile cache, and block-wise mosaics.

The Web-Mercator tile geometry (bounds, quadkeys, the tile under a point) is morecantile's
`WebMercatorQuad` TileMatrixSet, the grid rio-tiler serves `geolabel view` tiles on.

A tile source is a URL template. Placeholders: `{z}`, `{x}`, `{y}` (XYZ, Google scheme),
`{-y}` (TMS, flipped rows), `{s}` (subdomain, chosen from `subdomains` by tile), `{q}`
(Bing quadkey), and for WMS GetMap `{bbox-epsg-3857}` (the tile's bounds in EPSG:3857,
`minx,miny,maxx,maxy`) with `{width}`/`{height}`; a WMS template needs no z/x/y.

Tiles are fetched concurrently into a cache folder (one file per tile, written
atomically; a 404 leaves a `.missing` marker), so a re-run downloads only what is
not on disk yet. A tile enters the cache only once it decodes to a full-size image
(a 200 answer with a cut JPEG or an HTML page is retried instead), and a bad tile
found in the cache is dropped and fetched again, so one bad answer cannot poison
every later run. The mosaic is an RGB GeoTIFF/COG in EPSG:3857 whose transform is
exactly the Web-Mercator geometry of the tile range; missing tiles are nodata (0).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import morecantile
import numpy as np
from affine import Affine
from morecantile.models import LL_EPSILON
from PIL import Image, UnidentifiedImageError
from rasterio.windows import Window

from geolabel.atomic import write_bytes_atomic
from geolabel.data.http import HttpClient
from geolabel.data.raster import RasterWriter
from geolabel.errors import FetchError, InputError
from geolabel.progress import logger, progress

WEB_MERCATOR = "EPSG:3857"
WEB_MERCATOR_QUAD = morecantile.tms.get("WebMercatorQuad")  # the XYZ grid of web maps (OGC TileMatrixSet)
TILE_BYTES = 24_000  # mean size of a 256 px aerial JPEG tile (the OpenAerialMap tiles at z19-z21: 19-29 kB)

Tile = tuple[int, int, int]  # (z, x, y), XYZ scheme


@dataclass(frozen=True)
class TileRange:
    """An inclusive rectangle of tiles at one zoom: columns x0..x1, rows y0..y1 (XYZ scheme)."""

    z: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def columns(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def rows(self) -> int:
        return self.y1 - self.y0 + 1

    def __len__(self) -> int:
        return self.columns * self.rows

    def tiles(self) -> Iterator[Tile]:
        """Tiles row by row (north to south, west to east)."""
        for y in range(self.y0, self.y1 + 1):
            for x in range(self.x0, self.x1 + 1):
                yield (self.z, x, y)

    def bounds_3857(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in EPSG:3857 metres."""
        left, _, _, top = WEB_MERCATOR_QUAD.xy_bounds(self.x0, self.y0, self.z)
        _, bottom, right, _ = WEB_MERCATOR_QUAD.xy_bounds(self.x1, self.y1, self.z)
        return left, bottom, right, top

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in EPSG:4326."""
        west, north = WEB_MERCATOR_QUAD.ul(self.x0, self.y0, self.z)
        east, south = WEB_MERCATOR_QUAD.lr(self.x1, self.y1, self.z)
        return west, south, east, north

    def transform(self, tile_px: int = 256) -> Affine:
        """The exact pixel -> EPSG:3857 transform of a mosaic of this range."""
        left, _, _, top = self.bounds_3857()
        matrix = WEB_MERCATOR_QUAD.matrix(self.z)
        res = matrix.cellSize * matrix.tileWidth / tile_px
        return Affine(res, 0.0, left, 0.0, -res, top)


def tile_range(bbox: tuple[float, float, float, float], z: int) -> TileRange:
    """The tiles at zoom `z` that cover an EPSG:4326 bbox (W, S, E, N); edges on a tile
    boundary do not pull in the neighbouring tile (morecantile's `tiles` rule, without
    listing the tiles: a job may hold millions)."""
    if not 0 <= z <= 30:
        raise InputError("zoom", f"{z} is not a zoom level in 0..30")
    west, south, east, north = bbox
    nw = WEB_MERCATOR_QUAD.tile(west + LL_EPSILON, north - LL_EPSILON, z, truncate=True)
    se = WEB_MERCATOR_QUAD.tile(east - LL_EPSILON, south + LL_EPSILON, z, truncate=True)
    return TileRange(z, nw.x, nw.y, max(se.x, nw.x), max(se.y, nw.y))


def download_bytes(trange: TileRange, tile_px: int = 256) -> int:
    """Rough download size of a tile range (`TILE_BYTES` per 256 px tile, scaled by tile area),
    to size a job before it starts."""
    return round(len(trange) * TILE_BYTES * (tile_px / 256) ** 2)


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_KNOWN = {"z", "x", "y", "-y", "s", "q", "bbox-epsg-3857", "width", "height"}


@dataclass(frozen=True)
class TileTemplate:
    """A tile URL template (see the module docstring for the placeholders).

    Args:
        url: the template.
        subdomains: values of `{s}`, picked per tile deterministically.
        tile_px: side of a tile in pixels (also `{width}`/`{height}` for WMS).
    """

    url: str
    subdomains: tuple[str, ...] = ("a", "b", "c")
    tile_px: int = 256

    def __post_init__(self) -> None:
        names = set(_PLACEHOLDER.findall(self.url))
        unknown = names - _KNOWN
        if unknown:
            raise InputError(self.url, f"unknown placeholder(s) {', '.join('{' + n + '}' for n in sorted(unknown))}")
        if not self.is_wms and not ({"z", "x"} <= names and names & {"y", "-y"}) and "q" not in names:
            raise InputError(self.url, "a tile URL template needs {z}, {x} and {y} (or {-y} for TMS, {q}, or {bbox-epsg-3857} for WMS)")
        if "s" in names and not self.subdomains:
            raise InputError(self.url, "uses {s} but no subdomains were given")
        if self.tile_px <= 0 or self.tile_px % 16:
            raise InputError("tile size", f"{self.tile_px} is not a positive multiple of 16")

    @property
    def is_wms(self) -> bool:
        return "{bbox-epsg-3857}" in self.url

    def url_for(self, z: int, x: int, y: int) -> str:
        """The URL of one tile."""
        values = {
            "z": str(z),
            "x": str(x),
            "y": str(y),
            "-y": str(2**z - 1 - y),
            "s": self.subdomains[(x + y) % len(self.subdomains)] if self.subdomains else "",
            "q": WEB_MERCATOR_QUAD.quadkey(x, y, z),
            "width": str(self.tile_px),
            "height": str(self.tile_px),
            "bbox-epsg-3857": ",".join(repr(v) for v in WEB_MERCATOR_QUAD.xy_bounds(x, y, z)),
        }
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.url)

    @property
    def key(self) -> str:
        """Short stable id of this source, used to name its cache folder."""
        return hashlib.sha1(f"{self.url}|{self.tile_px}".encode()).hexdigest()[:16]


class TileCache:
    """Tiles on disk: `folder/{z}/{x}/{y}.tile` (raw bytes as served) or `{y}.missing` (404).

    Args:
        folder: cache root of ONE tile source (see `TileTemplate.key`).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _base(self, tile: Tile) -> Path:
        z, x, y = tile
        return self.folder / str(z) / str(x) / str(y)

    def path(self, tile: Tile) -> Path:
        """The file holding a tile's bytes (named in errors about them)."""
        return self._base(tile).with_suffix(".tile")

    def status(self, tile: Tile) -> str | None:
        """"tile", "missing", or None when not fetched yet."""
        if self.path(tile).exists():
            return "tile"
        if self._base(tile).with_suffix(".missing").exists():
            return "missing"
        return None

    def get(self, tile: Tile) -> bytes | None:
        """Cached bytes of a tile, or None (missing or not fetched)."""
        path = self.path(tile)
        return path.read_bytes() if path.exists() else None

    def put(self, tile: Tile, data: bytes | None) -> None:
        """Store a tile's bytes, or None to record that the server has no such tile."""
        if data is None:
            write_bytes_atomic(self._base(tile).with_suffix(".missing"), b"")
        else:
            write_bytes_atomic(self.path(tile), data)

    def drop(self, tile: Tile) -> None:
        """Forget a tile's bytes, so that it is fetched again."""
        self.path(tile).unlink(missing_ok=True)


class TileFolder:
    """A local XYZ tile tree `folder/{z}/{x}/{y}.jpg|jpeg|png|webp` (e.g. an OAM export), read as a `TileCache` is."""

    SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _candidates(self, tile: Tile) -> list[Path]:
        z, x, y = tile
        base = self.folder / str(z) / str(x) / str(y)
        return [base.with_suffix(s) for s in self.SUFFIXES]

    def path(self, tile: Tile) -> Path:
        """The file holding a tile (named in errors about it)."""
        candidates = self._candidates(tile)
        return next((p for p in candidates if p.is_file()), candidates[0])

    def get(self, tile: Tile) -> bytes | None:
        for path in self._candidates(tile):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        return None


def _decode(data: bytes, tile_px: int) -> np.ndarray:
    """(3, tile_px, tile_px) uint8 RGB of tile bytes; ValueError saying why they are not such a tile."""
    if not data:
        raise ValueError("empty tile")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"not an image tile (starts {data[:32]!r})") from None
    with image:
        try:
            image.load()
        except (OSError, SyntaxError) as err:  # PIL raises SyntaxError for some broken PNGs
            raise ValueError(f"truncated or corrupt image tile ({err})") from None
        alpha = None
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = np.asarray(image.convert("RGBA"))
            rgb, alpha = rgba[..., :3], rgba[..., 3]
        else:
            rgb = np.asarray(image.convert("RGB"))
    if rgb.shape[:2] != (tile_px, tile_px):
        raise ValueError(f"tile is {rgb.shape[1]}x{rgb.shape[0]} px, expected {tile_px}x{tile_px} (set the tile size)")
    if alpha is not None:
        rgb = np.where((alpha == 0)[..., None], 0, rgb)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def tile_problem(data: bytes, tile_px: int) -> str | None:
    """Why `data` is not a usable `tile_px` tile (cut short, not an image, wrong size), or None."""
    try:
        _decode(data, tile_px)
    except ValueError as err:
        return str(err)
    return None


def fetch_tiles(
    template: TileTemplate,
    tiles: Iterable[Tile],
    cache: TileCache,
    client: HttpClient,
    total: int | None = None,
) -> dict[str, int]:
    """Download every tile not yet in `cache` (concurrently, with retries).

    `tiles` is consumed lazily (a generator over millions of tiles holds no list of them);
    `total` only sizes the progress bar. A downloaded tile is cached only if it decodes to
    `template.tile_px` pixels; a cached tile that does not is dropped and fetched again.

    Returns:
        counts: {"cached": already on disk, "fetched": downloaded now, "missing": 404 in all}.
    """
    counts = {"cached": 0, "fetched": 0, "missing": 0}

    def check(data: bytes) -> str | None:
        return tile_problem(data, template.tile_px)

    def one(tile: Tile) -> tuple[bool, bool]:
        """(was already cached, the server has it)."""
        data = cache.get(tile)
        if data is not None:
            problem = check(data)
            if problem is None:
                return True, True
            logger.warning("%s: %s; dropped, fetching it again", cache.path(tile), problem)
            cache.drop(tile)
        elif cache.status(tile) == "missing":
            return True, False
        data = client.get_bytes(template.url_for(*tile), check=check)
        cache.put(tile, data)
        return False, data is not None

    for cached, found in progress(client.map(one, tiles), desc="tiles", total=total, unit="tile"):
        counts["cached" if cached else "fetched"] += 1
        counts["missing"] += not found
    return counts


def read_tiles(tiles: TileCache | TileFolder, trange: TileRange, tile_px: int = 256, source: str = "tile",
               rows: range | None = None, columns: range | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The tiles of `trange` (or its `rows` x `columns`, offsets in tiles) as one (3, H, W) uint8 RGB array,
    absent tiles 0, and the (rows, columns) boolean grid of the tiles present.

    Transparent pixels become 0 (nodata), a grey tile is expanded to RGB; a tile that is not an image of
    `tile_px` pixels is a FetchError naming its file.
    """
    rows = rows if rows is not None else range(trange.rows)
    columns = columns if columns is not None else range(trange.columns)
    array = np.zeros((3, len(rows) * tile_px, len(columns) * tile_px), np.uint8)
    present = np.zeros((len(rows), len(columns)), bool)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            tile = (trange.z, trange.x0 + c, trange.y0 + r)
            data = tiles.get(tile)
            if data is None:
                continue
            present[i, j] = True
            try:
                array[:, i * tile_px : (i + 1) * tile_px, j * tile_px : (j + 1) * tile_px] = _decode(data, tile_px)
            except ValueError as err:  # named only when it fails: a folder's path costs a look-up per suffix
                raise FetchError(f"{tiles.path(tile)} (tile {tile} of {source}): {err}") from None
    return array, present


def mosaic_tiles(
    tiles: TileCache | TileFolder,
    trange: TileRange,
    path: str | os.PathLike,
    tile_px: int = 256,
    block_tiles: int = 8,
    compress: str = "deflate",
    tags: dict[str, str] | None = None,
    source: str = "tile",
) -> dict[str, int]:
    """Write the tiles of `trange` as an RGB COG in EPSG:3857 (nodata 0), block by block.

    Memory holds one block of `block_tiles` x `block_tiles` tiles at a time.

    Returns:
        counts: {"tiles": tiles present, "missing": tiles absent (nodata)}.
    """
    width, height = trange.columns * tile_px, trange.rows * tile_px
    blocksize = 512 if tile_px % 512 == 0 or 512 % tile_px == 0 else tile_px
    counts = {"tiles": 0, "missing": 0}
    with RasterWriter(
        path, width=width, height=height, count=3, dtype="uint8", crs=WEB_MERCATOR, transform=trange.transform(tile_px),
        nodata=0, blocksize=blocksize, compress=compress, tags=tags, band_descriptions=["red", "green", "blue"],
        overview_resampling="average",
    ) as writer:
        blocks = ((r, c) for r in range(0, trange.rows, block_tiles) for c in range(0, trange.columns, block_tiles))
        total = math.ceil(trange.rows / block_tiles) * math.ceil(trange.columns / block_tiles)
        for r, c in progress(blocks, desc="mosaic", total=total, unit="block"):
            rows, columns = range(r, min(r + block_tiles, trange.rows)), range(c, min(c + block_tiles, trange.columns))
            block, present = read_tiles(tiles, trange, tile_px, source, rows, columns)
            counts["tiles"] += int(present.sum())
            counts["missing"] += int(present.size - present.sum())
            writer.write(block, Window(c * tile_px, r * tile_px, len(columns) * tile_px, len(rows) * tile_px))
    return counts


def local_tile_range(folder: str | os.PathLike, z: int) -> TileRange:
    """The extent of the tiles present in a local `folder/{z}/{x}/{y}.ext` tree (XYZ scheme)."""
    root = Path(folder) / str(z)
    if not root.is_dir():
        raise InputError(root, "no such tile folder")
    xs, ys = [], []
    for column in root.iterdir():
        if column.is_dir() and column.name.isdigit():
            for tile in column.iterdir():
                stem = tile.name.split(".")[0]
                if stem.isdigit():
                    xs.append(int(column.name))
                    ys.append(int(stem))
    if not xs:
        raise InputError(root, "holds no tiles")
    return TileRange(z, min(xs), min(ys), max(xs), max(ys))
