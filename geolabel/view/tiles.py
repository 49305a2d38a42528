"""Web-Mercator PNG tiles and whole-layer overlays of rasters, read from the COGs by rio-tiler.

rio-tiler does the tile maths, reprojection and overview selection; this module only picks the
bands and colours of each kind of layer: imagery as RGB (non-uint8 stretched between the 2nd and
98th percentiles), classes in their palette with background and nodata transparent, the building
probability as a ramp whose opacity grows with the probability.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from rio_tiler.colormap import cmap
from rio_tiler.errors import NoOverviewWarning, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

from geolabel.classes import IGNORE, ClassMap, building_class
from geolabel.view.layers import Layer

TILE_SIZE = 256


@contextlib.contextmanager
def _reader(path: str | os.PathLike) -> Iterator[Reader]:
    """A rio-tiler reader, quiet about missing overviews (small outputs are fine to tile without)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoOverviewWarning)
        with Reader(str(path)) as reader:
            yield reader


@lru_cache(maxsize=64)
def _style(path: str, kind: str) -> tuple[dict, object]:
    """(read options, colormap or stretch range) of a raster layer, computed once per file."""
    with _reader(path) as reader:
        src = reader.dataset
        if kind == "classes":
            palette = dict(reader.colormap or {}) or ClassMap().colormap()
            palette = {**palette, 0: (0, 0, 0, 0), IGNORE: (0, 0, 0, 0)}
            return {"indexes": 1}, palette
        if kind == "probability":
            names = json.loads(src.tags().get("classes", "[]"))
            band = min(building_class(names) + 1, src.count)
            ramp = cmap.get("magma")
            scale = 1.0 if src.dtypes[band - 1] == "uint8" else 255.0
            return {"indexes": band, "scale": scale}, {v: (*ramp[v][:3], v) for v in range(256)}
        indexes = (1, 2, 3) if src.count >= 3 else (1,)
        if src.dtypes[0] == "uint8":
            return {"indexes": indexes}, None
        stats = reader.statistics(indexes=indexes, max_size=512)
        lows = [s.percentile_2 for s in stats.values()]
        highs = [s.percentile_98 for s in stats.values()]
        return {"indexes": indexes}, (min(lows), max(highs))


def _render(image: ImageData, layer: Layer) -> bytes:
    options, style = _style(str(layer.path), layer.kind)
    if layer.kind == "probability":
        data = np.clip(image.data.astype(np.float32) * options["scale"], 0, 255).astype(np.uint8)
        return ImageData(data, image.mask).render(img_format="PNG", colormap=style)
    if layer.kind == "classes":
        return image.render(img_format="PNG", colormap=style)
    if style is not None:  # stretch non-uint8 imagery
        image.rescale(in_range=(style,))
    return image.render(img_format="PNG")


def tile_png(layer: Layer, z: int, x: int, y: int) -> bytes | None:
    """The PNG of Web-Mercator tile z/x/y of a raster layer, or None outside the raster."""
    options, _ = _style(str(layer.path), layer.kind)
    with _reader(layer.path) as reader:
        try:
            image = reader.tile(x, y, z, tilesize=TILE_SIZE, indexes=options["indexes"])
        except TileOutsideBounds:
            return None
    return _render(image, layer)


def zoom_range(layer: Layer) -> tuple[int, int]:
    """(min, max) Web-Mercator zoom at which the raster has detail to show."""
    with _reader(layer.path) as reader:
        return reader.minzoom, reader.maxzoom


def overlay_png(layer: Layer, max_size: int = 1024) -> tuple[bytes, tuple[float, float, float, float]]:
    """The whole raster as one Web-Mercator PNG (longest side `max_size`) and its WGS84 bounds
    (west, south, east, north): what a self-contained page shows instead of tiles."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    options, _ = _style(str(layer.path), layer.kind)
    with _reader(layer.path) as reader:
        bounds = reader.get_geographic_bounds(CRS.from_epsg(4326))
        image = reader.part(bounds, dst_crs=CRS.from_epsg(3857), bounds_crs=CRS.from_epsg(4326),
                            max_size=max_size, indexes=options["indexes"])
    return _render(image, layer), transform_bounds(image.crs, CRS.from_epsg(4326), *image.bounds)
