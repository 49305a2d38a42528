"""Quadrilateral rings: orientation, extraction from outlines, IoU and vertex-distance scores."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def signed_area(vertices: np.ndarray) -> float:
    """Shoelace area of a (n, 2) ring (positive = clockwise on screen, with y pointing down)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def orient(vertices: np.ndarray) -> np.ndarray:
    """The ring with positive signed area (clockwise on screen), same starting vertex."""
    vertices = np.asarray(vertices, dtype="float64")
    if signed_area(vertices) < 0:
        return np.concatenate([vertices[:1], vertices[:0:-1]])
    return vertices


def quad_from_polygon(polygon: Any, tolerance: float, min_iou: float = 0.85) -> np.ndarray | None:
    """The polygon's outline as a (4, 2) ring if it is a quadrilateral after Douglas-Peucker at `tolerance`.

    Polygons with holes, multi-part ones and those whose simplified quadrilateral differs
    from the original by more than `min_iou` are rejected (None).
    """
    from shapely.geometry import Polygon

    if polygon is None or polygon.is_empty or polygon.geom_type != "Polygon" or len(polygon.interiors) > 0:
        return None
    simple = polygon.simplify(tolerance, preserve_topology=True)
    if simple.geom_type != "Polygon":
        return None
    ring = np.asarray(simple.exterior.coords)[:-1]
    if len(ring) != 4:
        return None
    quad = Polygon(ring)
    if not quad.is_valid or quad.area <= 0 or polygon_iou(quad, polygon) < min_iou:
        return None
    return ring


def quad_polygon(ring: np.ndarray) -> Any:
    """A valid shapely polygon from a regressed ring: a self-intersecting one becomes its convex hull."""
    from shapely.geometry import Polygon

    poly = Polygon(np.asarray(ring, dtype="float64").reshape(-1, 2))
    return poly if poly.is_valid else poly.convex_hull


def polygon_iou(a: Any, b: Any) -> float:
    """Intersection over union of two shapely polygons (0 when either is empty or invalid)."""
    if a.is_empty or b.is_empty:
        return 0.0
    if not a.is_valid:
        a = a.buffer(0)
    if not b.is_valid:
        b = b.buffer(0)
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union > 0 else 0.0


def vertex_distances(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each true vertex, the distance to the nearest predicted vertex (same units as inputs)."""
    true = np.asarray(true, dtype="float64").reshape(-1, 2)
    pred = np.asarray(pred, dtype="float64").reshape(-1, 2)
    return np.sqrt(((true[:, None, :] - pred[None, :, :]) ** 2).sum(-1)).min(axis=1)


@dataclasses.dataclass
class QuadScores:
    """Per-example polygon IoU and vertex distances (pixels of the source imagery)."""

    iou: np.ndarray
    vertex_px: np.ndarray  # (N * 4,) distance of every true vertex to its nearest predicted vertex

    def summary(self, thresholds: Sequence[float] = (1, 2, 4, 8, 16)) -> dict[str, Any]:
        """Count, mean IoU, median vertex distance and the share of vertices within each threshold."""
        return {
            "count": int(len(self.iou)),
            "mean_iou": float(np.mean(self.iou)) if len(self.iou) else float("nan"),
            "median_vertex_px": float(np.median(self.vertex_px)) if len(self.vertex_px) else float("nan"),
            "vertex_curve": {str(t): float(np.mean(self.vertex_px <= t)) for t in thresholds},
        }


def score_quads(true: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> QuadScores:
    """Polygon IoU and vertex distances between paired rings in the same pixel coordinates."""
    from shapely.geometry import Polygon

    ious, dists = [], []
    for t, p in zip(true, pred, strict=True):
        p = np.asarray(p, dtype="float64").reshape(-1, 2)
        ious.append(polygon_iou(Polygon(t), quad_polygon(p)) if len(p) >= 3 else 0.0)
        dists.append(vertex_distances(t, p) if len(p) else np.full(len(t), np.inf))
    return QuadScores(np.asarray(ious), np.concatenate(dists) if dists else np.zeros(0))
