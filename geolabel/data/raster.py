"""Georeferenced raster I/O: windowed reads of any raster, incremental atomic COG writes.

A raster travels as a `GeoBlock` (array + transform + CRS + nodata); large rasters are
read window by window from an open dataset and written window by window, so memory
never has to hold a whole scene.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geolabel.atomic import atomic_path, temporary_prefix
from geolabel.errors import InputError

PathLike = str | os.PathLike


@dataclass
class GeoBlock:
    """A georeferenced block of pixels.

    Args:
        array: pixels as (bands, height, width).
        transform: affine map from pixel (col, row) to CRS coordinates of the block.
        crs: coordinate reference system, None when the source has none.
        nodata: the value that marks missing pixels, or None.
    """

    array: np.ndarray
    transform: Affine
    crs: CRS | None
    nodata: float | None = None

    @property
    def height(self) -> int:
        return int(self.array.shape[-2])

    @property
    def width(self) -> int:
        return int(self.array.shape[-1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        west, south, east, north = rasterio.transform.array_bounds(self.height, self.width, self.transform)
        return west, south, east, north

    def valid_mask(self) -> np.ndarray:
        """Boolean (height, width): True where at least one band holds data."""
        if self.nodata is None:
            return np.ones(self.array.shape[-2:], dtype=bool)
        if np.isnan(self.nodata):
            return ~np.isnan(self.array).all(axis=0)
        return ~(self.array == self.nodata).all(axis=0)


@contextlib.contextmanager
def open_raster(path: PathLike, georeferenced: bool = False) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading; a missing, corrupt or non-raster file raises InputError.

    So does a read of it that fails inside the `with` block (a truncated or damaged file: the
    header opens, the pixels do not). With `georeferenced`, a raster without a CRS or without
    georeferencing is refused: vectors, areas and resolutions cannot be placed on it.
    """
    name = os.fspath(path)
    is_url = "://" in name
    if not is_url and not Path(name).exists():
        raise InputError(name, "no such file")
    if not is_url and Path(name).is_dir():
        raise InputError(name, "is a folder, not a raster file")
    try:
        src = rasterio.open(_gdal_name(name))
    except RasterioError as err:
        raise InputError(name, f"not a readable raster ({_short(err)})") from err
    try:
        if georeferenced and src.crs is None:
            raise InputError(name, "has no CRS (unknown coordinate reference system)")
        if georeferenced and src.transform.is_identity:
            raise InputError(name, "has no georeferencing (identity transform)")
        yield src
    except RasterioError as err:
        if Path(src.name).name not in f"{err} {err.__cause__}":  # GDAL names the file: another's error is not ours
            raise
        raise InputError(name, f"cannot be read: truncated or damaged? ({_short(err.__cause__ or err)})") from err
    finally:
        src.close()


def _gdal_name(name: str) -> str:
    # Remote rasters are read with HTTP range requests through GDAL's /vsicurl/.
    if name.startswith(("http://", "https://")):
        return "/vsicurl/" + name
    return name


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_block(src: rasterio.io.DatasetReader, window: Window | None = None, boundless: bool = False) -> GeoBlock:
    """Read a window (default: everything) of an open dataset as a GeoBlock.

    With `boundless`, pixels outside the raster come back as nodata (0 if none is set).
    """
    window = window or Window(0, 0, src.width, src.height)
    try:
        fill = src.nodata if src.nodata is not None else 0
        array = src.read(window=window, boundless=boundless, fill_value=fill) if boundless else src.read(window=window)
    except RasterioError as err:
        raise InputError(src.name, f"cannot read window {window} ({_short(err)})") from err
    return GeoBlock(array, src.window_transform(window), src.crs, src.nodata)


def read_raster(path: PathLike) -> GeoBlock:
    """Read a whole raster into memory (for small rasters; use windows for big ones)."""
    with open_raster(path) as src:
        return read_block(src)


STREAMING_CACHE_MB = 64
"""GDAL block cache for rasters read or written once, block by block: GDAL's default (5 % of
RAM) would let memory grow with the raster up to that size while caching blocks never read again."""


def streaming_env(cache_mb: int = STREAMING_CACHE_MB) -> rasterio.Env:
    """A rasterio environment with a small GDAL block cache, for streamed whole-raster passes."""
    return rasterio.Env(GDAL_CACHEMAX=int(cache_mb) * 2**20)


def iter_windows(width: int, height: int, size: int) -> Iterator[Window]:
    """Row-major windows of at most `size` x `size` covering a width x height grid."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def ground_pixel_size(transform: Affine, crs, width: int, height: int) -> tuple[float, float]:
    """Ground metres per pixel (x, y) at the raster centre; CRS units as metres without a CRS."""
    sx = math.hypot(transform.a, transform.d)
    sy = math.hypot(transform.b, transform.e)
    if crs is None:
        return sx, sy
    from pyproj import CRS, Geod, Transformer

    crs = CRS.from_user_input(crs)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    geod = Geod(ellps="WGS84")
    cx, cy = width / 2, height / 2
    lon0, lat0 = to_ll.transform(*(transform * (cx, cy)))
    out = []
    for dx, dy in ((1.0, 0.0), (0.0, 1.0)):
        lon1, lat1 = to_ll.transform(*(transform * (cx + dx, cy + dy)))
        out.append(geod.inv(lon0, lat0, lon1, lat1)[2])
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError("transform", f"cannot measure the ground size of a pixel in {crs.to_string()}")
    if crs.is_projected:  # conformal metric grids (UTM...) keep their own units, as the other polygonisers do
        unit = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0
        if abs(out[0] / (sx * unit) - 1) < 0.01 and abs(out[1] / (sy * unit) - 1) < 0.01:
            return sx * unit, sy * unit
    return out[0], out[1]


class RasterWriter:
    """Write a georeferenced raster window by window, finishing as a Cloud-Optimized GeoTIFF.

    Pixels go to a tiled GeoTIFF beside the target (fast ZSTD level 1: it is read back
    once); on a clean exit it is converted, on all cores, to a COG (with overviews) in
    the requested compression and renamed onto `path`. On error nothing
    appears under `path` and an existing file there is left untouched.

    Args:
        path: final file name.
        width, height, count, dtype: raster shape and type.
        crs, transform: georeferencing.
        nodata: nodata value written into the file, or None.
        blocksize: internal tile size (a multiple of 16).
        compress: GDAL compression (deflate, lzw, zstd, jpeg, ...).
        compress_level: deflate/zstd/lzma level (None = GDAL's default: 6 for deflate); ignored by
            compressions without levels.
        tags: dataset-level metadata tags.
        band_descriptions: one name per band.
        colormap: optional {value: (r, g, b[, a])} palette for band 1.
        overview_resampling: resampling for COG overviews (nearest for class rasters).
    """

    def __init__(
        self,
        path: PathLike,
        *,
        width: int,
        height: int,
        count: int,
        dtype: str | np.dtype,
        crs: CRS | str | None,
        transform: Affine,
        nodata: float | None = None,
        blocksize: int = 512,
        compress: str = "deflate",
        compress_level: int | None = None,
        tags: dict[str, str] | None = None,
        band_descriptions: list[str] | None = None,
        colormap: dict[int, tuple[int, ...]] | None = None,
        overview_resampling: str = "nearest",
    ):
        self.path = Path(path)
        self.profile = dict(
            driver="GTiff",
            width=int(width),
            height=int(height),
            count=int(count),
            dtype=np.dtype(dtype).name,
            crs=crs,
            transform=transform,
            nodata=nodata,
            tiled=True,
            blockxsize=blocksize,
            blockysize=blocksize,
            compress="zstd",
            zstd_level=1,
            BIGTIFF="IF_SAFER",
        )
        self.compress = compress
        self.compress_level = compress_level
        self.blocksize = blocksize
        self.tags = tags or {}
        self.band_descriptions = band_descriptions
        self.colormap = colormap
        self.overview_resampling = overview_resampling
        self._dst = None

    def __enter__(self) -> RasterWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, stage = tempfile.mkstemp(prefix=temporary_prefix(self.path), suffix=".stage.tif", dir=self.path.parent)
        os.close(fd)
        self._stage = Path(stage)
        try:
            self._dst = rasterio.open(self._stage, "w", **self.profile)
        except Exception:
            self._stage.unlink(missing_ok=True)
            raise
        if self.tags:
            self._dst.update_tags(**self.tags)
        for i, name in enumerate(self.band_descriptions or [], start=1):
            self._dst.set_band_description(i, name)
        if self.colormap:
            self._dst.write_colormap(1, self.colormap)
        return self

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write (bands, h, w) or (h, w) pixels at `window`."""
        if array.ndim == 2:
            array = array[None]
        self._dst.write(array.astype(self.profile["dtype"], copy=False), window=window)

    def _level_option(self) -> dict[str, int]:
        leveled = self.compress.lower() in ("deflate", "zstd", "lzma", "lerc_deflate", "lerc_zstd")
        return {"LEVEL": self.compress_level} if leveled and self.compress_level is not None else {}

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._dst.close()
            if exc_type is None:
                with atomic_path(self.path) as cog_tmp:
                    rasterio.shutil.copy(
                        self._stage,
                        cog_tmp,
                        driver="COG",
                        COMPRESS=self.compress.upper(),
                        **self._level_option(),
                        BLOCKSIZE=self.blocksize,
                        OVERVIEW_RESAMPLING=self.overview_resampling.upper(),
                        BIGTIFF="IF_SAFER",
                        NUM_THREADS="ALL_CPUS",
                    )
        finally:
            self._stage.unlink(missing_ok=True)


def write_raster(path: PathLike, block: GeoBlock, **options) -> Path:
    """Write a whole GeoBlock as a COG at `path` (atomically); options go to RasterWriter."""
    bands, height, width = block.array.shape
    with RasterWriter(
        path, width=width, height=height, count=bands, dtype=block.array.dtype, crs=block.crs,
        transform=block.transform, nodata=block.nodata, **options,
    ) as writer:
        writer.write(block.array, Window(0, 0, width, height))
    return Path(path)
