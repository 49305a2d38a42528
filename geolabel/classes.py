"""Semantic classes: ids, names, display colours, and the OSM tags that feed them."""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = 255  # label value for "unknown" (imagery nodata, outside the AOI)


@dataclass(frozen=True)
class ClassMap:
    """The classes a dataset or model uses; id 0 is always background.

    Args:
        names: class names by id, background first.
        colors: RGB display colour per class.
    """

    names: tuple[str, ...] = ("background", "building")
    colors: tuple[tuple[int, int, int], ...] = field(default=((0, 0, 0), (230, 25, 75)))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Id of class `name`."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r}; classes are {', '.join(self.names)}") from None

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GeoTIFF palette for class rasters (ignore shown transparent)."""
        palette = {i: (*c, 255) for i, c in enumerate(self.colors)}
        palette[IGNORE] = (0, 0, 0, 0)
        return palette


BUILDINGS = ClassMap()
BUILDINGS_ROADS = ClassMap(("background", "building", "road"), ((0, 0, 0), (230, 25, 75), (255, 225, 25)))
