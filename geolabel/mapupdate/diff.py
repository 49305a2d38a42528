"""Compare a building-probability map with an existing map: new, missing, shifted, unchanged.

All geometry here is in the pixel coordinates of the probability grid (x right, y down).

- An existing building whose footprint is covered by the prediction is `unchanged`.
- If it is not, but the footprint translated by some (dx, dy) within `max_shift` pixels
  is, it is `shifted`, with the translated geometry as its correction.
- Otherwise it is `missing` (in the map, not seen in the image).
- A predicted building that no existing (or corrected) footprint explains is `new`.
Confidence: the mean probability under the footprint (unchanged/shifted/new) or one minus
the best such score (missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage, signal

STATUSES = ("new", "missing", "shifted", "unchanged")


@dataclass
class Change:
    """One building of the diff.

    Args:
        status: one of STATUSES.
        geometry: the building's geometry (corrected one for `shifted`), pixel coordinates.
        confidence: 0-1.
        source_id: id of the existing building (None for `new`).
        shift: (dx, dy) pixels applied to a `shifted` building.
        original: the existing geometry (None for `new`).
    """

    status: str
    geometry: object
    confidence: float
    source_id: object = None
    shift: tuple[float, float] = (0.0, 0.0)
    original: object = None
    extra: dict = field(default_factory=dict)


@dataclass
class DiffParams:
    """Thresholds of the comparison (pixels and probabilities)."""

    threshold: float = 0.5  # probability that makes a pixel "building"
    match: float = 0.5  # mean probability under a footprint to call it seen
    max_shift: int = 12  # largest translation searched, pixels
    min_shift: float = 1.5  # smaller best shifts count as unchanged
    gain: float = 0.1  # a shift must improve the fit (see best_shift) at least this much
    min_area: int = 30  # smallest new building, pixels
    new_overlap: float = 0.3  # a predicted blob overlapping known footprints more than this is not new
    simplify: float = 1.0  # Douglas-Peucker tolerance of new outlines, pixels


def _footprint(geom, shape: tuple[int, int], origin: tuple[int, int]) -> np.ndarray:
    t = Affine.translation(origin[0], origin[1])
    return rasterio.features.rasterize([geom], shape, transform=t, dtype="uint8").astype(np.float32)


def best_shift(prob: np.ndarray, geom, max_shift: int) -> tuple[float, tuple[int, int], float, float]:
    """Where `geom` fits the probability map best within +-max_shift pixels.

    The fit of a placement is the mean probability inside the footprint minus half the
    mean probability in a 2-pixel ring around it (so a footprint does not slide onto a
    neighbouring building). Returns (coverage at its place, best integer shift,
    coverage there, fit gain of the best shift over no shift); coverage = mean probability.
    """
    h, w = prob.shape
    minx, miny, maxx, maxy = geom.bounds
    c0, r0 = int(np.floor(minx)) - 2, int(np.floor(miny)) - 2
    fw, fh = int(np.ceil(maxx)) - c0 + 3, int(np.ceil(maxy)) - r0 + 3
    mask = _footprint(geom, (fh, fw), (c0, r0))
    area = float(mask.sum())
    if area == 0:
        return 0.0, (0, 0), 0.0, 0.0
    ring = ndimage.binary_dilation(mask > 0, iterations=2).astype(np.float32) - mask
    m = max_shift
    window = np.zeros((fh + 2 * m, fw + 2 * m), np.float32)
    rs, cs = r0 - m, c0 - m
    rr0, cc0 = max(rs, 0), max(cs, 0)
    rr1, cc1 = min(rs + fh + 2 * m, h), min(cs + fw + 2 * m, w)
    if rr1 > rr0 and cc1 > cc0:
        window[rr0 - rs : rr1 - rs, cc0 - cs : cc1 - cs] = prob[rr0:rr1, cc0:cc1]
    cover = signal.correlate(window, mask, mode="valid", method="fft") / area  # (2m+1, 2m+1)
    outside = signal.correlate(window, ring, mode="valid", method="fft") / max(float(ring.sum()), 1.0)
    fit = cover - 0.5 * outside
    yy, xx = np.mgrid[-m : m + 1, -m : m + 1]
    k = int(np.argmax(fit - 1e-3 * np.sqrt(xx**2 + yy**2)))  # ties go to the smallest shift
    dy, dx = divmod(k, 2 * m + 1)
    return float(cover[m, m]), (dx - m, dy - m), float(cover.flat[k]), float(fit.flat[k] - fit[m, m])


def polygons_of(labels: np.ndarray, simplify: float = 1.0) -> list[tuple[object, int]]:
    """Polygons (pixel coordinates) of the regions of a label image (0 = none), with their labels."""
    out = []
    for geom, value in rasterio.features.shapes(labels.astype(np.int32), mask=labels > 0, transform=Affine.identity()):
        poly = shapely.geometry.shape(geom)
        if simplify:
            poly = poly.simplify(simplify, preserve_topology=True)
        if not poly.is_empty:
            out.append((poly, int(value)))
    return out


def compare(prob: np.ndarray, geoms: np.ndarray, ids: np.ndarray | None = None, params: DiffParams | None = None,
            valid: np.ndarray | None = None) -> list[Change]:
    """Classify every existing building and every unexplained predicted building (see module doc).

    Args:
        prob: (H, W) building probability.
        geoms: existing building polygons in pixel coordinates.
        ids: their identifiers (defaults to row numbers).
        valid: (H, W) True where there is imagery; a building mostly outside it cannot be
            judged and gets no status (it is not "missing").
    """
    p = params or DiffParams()
    ids = np.arange(len(geoms)) if ids is None else ids
    h, w = prob.shape
    changes: list[Change] = []
    explained = np.zeros((h, w), bool)
    for geom, gid in zip(geoms, ids):
        if geom is None or geom.is_empty:
            continue
        if valid is not None:
            footprint = _footprint(geom, (h, w), (0, 0)) > 0
            if not footprint.any() or valid[footprint].mean() < 0.5:
                continue
        here, (dx, dy), best, gain = best_shift(prob, geom, p.max_shift)
        if here >= p.match and (gain < p.gain or np.hypot(dx, dy) < p.min_shift):
            change = Change("unchanged", geom, here, gid, (0.0, 0.0), geom)
        elif best >= p.match and np.hypot(dx, dy) >= p.min_shift:
            moved = shapely.transform(geom, lambda pts, d=(dx, dy): pts + np.array(d, float))
            change = Change("shifted", moved, best, gid, (float(dx), float(dy)), geom)
        else:
            change = Change("missing", geom, float(np.clip(1.0 - max(here, best), 0, 1)), gid, (0.0, 0.0), geom)
        changes.append(change)
        if change.status != "missing":
            explained |= _footprint(change.geometry, (h, w), (0, 0)) > 0
    explained = ndimage.binary_dilation(explained, iterations=2)
    predicted = prob >= p.threshold
    # what the existing (or corrected) footprints do not explain, without thin slivers
    unexplained = ndimage.binary_opening(predicted & ~explained, iterations=2)
    labels, n = ndimage.label(unexplained)
    if n:
        index = np.arange(1, n + 1)
        areas = ndimage.sum(np.ones_like(prob), labels, index)
        blob_labels, _ = ndimage.label(predicted)
        mean_prob = ndimage.mean(prob, labels, index)
        candidates = set()
        for i, area in zip(index, areas):
            if area < p.min_area:
                continue
            # the whole predicted blob this piece belongs to must be mostly unexplained
            blob_ids = np.unique(blob_labels[labels == i])
            blob = np.isin(blob_labels, blob_ids[blob_ids > 0])
            if area / max(blob.sum(), 1) >= 1.0 - p.new_overlap or explained[blob].mean() <= p.new_overlap:
                candidates.add(int(i))
        for poly, value in polygons_of(np.where(np.isin(labels, list(candidates)), labels, 0), p.simplify):
            if value in candidates and poly.area >= p.min_area / 2:
                changes.append(Change("new", poly, float(mean_prob[value - 1]), None))
    return changes


def counts(changes: list[Change]) -> dict[str, int]:
    """Number of changes per status."""
    return {s: sum(c.status == s for c in changes) for s in STATUSES}
