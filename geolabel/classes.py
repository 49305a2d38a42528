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


def building_class(names: ClassMap | tuple[str, ...] | list[str] | None) -> int:
    """Id of the building class: the class named "building", else 1 (the first foreground class)."""
    names = tuple(names.names if isinstance(names, ClassMap) else names or ())
    return names.index("building") if "building" in names else 1


# display colours of the map-update statuses (`geolabel.mapupdate.diff.STATUSES`): previews and `geolabel view`
STATUS_COLORS = {"new": (60, 180, 75), "missing": (230, 25, 75), "shifted": (255, 225, 25), "unchanged": (0, 130, 200)}

BUILDINGS = ClassMap()
BUILDINGS_ROADS = ClassMap(("background", "building", "road"), ((0, 0, 0), (230, 25, 75), (255, 225, 25)))
