"""Areas of interest: a bbox, a vector file, or a place name geocoded through osmnx.

Every AOI is a shapely (multi)polygon in EPSG:4326 plus a description of where it
came from; bad input fails fast with an InputError that names it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from geolabel.errors import InputError

DEFAULT_GEOCODER_URL = "https://nominatim.openstreetmap.org/"


@dataclass(frozen=True)
class AOI:
    """An area of interest in EPSG:4326.

    Args:
        geometry: (multi)polygon in lon/lat.
        source: how it was given ("bbox W,S,E,N", a file path, "place NAME").
    """

    geometry: BaseGeometry
    source: str

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(west, south, east, north)."""
        return tuple(float(v) for v in self.geometry.bounds)

    def to_json(self) -> dict:
        """JSON-able description for manifests."""
        return {"source": self.source, "bbox": list(self.bbox), "geometry": mapping(self.geometry)}


def check_bbox(bbox: tuple[float, float, float, float] | list[float], name: str = "--bbox") -> tuple[float, float, float, float]:
    """Validate an EPSG:4326 (W, S, E, N) box; InputError naming `name` when it is not one."""
    if len(bbox) != 4:
        raise InputError(name, f"needs 4 numbers W,S,E,N, got {len(bbox)}")
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(name, f"{bbox!r} are not numbers") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise InputError(name, "has a non-finite value")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise InputError(name, f"longitudes {west}, {east} are outside -180..180 (is it W,S,E,N in EPSG:4326?)")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise InputError(name, f"latitudes {south}, {north} are outside -90..90 (is it W,S,E,N in EPSG:4326?)")
    if west >= east:
        raise InputError(name, f"west {west} is not less than east {east} (inverted or empty box)")
    if south >= north:
        raise InputError(name, f"south {south} is not less than north {north} (inverted or empty box)")
    return west, south, east, north


def parse_bbox(text: str, name: str = "--bbox") -> tuple[float, float, float, float]:
    """Parse "W,S,E,N" (commas or spaces) and validate it."""
    parts = [p for p in text.replace(",", " ").split() if p]
    return check_bbox(parts, name)


def aoi_from_bbox(bbox: tuple[float, float, float, float] | list[float] | str, name: str = "--bbox") -> AOI:
    """AOI of a W,S,E,N box in EPSG:4326."""
    values = parse_bbox(bbox, name) if isinstance(bbox, str) else check_bbox(bbox, name)
    return AOI(box(*values), "bbox " + ",".join(repr(v) for v in values))


def aoi_from_file(path: str | os.PathLike) -> AOI:
    """AOI as the union of the polygons in a vector file (GeoJSON, GeoPackage, Shapefile, ...)."""
    import geopandas as gpd
    import pyogrio.errors

    name = os.fspath(path)
    if "://" not in name and not Path(name).is_file():
        raise InputError(name, "no such AOI file")
    try:
        frame = gpd.read_file(name)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as err:
        raise InputError(name, f"not a readable vector file ({str(err).splitlines()[0]})") from err
    if frame.crs is None:
        raise InputError(name, "has no CRS (unknown coordinate reference system)")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise InputError(name, "holds no polygon: the AOI is empty")
    geometry = shapely.union_all(shapely.make_valid(frame.to_crs("EPSG:4326").geometry.values))
    if geometry.is_empty or geometry.area == 0:
        raise InputError(name, "the AOI polygons are empty")
    check_bbox(geometry.bounds, name)
    return AOI(geometry, name)


@contextlib.contextmanager
def _osmnx_settings(**values) -> Iterator[None]:
    import osmnx as ox

    old = {k: getattr(ox.settings, k) for k in values}
    try:
        for key, value in values.items():
            setattr(ox.settings, key, value)
        yield
    finally:
        for key, value in old.items():
            setattr(ox.settings, key, value)


def aoi_from_place(place: str, geocoder_url: str | None = None) -> AOI:
    """AOI of a place name, geocoded to its boundary through osmnx (Nominatim at `geocoder_url`)."""
    import osmnx as ox

    if not place or not place.strip():
        raise InputError("--place", "is empty")
    url = geocoder_url or DEFAULT_GEOCODER_URL
    try:
        with _osmnx_settings(nominatim_url=url.rstrip("/") + "/", use_cache=False, log_console=False):
            frame = ox.geocode_to_gdf(place)
    except (ox._errors.InsufficientResponseError, TypeError, ValueError) as err:
        raise InputError(place, f"the geocoder at {url} found no boundary for this place ({err})") from err
    except Exception as err:  # network failures of the geocoder come in many types
        from geolabel.errors import FetchError

        raise FetchError(f"{url}: geocoding {place!r} failed ({err})") from err
    geometry = shapely.union_all(frame.to_crs("EPSG:4326").geometry.values)
    if geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(place, f"the geocoder at {url} returned no area (only a point?)")
    return AOI(geometry, f"place {place}")


def resolve_aoi(bbox=None, aoi: str | os.PathLike | None = None, place: str | None = None, geocoder_url: str | None = None) -> AOI:
    """The AOI from exactly one of `bbox`, `aoi` (file) or `place`."""
    given = [n for n, v in (("--bbox", bbox), ("--aoi", aoi), ("--place", place)) if v is not None]
    if len(given) != 1:
        raise InputError("area of interest", f"give exactly one of --bbox, --aoi, --place (got {', '.join(given) or 'none'})")
    if bbox is not None:
        return aoi_from_bbox(bbox)
    if aoi is not None:
        return aoi_from_file(aoi)
    return aoi_from_place(place, geocoder_url)
