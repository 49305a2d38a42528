"""Vectorisation: class rasters -> georeferenced polygons with class, area and confidence.

`POLYGONIZERS` maps a name to a function `(classes (h, w), transform, crs, probabilities
(K, h, w) | None, *, class_map, min_area, ...) -> GeoDataFrame[class, area, confidence,
geometry]`. Entries are imported on first use, so registering a heavy polygoniser costs
nothing to those who do not use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

_ENTRIES: dict[str, str] = {
    "dp": "geolabel.vectorize.polygons:dp_polygons",
    "regularized": "geolabel.vectorize.polygons:regularized_polygons",
    "mesh": "geolabel.vectorize.mesh:mesh_polygons",
    "polycnn": "geolabel.vectorize.polycnn.inference:polygonize_polycnn",
}


class _Registry(Mapping[str, Callable]):
    """Name -> polygoniser; values given as "module:function" are imported when looked up."""

    def __init__(self, entries: dict[str, str | Callable]):
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Callable:
        value = self._entries[name]
        if isinstance(value, str):
            module, attr = value.split(":")
            value = self._entries[name] = getattr(importlib.import_module(module), attr)
        return value

    def __setitem__(self, name: str, value: str | Callable) -> None:
        self._entries[name] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


POLYGONIZERS = _Registry(_ENTRIES)


def __getattr__(name: str):
    # convenience re-exports without importing geopandas at package import
    if name in ("dp_polygons", "regularized_polygons", "polygonize_raster", "write_polygons", "regularize_polygon"):
        return getattr(importlib.import_module("geolabel.vectorize.polygons"), name)
    raise AttributeError(name)


__all__ = ["POLYGONIZERS"]
