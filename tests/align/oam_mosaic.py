"""Test helper: mosaic a shared OAM city's XYZ tiles into a GeoTIFF (EPSG:3857)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

HALF = 20037508.342789244  # half the Web-Mercator world width, metres


def mosaic(city_dir: Path, zoom: int, out: Path, max_tiles: int | None = None) -> Path:
    """Write the tiles of `city_dir/tiles/zoom` as one RGB GeoTIFF at `out` (missing tiles = 0)."""
    tiles = sorted((int(p.parent.name), int(p.stem)) for p in (city_dir / "tiles" / str(zoom)).glob("*/*.jpg"))
    xs, ys = [t[0] for t in tiles], [t[1] for t in tiles]
    x0, y0 = min(xs), min(ys)
    nx, ny = max(xs) - x0 + 1, max(ys) - y0 + 1
    if max_tiles:
        nx, ny = min(nx, max_tiles), min(ny, max_tiles)
    array = np.zeros((3, ny * 256, nx * 256), np.uint8)
    for x, y in tiles:
        if x - x0 < nx and y - y0 < ny:
            rgb = np.asarray(Image.open(city_dir / "tiles" / str(zoom) / str(x) / f"{y}.jpg").convert("RGB"))
            array[:, (y - y0) * 256 : (y - y0 + 1) * 256, (x - x0) * 256 : (x - x0 + 1) * 256] = rgb.transpose(2, 0, 1)
    size = 2 * HALF / 2**zoom
    transform = Affine(size / 256, 0, -HALF + x0 * size, 0, -size / 256, HALF - y0 * size)
    with rasterio.open(
        out, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=3, dtype="uint8",
        crs="EPSG:3857", transform=transform,
    ) as dst:
        dst.write(array)
    return out
