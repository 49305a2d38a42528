"""Cloud-Optimized GeoTIFF validation for the tests: rio-cogeo's validator (Development Seed).

rio-cogeo 7.0.4 reports an image or overview whose width equals its block width (tiled, but one
block wide, e.g. a 512 x 2368 overview) as not tiled: it compares the block width with the width
(as rasterio's `tiled` flag does) instead of reading the TIFF's tiling. Those messages are dropped
where the blocks are square tiles (strips are as wide as the image and a few rows high); every
other check (IFD layout and offsets, ghost headers, overviews, block order) is rio-cogeo's.
"""

from __future__ import annotations

import os
import re

import rasterio
from rio_cogeo.cogeo import cog_validate

NOT_TILED = "The file is greater than 512xH or 512xW, but is not tiled"
OVERVIEW_NOT_TILED = re.compile(r"Overview of index (\d+) is not tiled")


def _square_tiles(path: str | os.PathLike, overview: int | None = None) -> bool:
    with rasterio.open(path, **({} if overview is None else {"OVERVIEW_LEVEL": overview})) as src:
        rows, cols = src.block_shapes[0]
        return rows == cols < src.height


def cog_problems(path: str | os.PathLike) -> list[str]:
    """rio-cogeo's errors for `path` (an empty list: a valid COG)."""
    _, errors, _ = cog_validate(path, quiet=True)
    kept = []
    for error in errors:
        overview = OVERVIEW_NOT_TILED.fullmatch(error)
        if (error == NOT_TILED and _square_tiles(path)) or (overview and _square_tiles(path, int(overview[1]))):
            continue
        kept.append(error)
    return kept
