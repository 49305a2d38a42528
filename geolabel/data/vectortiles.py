"""Vector layers (polygons, map-update changes) as one PMTiles v3 archive of vector tiles, for web maps.

A `.pmtiles` file is read by MapLibre, OpenLayers or Leaflet straight from any static file host
(HTTP range requests): no tile server. Tiles are Mapbox Vector Tiles (`mapbox-vector-tile`) on the
Web-Mercator grid of `geolabel.data.tiles` (morecantile's `WebMercatorQuad`), gzip-compressed and
archived by the PMTiles reference writer (`pmtiles`). Each feature is clipped to every tile it
touches plus a buffer (so outlines cut at tile edges draw without seams), keeps its attributes,
and has as MVT feature id its row number in the frame plus one, the same in every tile.
"""

from __future__ import annotations

import gzip
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pandas as pd
import shapely
from mapbox_vector_tile.encoder import on_invalid_geometry_make_valid
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

import geolabel
from geolabel.atomic import atomic_path
from geolabel.data.tiles import WEB_MERCATOR, WEB_MERCATOR_QUAD, Tile, tile_range
from geolabel.errors import InputError

EXTENT = 4096  # MVT units across a tile (the spec's default): ~4 cm at z18
BUFFER = 64  # MVT units of data kept around each tile
MAX_ZOOM = 18  # deepest zoom written by default; web maps overzoom vector tiles beyond it
ZOOM_LEVELS = 5  # zooms written by default, ending at the deepest
MIN_PIXELS = 8  # at the deepest zoom the median feature is at least this many screen pixels across
FIELD_TYPES = {bool: "Boolean", int: "Number", float: "Number", str: "String"}  # TileJSON `vector_layers` names


def default_max_zoom(geoms: np.ndarray) -> int:
    """The deepest zoom worth writing for features in Web-Mercator metres: the first at which the median
    feature spans `MIN_PIXELS` screen pixels, at most `MAX_ZOOM` (0 for no features).

    A screen pixel at zoom z is `cellSize(z)` Web-Mercator metres at every latitude, so the sizes need
    no correction for latitude.
    """
    if not len(geoms):
        return 0
    side = float(np.median(np.sqrt(shapely.area(geoms))))
    return WEB_MERCATOR_QUAD.zoom_for_res(side / MIN_PIXELS, max_z=MAX_ZOOM, zoom_level_strategy="upper")


def write_pmtiles(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike,
    layer: str,
    *,
    attribution: Sequence[str] = (),
    min_zoom: int | None = None,
    max_zoom: int | None = None,
) -> Path:
    """Write `frame` as a PMTiles archive of one vector-tile layer named `layer`; returns `path`.

    Args:
        attribution: credit lines the data needs, shown by web maps (metadata `attribution`).
        min_zoom, max_zoom: zooms written (default: max the features' `default_max_zoom`, min
            `ZOOM_LEVELS` - 1 zooms shallower).

    Tiles exist where features are, from `min_zoom` to `max_zoom`; an empty frame gives one empty
    tile. The archive is written atomically: a failed run leaves no file at `path`.
    """
    if frame.crs is None:
        raise InputError(path, f"the {layer} have no CRS: they cannot be placed on a web map")
    web = frame.to_crs(WEB_MERCATOR)
    present = ~(web.geometry.isna() | web.geometry.is_empty).to_numpy()
    geoms = _top_dimension(shapely.make_valid(web.geometry.to_numpy()[present]))
    ids = np.flatnonzero(present) + 1
    rows, fields = _attributes(web[present].drop(columns=web.geometry.name))
    max_zoom = default_max_zoom(geoms) if max_zoom is None else max_zoom
    min_zoom = max(0, max_zoom - ZOOM_LEVELS + 1) if min_zoom is None else min_zoom
    if not 0 <= min_zoom <= max_zoom <= 30:
        raise InputError(path, f"zooms {min_zoom}..{max_zoom} are not a range within 0..30")
    if len(geoms):
        left, bottom, right, top = shapely.total_bounds(geoms)
        west, south = WEB_MERCATOR_QUAD.lnglat(left, bottom)
        east, north = WEB_MERCATOR_QUAD.lnglat(right, top)
        tiles = list(tile_range((west, south, east, north), min_zoom).tiles())
        fit = max(right - left, top - bottom) / WEB_MERCATOR_QUAD.matrix(0).tileWidth  # all of it in one tile
        center_zoom = WEB_MERCATOR_QUAD.zoom_for_res(fit, min_z=min_zoom, max_z=max_zoom, zoom_level_strategy="lower")
    else:
        (west, south, east, north), tiles, center_zoom = WEB_MERCATOR_QUAD.bbox, [], min_zoom
    tree = shapely.STRtree(geoms)
    header = {"tile_type": TileType.MVT, "tile_compression": Compression.GZIP, "min_zoom": min_zoom,
              "max_zoom": max_zoom, "center_zoom": center_zoom,
              **_e7(min_lon=west, min_lat=south, max_lon=east, max_lat=north,
                    center_lon=(west + east) / 2, center_lat=(south + north) / 2)}
    metadata = {"name": layer, "type": "overlay", "format": "pbf", "generator": f"geolabel {geolabel.__version__}",
                "vector_layers": [{"id": layer, "fields": fields, "minzoom": min_zoom, "maxzoom": max_zoom}],
                **({"attribution": " | ".join(html.escape(line) for line in attribution)} if attribution else {})}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        writer = Writer(file)
        if not len(geoms):  # an archive holds at least one tile
            writer.write_tile(zxy_to_tileid(min_zoom, 0, 0), gzip.compress(_mvt(layer, []), mtime=0))
        for _ in range(min_zoom, max_zoom + 1):
            filled = []
            for tile in sorted(tiles, key=lambda t: zxy_to_tileid(*t)):  # the archive's order: clustered
                data = _encode(tile, tree, geoms, ids, rows, layer)
                if data is not None:
                    writer.write_tile(zxy_to_tileid(*tile), gzip.compress(data, mtime=0))
                    filled.append(tile)
            tiles = [(c.z, c.x, c.y) for z, x, y in filled for c in WEB_MERCATOR_QUAD.children(x, y, z)]
        writer.finalize(header, metadata)
    return Path(path)


def _encode(tile: Tile, tree: shapely.STRtree, geoms: np.ndarray, ids: np.ndarray, rows: list[dict],
            layer: str) -> bytes | None:
    """The MVT of one tile (features clipped to it plus `BUFFER`), or None when no feature touches it."""
    z, x, y = tile
    left, bottom, right, top = WEB_MERCATOR_QUAD.xy_bounds(x, y, z)
    pad = (right - left) * BUFFER / EXTENT
    around = shapely.box(left - pad, bottom - pad, right + pad, top + pad)
    near = np.sort(tree.query(around, predicate="intersects"))
    if not shapely.intersects(geoms[near], shapely.box(left, bottom, right, top)).any():
        return None  # only the buffer holds features: no tile
    parts = _top_dimension(shapely.intersection(geoms[near], around))  # (GEOS' clip_by_rect fails on some polygons)
    units = shapely.transform(parts, lambda xy: np.rint((xy - (left, bottom)) * (EXTENT / (right - left))))
    features = [{"geometry": part, "properties": rows[i], "id": int(ids[i])} for i, part in zip(near, units)]
    return _mvt(layer, features)


def _top_dimension(geoms: np.ndarray) -> np.ndarray:
    """`geoms` with each geometry collection reduced to its parts of highest dimension: a polygon made
    valid or cut at a tile's edge can come with lines or points, which a polygon layer does not hold."""
    geoms = geoms.copy()
    for i in np.flatnonzero(shapely.get_type_id(geoms) == shapely.GeometryType.GEOMETRYCOLLECTION):
        parts = shapely.get_parts(geoms[i])
        geoms[i] = shapely.union_all(parts[shapely.get_dimensions(parts) == shapely.get_dimensions(geoms[i])])
    return geoms


def _mvt(layer: str, features: list[dict]) -> bytes:
    """One MVT layer of features in tile units (0..`EXTENT`, y up)."""
    options = {"extents": EXTENT, "on_invalid_geometry": on_invalid_geometry_make_valid}
    return mapbox_vector_tile.encode({"name": layer, "features": features}, default_options=options)


def _attributes(table: pd.DataFrame) -> tuple[list[dict], dict[str, str]]:
    """(each row's attributes as MVT scalars, missing ones left out: MVT has no null; the `vector_layers`
    type of each column holding any value)."""
    columns = {str(name): [_scalar(v) for v in table[name].tolist()] for name in table.columns}
    rows = [{name: values[i] for name, values in columns.items() if values[i] is not None} for i in range(len(table))]
    fields = {}
    for name, values in columns.items():
        kinds = {FIELD_TYPES[type(v)] for v in values if v is not None}
        if kinds:
            fields[name] = kinds.pop() if len(kinds) == 1 else "Mixed"
    return rows, fields


def _scalar(value: object) -> bool | int | float | str | None:
    """`value` as an MVT/JSON scalar: numpy scalars unwrapped, other objects as text, missing as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT or isinstance(value, float) and math.isnan(value):
        return None
    return value if type(value) in FIELD_TYPES else str(value)


def _e7(**degrees: float) -> dict[str, int]:
    """PMTiles header fields: `NAME_e7` = degrees x 10^7, as integers."""
    return {f"{name}_e7": round(value * 1e7) for name, value in degrees.items()}
