"""Polygons from a class raster, block by block, merged exactly across block seams.

Each block's 4-connected regions of one class become polygons on pixel edges (holes
kept). Pixel-edge outlines of the pieces of one object cut by a seam share the seam
exactly, so the pieces are found by their shared edge and unioned before anything is
simplified: no building is split or duplicated by the block grid. Then: minimum
area, Douglas-Peucker with a tolerance in metres, and (for "regularized") right-angle
regularisation of building outlines: edges within a tolerance of the building's
dominant orientation (or its perpendicular) are snapped to it and neighbouring
parallel edges merged, the result kept only where it stays close to the mask.

Attributes per polygon: `class` (name), `area` (square metres on the ground) and
`confidence` (mean probability of its class over its pixels; NaN without probabilities).
Lengths and areas are metres: the CRS's own units when it is a metric projection whose
scale is within 1 % of true (UTM, national grids), geodesic ground metres otherwise
(Web Mercator away from the equator; geographic CRSs are worked on in UTM).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

from geolabel.classes import IGNORE, ClassMap, building_class
from geolabel.data.raster import ground_pixel_size, iter_windows, streaming_env
from geolabel.data.vectors import write_vectors
from geolabel.errors import InputError
from geolabel.progress import logger, progress
from geolabel.vectorize.separate import DEFAULT_MIN_CONFIDENCE

DEFAULT_TOLERANCE = 0.5
"""Default Douglas-Peucker tolerance, metres."""
DEFAULT_BLOCK = 2048
"""Default block side in pixels."""
_HALF_PI = math.pi / 2


@dataclass
class _Piece:
    cls: int
    pixels: int
    prob_sum: float
    geom: shapely.Geometry  # pixel coordinates of the whole raster (x = col, y = row)
    on_seam: bool


# --------------------------------------------------------------------------- raw polygons per block


def raster_block_pieces(classes: np.ndarray, probs: np.ndarray | None, row0: int, col0: int, skip: set[int],
                        seams: tuple[bool, bool, bool, bool]) -> list[_Piece]:
    """Pixel-edge polygons of every 4-connected region of a block, in raster pixel coordinates.

    `seams` says which block sides (top, bottom, left, right) are block seams, not raster edges.
    """
    h, w = classes.shape
    ids = np.zeros((h, w), np.int32)
    meta: list[tuple[int, int, float]] = []
    offset = 0
    for cls in np.unique(classes).tolist():
        if cls in skip:
            continue
        comp, n = ndimage.label(classes == cls)
        inside = comp > 0
        ids[inside] = comp[inside] + offset
        counts = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        if probs is not None and cls < probs.shape[0]:
            sums = np.bincount(comp.ravel(), weights=probs[cls].ravel(), minlength=n + 1)[1:]
        else:
            sums = np.full(n, np.nan)
        meta.extend((int(cls), int(c), float(s)) for c, s in zip(counts, sums))
        offset += n
    if offset == 0:
        return []
    top, bottom, left, right = seams
    edge_rows = np.zeros(offset + 1, bool)
    if top:
        edge_rows[np.unique(ids[0])] = True
    if bottom:
        edge_rows[np.unique(ids[-1])] = True
    if left:
        edge_rows[np.unique(ids[:, 0])] = True
    if right:
        edge_rows[np.unique(ids[:, -1])] = True
    pieces = []
    shift = Affine.translation(col0, row0)
    for geojson, value in features.shapes(ids, mask=ids > 0, connectivity=4, transform=shift):
        cls, count, psum = meta[int(value) - 1]
        pieces.append(_Piece(cls, count, psum, shapely.geometry.shape(geojson), bool(edge_rows[int(value)])))
    return pieces


def edge_sharing_groups(geoms: np.ndarray, classes: Sequence) -> list[list[int]]:
    """Indices of `geoms` grouped where same-class geometries share an edge: the pieces of
    one object cut by block seams (touching at a corner only does not join them)."""
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    parent = list(range(len(geoms)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(left.tolist(), right.tolist()):
        if i < j and classes[i] == classes[j]:
            common = shapely.intersection(geoms[i], geoms[j])
            if shapely.length(common) > 0 or shapely.area(common) > 0:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(geoms)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def merge_seam_pieces(pieces: list[_Piece]) -> list[_Piece]:
    """Union the pieces of one object cut by block seams: same class and a shared edge (not a corner)."""
    if len(pieces) < 2:
        return pieces
    geoms = np.array([p.geom for p in pieces], dtype=object)
    groups = edge_sharing_groups(geoms, [p.cls for p in pieces])
    merged = []
    for members in groups:
        if len(members) == 1:
            merged.append(pieces[members[0]])
            continue
        geom = shapely.simplify(shapely.union_all([geoms[m] for m in members]), 0.0)  # drop collinear seam points
        merged.append(_Piece(pieces[members[0]].cls, sum(pieces[m].pixels for m in members),
                             sum(pieces[m].prob_sum for m in members), geom, False))
    return merged


# --------------------------------------------------------------------------- right-angle regularisation


def dominant_orientation(polygon: shapely.Polygon) -> float:
    """Orientation (radians, modulo 90 degrees) of a polygon's edges, weighted by edge length."""
    ring = np.asarray(polygon.exterior.coords)
    d = np.diff(ring, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    angle = np.arctan2(d[:, 1], d[:, 0])
    return float(np.arctan2((length * np.sin(4 * angle)).sum(), (length * np.cos(4 * angle)).sum()) / 4)


def _regularize_ring(ring: np.ndarray, theta: float, tolerance: float) -> np.ndarray | None:
    """Snap a ring's (n, 2, not closed) edges to theta / theta + 90 degrees; None if it cannot."""
    n = len(ring)
    if n < 4:
        return None
    d = np.roll(ring, -1, axis=0) - ring
    length = np.hypot(d[:, 0], d[:, 1])
    angle = np.arctan2(d[:, 1], d[:, 0])
    rel = (angle - theta) / _HALF_PI
    k = np.round(rel)
    snapped = np.abs(rel - k) * _HALF_PI <= tolerance
    axis = np.where(snapped, np.mod(k, 2), -1).astype(int)
    if (axis == axis[0]).all():
        return None
    # groups of consecutive edges on one axis become one line; start where the axis changes
    start = next(i for i in range(n) if axis[i] != axis[i - 1] or axis[i] == -1)
    order = [(start + i) % n for i in range(n)]
    groups: list[list[int]] = []
    for i in order:
        if groups and axis[i] >= 0 and axis[groups[-1][-1]] == axis[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) < 3:
        return None
    mids = ring + d / 2
    lines = []  # (unit normal, offset): normal . x = offset
    for g in groups:
        if axis[g[0]] >= 0:
            a = theta + axis[g[0]] * _HALF_PI
        else:
            a = angle[g[0]]
        normal = np.array([-math.sin(a), math.cos(a)])
        weights = length[g]
        offset = float((mids[g] @ normal * weights).sum() / max(weights.sum(), 1e-12))
        lines.append((normal, offset))
    out = []
    for j, g in enumerate(groups):
        (n0, c0), (n1, c1) = lines[j - 1], lines[j]
        det = n0[0] * n1[1] - n0[1] * n1[0]
        if abs(det) < math.sin(math.radians(10)):
            out.append(ring[g[0]])  # near-parallel neighbours: keep the original corner
            continue
        out.append(np.array([(c0 * n1[1] - n0[1] * c1) / det, (n0[0] * c1 - c0 * n1[0]) / det]))
    return np.asarray(out)


def regularize_polygon(polygon: shapely.Polygon, angle_tolerance: float = 20.0, min_iou: float = 0.75) -> shapely.Polygon:
    """Right-angle regularisation of a building outline (already simplified, CRS units).

    Edges within `angle_tolerance` degrees of the dominant orientation or its
    perpendicular are snapped to it, consecutive parallel edges merged into one; holes
    use the outline's orientation. The input is returned unchanged when the result is
    invalid or its IoU with the input is below `min_iou`.
    """
    if polygon.is_empty or polygon.geom_type != "Polygon":
        return polygon
    theta = dominant_orientation(polygon)
    tol = math.radians(angle_tolerance)
    shell = _regularize_ring(np.asarray(polygon.exterior.coords)[:-1], theta, tol)
    if shell is None:
        return polygon
    holes = []
    for interior in polygon.interiors:
        ring = _regularize_ring(np.asarray(interior.coords)[:-1], theta, tol)
        holes.append(ring if ring is not None else np.asarray(interior.coords)[:-1])
    try:
        candidate = shapely.Polygon(shell, [h for h in holes if len(h) >= 3])
    except (ValueError, shapely.errors.GEOSException):
        return polygon
    if not candidate.is_valid or candidate.area <= 0:
        return polygon
    candidate = shapely.simplify(candidate, 0.0)
    union = candidate.union(polygon).area
    if union <= 0 or candidate.intersection(polygon).area / union < min_iou:
        return polygon
    return candidate


# --------------------------------------------------------------------------- the driver


def metric_frame(transform: Affine, crs, width: int, height: int) -> tuple[float, object]:
    """Where polygons are measured in metres: (ground metres per CRS unit, None) for a projected
    CRS or none, (1, a local UTM CRS to work in) for a geographic one."""
    if crs is None:
        return 1.0, None
    from pyproj import CRS

    if CRS.from_user_input(crs).is_geographic:
        left, top = transform * (0, 0)
        right, bottom = transform * (width, height)
        box = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
        return 1.0, gpd.GeoSeries([box], crs=crs).estimate_utm_crs()
    ground_x, ground_y = ground_pixel_size(transform, crs, width, height)
    return (ground_x / math.hypot(transform.a, transform.d) + ground_y / math.hypot(transform.b, transform.e)) / 2, None


def finish_pieces(pieces: list[_Piece], transform: Affine, crs, scale: float, metric_crs, *, tolerance: float,
                  min_area: float, regularize: set[int], angle_tolerance: float) -> list[tuple[int, float, float, shapely.Geometry]]:
    """Pixel polygons -> simplified (and regularised) polygons in the source CRS: (class, area m2, confidence, geom)."""
    if not pieces:
        return []
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    geoms = shapely.transform(np.array([p.geom for p in pieces], dtype=object),
                              lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]))
    if metric_crs is not None:  # geographic source: work in metres, come back at the end
        work = gpd.GeoSeries(geoms, crs=crs).to_crs(metric_crs).values
        unit = 1.0
    else:
        work, unit = geoms, scale
    areas = shapely.area(work) * unit * unit
    keep = areas >= min_area
    out = []
    simple = shapely.simplify(work[keep], tolerance / unit, preserve_topology=True) if tolerance > 0 else work[keep]
    for piece, area, geom in zip([p for p, k in zip(pieces, keep) if k], areas[keep], simple):
        if piece.cls in regularize:
            parts = [regularize_polygon(g, angle_tolerance) for g in getattr(geom, "geoms", [geom])]
            geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        out.append((piece.cls, float(area), piece.prob_sum / max(piece.pixels, 1), geom))
    if metric_crs is not None and out:
        back = gpd.GeoSeries([o[3] for o in out], crs=metric_crs).to_crs(crs).values
        out = [(o[0], o[1], o[2], g) for o, g in zip(out, back)]
    return out


def polygonize_blocks(
    blocks: Iterator[tuple[int, int, np.ndarray, np.ndarray | None]],
    width: int,
    height: int,
    block_size: int,
    transform: Affine,
    crs=None,
    *,
    class_map: ClassMap | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = 0.0,
    regularize: bool = False,
    regular_classes: Sequence[int] | None = None,
    angle_tolerance: float = 20.0,
    background: int = 0,
) -> gpd.GeoDataFrame:
    """Polygons of a class raster given as blocks (row, col, classes (h, w), probabilities (K, h, w) in [0, 1]).

    Blocks must tile the raster on a `block_size` grid. Objects inside a block are
    finished as soon as it is read; objects reaching a seam wait for their neighbours.
    """
    if tolerance < 0 or min_area < 0:
        raise InputError("--tolerance/--min-area", "must be >= 0")
    scale, metric_crs = metric_frame(transform, crs, width, height)
    if regularize:
        if regular_classes is None:
            names = class_map.names if class_map else ()
            regular = {building_class(names)}
        else:
            regular = {int(c) for c in regular_classes}
    else:
        regular = set()
    skip = {int(background), IGNORE}
    opts = dict(tolerance=tolerance, min_area=min_area, regularize=regular, angle_tolerance=angle_tolerance)
    done: list[tuple[int, float, float, shapely.Geometry]] = []
    waiting: list[_Piece] = []
    for row, col, cls_block, prob_block in blocks:
        h, w = cls_block.shape
        seams = (row > 0, row + h < height, col > 0, col + w < width)
        pieces = raster_block_pieces(cls_block, prob_block, row, col, skip, seams)
        waiting.extend(p for p in pieces if p.on_seam)
        done.extend(finish_pieces([p for p in pieces if not p.on_seam], transform, crs, scale, metric_crs, **opts))
    done.extend(finish_pieces(merge_seam_pieces(waiting), transform, crs, scale, metric_crs, **opts))
    names = [class_map.names[o[0]] if class_map and o[0] < class_map.num_classes else str(o[0]) for o in done]
    frame = gpd.GeoDataFrame(
        {"class": np.asarray(names, dtype=object), "area": np.asarray([o[1] for o in done], float),
         "confidence": np.asarray([o[2] for o in done], float)},
        geometry=gpd.GeoSeries([o[3] for o in done], crs=crs), crs=crs,
    )
    logger.info("polygons: %d objects (%d pieces waited on seams)", len(frame), len(waiting))
    return frame


def _array_blocks(classes: np.ndarray, probabilities: np.ndarray | None, block_size: int):
    h, w = classes.shape
    for row in range(0, h, block_size):
        for col in range(0, w, block_size):
            sl = (slice(row, row + block_size), slice(col, col + block_size))
            yield row, col, classes[sl], None if probabilities is None else probabilities[(slice(None), *sl)]


def _check(classes: np.ndarray, probabilities: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(classes)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError("classes", f"expected an integer (h, w) class raster, got {arr.dtype} {arr.shape}")
    if probabilities is not None:
        probabilities = np.asarray(probabilities)
        if tuple(probabilities.shape[-2:]) != arr.shape:
            raise InputError("probabilities", f"shape {probabilities.shape} does not match classes {arr.shape}")
        if probabilities.dtype == np.uint8:
            probabilities = probabilities.astype(np.float32) / 255.0
    return arr.astype(np.int32, copy=False), probabilities


def dp_polygons(
    classes: np.ndarray,
    transform: Affine,
    crs=None,
    probabilities: np.ndarray | None = None,
    *,
    class_map: ClassMap | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = 0.0,
    block_size: int = DEFAULT_BLOCK,
    background: int = 0,
    regularize: bool = False,
    regular_classes: Sequence[int] | None = None,
    angle_tolerance: float = 20.0,
) -> gpd.GeoDataFrame:
    """Polygons of a class raster simplified by Douglas-Peucker (`tolerance` in metres).

    Args:
        classes: (h, w) integer classes; `background` and 255 are not polygonised.
        transform, crs: georeferencing of the raster.
        probabilities: optional (K, h, w) probabilities (float in [0, 1], or uint8 x 255).
        class_map: names for the `class` column.
        tolerance: Douglas-Peucker tolerance in ground metres.
        min_area: polygons smaller than this many square metres are dropped.
        block_size: blocks polygonised independently and merged across seams.
        background: class id that is not polygonised.
        regularize: square the outlines of `regular_classes` (default: the class named
            "building", or class 1) to right angles within `angle_tolerance` degrees
            (`regularize_polygon`).
    """
    arr, probs = _check(classes, probabilities)
    return polygonize_blocks(_array_blocks(arr, probs, block_size), arr.shape[1], arr.shape[0], block_size,
                             transform, crs, class_map=class_map, tolerance=tolerance, min_area=min_area,
                             regularize=regularize, regular_classes=regular_classes,
                             angle_tolerance=angle_tolerance, background=background)


def regularized_polygons(classes: np.ndarray, transform: Affine, crs=None,
                         probabilities: np.ndarray | None = None, **options) -> gpd.GeoDataFrame:
    """`dp_polygons` with `regularize=True` (the "regularized" polygoniser)."""
    return dp_polygons(classes, transform, crs, probabilities, regularize=True, **options)


def vertex_count(geoms) -> int:
    """Total number of distinct vertices of polygon rings (closing points not counted)."""
    arr = np.asarray(list(geoms), dtype=object)
    if len(arr) == 0:
        return 0
    rings = shapely.get_num_coordinates(arr) - shapely.get_num_interior_rings(arr) - shapely.get_num_geometries(arr)
    return int(np.sum(rings))


PIECE_POLYGONIZERS = ("dp", "regularized")
"""Douglas-Peucker and its squared outlines: a tolerance, and blocks finished apart (`polygonize_blocks`)."""
BLOCK_POLYGONIZERS = (*PIECE_POLYGONIZERS, "mesh")
"""The polygonisers that work block by block: they stream a raster and can take a prediction's tiles."""


@dataclass(frozen=True)
class PolygonSpec:
    """How to vectorise a prediction, whichever door it comes through (`geolabel predict
    --polygons`, its `--beam` run): a `geolabel.vectorize.POLYGONIZERS` name and its options."""

    method: str = "regularized"
    tolerance: float = DEFAULT_TOLERANCE
    min_area: float = 2.0
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    separate: bool = True

    def options(self) -> dict:
        """Keyword arguments of `polygonize_raster` / `StreamedPolygons` besides `method`."""
        options = {"min_area": self.min_area, "min_confidence": self.min_confidence, "separate": self.separate}
        if self.method in PIECE_POLYGONIZERS:
            options["tolerance"] = self.tolerance
        return options


def polygonize_raster(
    classes_path: str | os.PathLike,
    probabilities_path: str | os.PathLike | None = None,
    *,
    method: str = "regularized",
    class_map: ClassMap | None = None,
    block_size: int = DEFAULT_BLOCK,
    separate: bool = True,
    core_m: float | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    **options,
) -> gpd.GeoDataFrame:
    """Polygons of a class raster file (e.g. `classes.tif` of `geolabel predict`).

    The `BLOCK_POLYGONIZERS` read the raster block by block (bounded memory,
    `polygonize_block_stream`); other registered polygonisers get the whole arrays. With
    `separate`, touching buildings are split first (`geolabel.vectorize.separate`; `core_m`
    metres, default its `DEFAULT_CORE_M`), so each building is one polygon; polygons whose
    `confidence` (mean probability) is below `min_confidence` are dropped (when there are
    probabilities).
    """
    import json

    from geolabel.data.raster import open_raster
    from geolabel.vectorize import POLYGONIZERS
    from geolabel.vectorize.separate import DEFAULT_CORE_M, separate_buildings

    if method not in POLYGONIZERS:
        raise InputError("--polygons", f"unknown polygoniser {method!r}; available: {', '.join(sorted(POLYGONIZERS))}")
    with streaming_env(), open_raster(classes_path) as src:
        if class_map is None and "classes" in src.tags():
            names = tuple(json.loads(src.tags()["classes"]))
            class_map = ClassMap(names, tuple((0, 0, 0) for _ in names))
        with open_raster(probabilities_path) if probabilities_path else contextlib.nullcontext() as psrc:
            if psrc is not None and (psrc.width, psrc.height) != (src.width, src.height):
                raise InputError(probabilities_path, "is not on the grid of the class raster")
            if method in BLOCK_POLYGONIZERS:
                blocks = ((int(w.row_off), int(w.col_off), src.read(1, window=w),
                           None if psrc is None else psrc.read(window=w))
                          for w in iter_windows(src.width, src.height, block_size))
                return polygonize_block_stream(blocks, src.width, src.height, src.transform, src.crs, method=method,
                                               class_map=class_map, block_size=block_size, separate=separate,
                                               core_m=core_m, min_confidence=min_confidence, **options)
            cls = src.read(1)
            if separate:
                pixel_m = math.sqrt(math.prod(ground_pixel_size(src.transform, src.crs, src.width, src.height)))
                cls = separate_buildings(cls, building_class(class_map), pixel_m, core_m or DEFAULT_CORE_M)
            probs = None if psrc is None else _unit_probabilities(psrc.read())
            frame = POLYGONIZERS[method](cls, src.transform, src.crs, probs, class_map=class_map, **options)
    return _confident(frame, min_confidence)


def polygonize_block_stream(
    blocks: Iterable[tuple[int, int, np.ndarray, np.ndarray | None]],
    width: int,
    height: int,
    transform: Affine,
    crs=None,
    *,
    method: str = "regularized",
    class_map: ClassMap | None = None,
    block_size: int = DEFAULT_BLOCK,
    separate: bool = True,
    core_m: float | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    **options,
) -> gpd.GeoDataFrame:
    """`polygonize_raster` of a raster given as its `block_size` blocks, in any order: (row, col,
    classes, probabilities as written (uint8 x 255 or float) or None). `method` is one of
    `BLOCK_POLYGONIZERS`; mesh separates and meshes the blocks in its worker processes."""
    from geolabel.vectorize.separate import DEFAULT_CORE_M, separate_buildings

    if method not in BLOCK_POLYGONIZERS:
        raise InputError("--polygons", f"{method!r} does not work block by block; use one of {', '.join(BLOCK_POLYGONIZERS)}")
    core_m = core_m or DEFAULT_CORE_M
    if method == "mesh":
        from geolabel.vectorize.mesh import mesh_blocks

        frame = mesh_blocks(((row, col, cls, probs, None) for row, col, cls, probs in blocks), width, height,
                            transform, crs, class_map=class_map, block_size=block_size,
                            separate_core_m=core_m if separate else None, **options)
        return _confident(frame, min_confidence)
    building = building_class(class_map)
    pixel_m = math.sqrt(math.prod(ground_pixel_size(transform, crs, width, height)))
    n_blocks = math.ceil(height / block_size) * math.ceil(width / block_size)

    def prepared() -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
        for row, col, cls, probs in progress(blocks, desc="polygons", total=n_blocks, unit="block"):
            if separate:
                cls = separate_buildings(cls, building, pixel_m, core_m)
            yield row, col, cls, None if probs is None else _unit_probabilities(probs)

    frame = polygonize_blocks(prepared(), width, height, block_size, transform, crs, class_map=class_map,
                              regularize=method == "regularized", **options)
    return _confident(frame, min_confidence)


def _unit_probabilities(probs: np.ndarray) -> np.ndarray:
    return probs.astype(np.float32) / 255.0 if probs.dtype == np.uint8 else probs


def _confident(frame: gpd.GeoDataFrame, min_confidence: float) -> gpd.GeoDataFrame:
    """Objects whose mean probability is at least `min_confidence` (all of them without probabilities)."""
    if min_confidence > 0:
        frame = frame[~(frame["confidence"] < min_confidence)].reset_index(drop=True)
    return frame


class StreamedPolygons:
    """`polygonize_block_stream` in a thread of its own, fed the tiles a prediction writes, so a
    raster's polygons are made beside its prediction instead of after it, from the very pixels
    the files get:

        with StreamedPolygons(width, height, transform, crs, method="mesh") as polygons:
            predict_raster(model, image, out, on_tile=polygons.add)
        frame = polygons.frame

    Tiles (on a `tile` grid from the raster's corner) are gathered into the polygoniser's
    blocks; a complete block is handed over at once, at most `ahead` waiting, so memory holds
    one row of blocks and a slow polygoniser holds the prediction back rather than piling up.
    A polygoniser's error stops the prediction (`add` raises it); a prediction's error stops
    the polygoniser.
    """

    def __init__(self, width: int, height: int, transform: Affine, crs=None, *, tile: int = 512,
                 block_size: int = DEFAULT_BLOCK, ahead: int = 2, **options):
        if block_size % tile:
            raise InputError("block_size", f"{block_size} px is not a multiple of the prediction's {tile} px tiles")
        self.width, self.height, self.transform, self.crs = width, height, transform, crs
        self.tile, self.block_size, self.options = tile, block_size, options
        self.frame: gpd.GeoDataFrame | None = None
        self._parts: dict[tuple[int, int], list] = {}  # block corner -> [classes, probabilities, tiles missing]
        self._tiles_missing = math.ceil(height / tile) * math.ceil(width / tile)
        self._ready: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StreamedPolygons:
        return self

    def add(self, row: int, col: int, classes: np.ndarray, probabilities: np.ndarray, class_map: ClassMap) -> None:
        """Take one written tile (classes (h, w), probabilities (K, h, w) as written) at (`row`, `col`)."""
        if self._error is not None:
            raise self._error
        if self._thread is None:  # the class map is known once the prediction writes
            self._thread = threading.Thread(target=self._polygonize, args=(class_map,), name="geolabel-polygons",
                                            daemon=True)
            self._thread.start()
        size = self.block_size
        r0, c0 = row - row % size, col - col % size
        part = self._parts.get((r0, c0))
        if part is None:
            h, w = min(size, self.height - r0), min(size, self.width - c0)
            part = self._parts[(r0, c0)] = [np.empty((h, w), classes.dtype),
                                            np.empty((len(probabilities), h, w), probabilities.dtype),
                                            math.ceil(h / self.tile) * math.ceil(w / self.tile)]
        h, w = classes.shape
        self._tiles_missing -= 1
        part[0][row - r0:row - r0 + h, col - c0:col - c0 + w] = classes
        part[1][:, row - r0:row - r0 + h, col - c0:col - c0 + w] = probabilities
        part[2] -= 1
        if part[2] == 0:
            del self._parts[(r0, c0)]
            self._hand_over((r0, c0, part[0], part[1]))

    def _hand_over(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _blocks(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        while not self._stop.is_set():
            try:
                item = self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item
        raise _Abandoned

    def _polygonize(self, class_map: ClassMap) -> None:
        try:
            self.frame = polygonize_block_stream(self._blocks(), self.width, self.height, self.transform, self.crs,
                                                 class_map=class_map, block_size=self.block_size, **self.options)
        except _Abandoned:
            pass
        except BaseException as err:  # noqa: BLE001  (raised by add and on exit)
            self._error = err
            self._stop.set()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop.set()
        elif self._tiles_missing:
            self._stop.set()
            if self._error is None:
                self._error = RuntimeError("the prediction did not write every tile of the raster")
        else:
            self._hand_over(None)
        if self._thread is not None:
            self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error


class _Abandoned(Exception):
    """The prediction feeding a `StreamedPolygons` failed: its polygoniser stops."""


def write_polygons(frame: gpd.GeoDataFrame, out_dir: str | os.PathLike, name: str = "polygons",
                   formats: Sequence[str] = ("gpkg", "geojson"), *, pmtiles: bool = False,
                   attribution: Sequence[str] = ()) -> dict[str, Path]:
    """Write valid geometries as `NAME.gpkg` / `NAME.parquet` (source CRS) and `NAME.geojson`
    (EPSG:4326), the `formats` asked for, and with `pmtiles` `NAME.pmtiles` crediting `attribution`
    (`geolabel.data.vectors`); returns {format: path}."""
    frame = frame.copy()
    frame["geometry"] = shapely.make_valid(frame.geometry.values) if len(frame) else frame.geometry
    return write_vectors(frame, out_dir, name, formats, pmtiles=pmtiles, attribution=attribution)
