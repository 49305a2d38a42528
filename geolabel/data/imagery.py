"""Imagery from a local or remote (HTTP range requests) GeoTIFF/COG, clipped to an AOI.

The raster is read window by window in its own CRS and grid (any CRS, any band
count, 8 or 16 bit) and written as a COG; pixels outside the AOI polygon become
nodata. 16-bit imagery gets a per-band percentile stretch for uint8 training chips, which a
run records (`InputScaling`) so that predict stretches its input the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import mapping, shape

from geolabel.data.aoi import AOI
from geolabel.data.rasterize import grid_window
from geolabel.data.raster import RasterWriter, iter_windows, open_raster, read_block
from geolabel.errors import InputError
from geolabel.progress import progress


def clip_raster(source: str | os.PathLike, aoi: AOI, out_path: str | os.PathLike, block: int = 2048, compress: str = "deflate") -> dict:
    """Write the part of `source` inside `aoi` as a COG on the source's own grid.

    Returns:
        info for the manifest: source, crs, width, height, bands, dtype, nodata.

    Raises:
        InputError: unreadable raster, no CRS, or no overlap with the AOI.
    """
    name = os.fspath(source)
    with open_raster(name, georeferenced=True) as src:
        if src.dtypes[0] not in ("uint8", "uint16", "int16", "float32"):
            raise InputError(name, f"pixel type {src.dtypes[0]} is not supported (8 or 16 bit, or float32)")
        area = shape(transform_geom("EPSG:4326", src.crs, mapping(aoi.geometry)))
        window = grid_window(src.transform, src.width, src.height, area.bounds)
        if window.width <= 0 or window.height <= 0 or not area.intersects(_raster_box(src)):
            raise InputError(name, f"does not overlap the area of interest ({aoi.source})")
        nodata = src.nodata if src.nodata is not None else 0
        transform = window_transform(window, src.transform)
        with RasterWriter(
            out_path, width=int(window.width), height=int(window.height), count=src.count, dtype=src.dtypes[0],
            crs=src.crs, transform=transform, nodata=nodata, blocksize=512, compress=compress,
            band_descriptions=[d or f"band{i + 1}" for i, d in enumerate(src.descriptions)], overview_resampling="average",
        ) as writer:
            parts = list(iter_windows(int(window.width), int(window.height), block))
            for part in progress(parts, desc="imagery", unit="block"):
                read = Window(window.col_off + part.col_off, window.row_off + part.row_off, part.width, part.height)
                data = read_block(src, read).array
                outside = geometry_mask([mapping(area)], out_shape=data.shape[-2:], transform=window_transform(part, transform))
                if src.nodata is None:
                    # without a source nodata, 0 means missing: lift real zeros so they stay valid
                    data = np.where((data == 0).all(axis=0, keepdims=True), np.ones_like(data), data)
                data[:, outside] = nodata
                writer.write(data, part)
        return {
            "source": name, "crs": src.crs.to_string(), "width": int(window.width), "height": int(window.height),
            "bands": src.count, "dtype": src.dtypes[0], "nodata": nodata,
            "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
        }


def _raster_box(src):
    from shapely.geometry import box

    left, bottom, right, top = src.bounds
    return box(min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def uint8_scaling(path: str | os.PathLike, low: float = 2.0, high: float = 98.0, sample: int = 1024) -> list[tuple[float, float]] | None:
    """Per-band (min, max) for a linear stretch to uint8 (None for 8-bit imagery), from a decimated read."""
    with open_raster(path) as src:
        if src.dtypes[0] == "uint8":
            return None
        scale = max(1, max(src.width, src.height) // sample)
        data = src.read(out_shape=(src.count, max(1, src.height // scale), max(1, src.width // scale)))
        valid = ~(data == src.nodata).all(axis=0) if src.nodata is not None else np.ones(data.shape[1:], bool)
        result = []
        for band in data:
            values = band[valid].astype(np.float64)
            if values.size == 0:
                result.append((0.0, 1.0))
                continue
            lo, hi = np.percentile(values, [low, high])
            result.append((float(lo), float(hi if hi > lo else lo + 1)))
        return result


def to_uint8(array: np.ndarray, scaling: list[tuple[float, float]] | None) -> np.ndarray:
    """(bands, h, w) pixels as uint8 with a per-band linear stretch (unchanged for uint8)."""
    if scaling is None:
        return array.astype(np.uint8, copy=False)
    out = np.empty(array.shape, np.uint8)
    for i, (lo, hi) in enumerate(scaling):
        out[i] = np.clip(np.round((array[i].astype(np.float64) - lo) / (hi - lo) * 254 + 1), 1, 255)
    return out


@dataclass(frozen=True)
class InputScaling:
    """How training chips were made from their imagery, so that predict feeds a model the same pixels.

    Args:
        bands: 1-based imagery band of each model channel; grey imagery (1 or 2 bands) gives
            band 1 to every channel, as decoding its grey chips for an RGB model did.
        stretch: per imagery band, (low, high) of the linear stretch `to_uint8` gave 16-bit
            (or float) imagery; None when the training imagery was 8-bit.
    """

    bands: tuple[int, ...]
    stretch: tuple[tuple[float, float], ...] | None = None

    @classmethod
    def of_datasets(cls, manifests: Sequence[dict], channels: int) -> InputScaling | None:
        """The scaling of training datasets from their manifests (the stretch averaged over the
        16-bit ones); None without manifests or when their band counts differ."""
        counts = {int(m["bands"]) for m in manifests}
        if len(counts) != 1:
            return None
        count = counts.pop()
        bands = tuple(1 if count < 3 else min(c + 1, count) for c in range(channels))
        ranges = [m["chips"]["uint8_scaling"] for m in manifests if m.get("chips", {}).get("uint8_scaling")]
        stretch = tuple(tuple(pair) for pair in np.mean(ranges, axis=0).tolist()) if ranges else None
        return cls(bands, stretch)

    @classmethod
    def from_dict(cls, data: dict) -> InputScaling:
        stretch = data.get("stretch")
        return cls(tuple(data["bands"]), tuple(tuple(p) for p in stretch) if stretch else None)

    def to_dict(self) -> dict:
        return {"bands": list(self.bands), "stretch": [list(p) for p in self.stretch] if self.stretch else None}

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(len(bands), h, w) raw pixels of `bands` as training saw them: 16-bit ones stretched to uint8."""
        if self.stretch is None or pixels.dtype == np.uint8:
            return pixels
        return to_uint8(pixels, [self.stretch[b - 1] for b in self.bands])
