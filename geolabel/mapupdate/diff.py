"""Compare a building-probability map with an existing map: new, missing, shifted, unchanged.

All geometry here is in the pixel coordinates of the probability grid (x right, y down).
Only pixels with imagery (`valid`) are evidence: probabilities elsewhere count as 0 and
every coverage is a mean over the valid pixels of a footprint.

- An existing building whose footprint is covered by the prediction is `unchanged`.
- If it is not, but the footprint translated by some (dx, dy) within `max_shift` pixels
  is, it is `shifted`, with the translated geometry as its correction. A shift never takes
  the pixels of another building's footprint (as mapped, or as corrected): a building the
  prediction misses would otherwise slide onto its neighbour. A shift is a correction of a
  misregistered outline, so it must cover more of the prediction than the outline does where
  it is mapped (a fit won only by an emptier surrounding ring is no correction), and the
  corrected footprint must keep `min_shift_overlap` of the mapped one (a jump off itself is
  a snap onto another object). Both rules come from the false shifts of
  `benchmarks/bench_mapupdate.py` on all three shared cities.
- Otherwise it is `missing` (in the map, not seen in the image).
- A building with less than `min_valid` of its footprint on imagery gets no status.
- A predicted building that no existing (or corrected) footprint explains is `new`.

Confidence (0-1), the score the precision-first output ranks changes by:
- unchanged: the coverage (mean probability) of the footprint;
- shifted: the mean probability inside the corrected footprint less its 1-pixel edge (where
  even a right footprint meets the prediction's blurred boundary). A best placement on the
  edge of the search is no optimum and is not proposed as a shift;
- missing: one minus the best coverage within the search;
- new: the blob's mean probability times the share of its outline that lies on imagery
  (a blob cut by the edge of the imagery may be part of a building).
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
        confidence: 0-1 (see the module doc).
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
    """Thresholds of the comparison (pixels and probabilities) and of what is uploadable."""

    threshold: float = 0.5  # probability that makes a pixel "building"
    match: float = 0.5  # mean probability under a footprint to call it seen
    max_shift: int = 12  # largest translation searched, pixels
    min_shift: float = 1.5  # smaller best shifts count as unchanged
    min_shift_overlap: float = 0.2  # a corrected footprint keeps at least this share of the mapped one
    gain: float = 0.1  # a shift must improve the fit (see best_shift) at least this much
    min_area: int = 30  # smallest new building, pixels
    new_overlap: float = 0.3  # a predicted blob overlapping known footprints more than this is not new
    simplify: float = 1.0  # Douglas-Peucker tolerance of new outlines, pixels
    min_valid: float = 0.5  # share of a footprint on imagery for it to be judged (or placed by a shift)
    # new/shifted changes at or above go to the .osc, the rest to review only; chosen on Kampala and
    # Zanzibar (benchmarks/bench_mapupdate.py): the lowest threshold where both reach precision >= 0.9
    min_confidence: float = 0.96


def _local_mask(geom, pad: int) -> tuple[np.ndarray, int, int]:
    """`geom` rasterised (float32 0/1) on its bounding box grown by `pad` pixels, and the box's
    top-left (row, col) in the image."""
    minx, miny, maxx, maxy = geom.bounds
    c0, r0 = int(np.floor(minx)) - pad, int(np.floor(miny)) - pad
    fw, fh = int(np.ceil(maxx)) - c0 + pad + 1, int(np.ceil(maxy)) - r0 + pad + 1
    t = Affine.translation(c0, r0)
    mask = rasterio.features.rasterize([geom], (fh, fw), transform=t, dtype="uint8").astype(np.float32)
    return mask, r0, c0


def _crop(array: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """array[r0:r0+h, c0:c0+w] as float32, zeros where the window leaves the array."""
    out = np.zeros((h, w), np.float32)
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, array.shape[0]), min(c0 + w, array.shape[1])
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = array[rr0:rr1, cc0:cc1]
    return out


def valid_share(geom, valid: np.ndarray) -> float:
    """Share of `geom`'s footprint on valid pixels (outside the array counts as invalid)."""
    mask, r0, c0 = _local_mask(geom, 0)
    area = float(mask.sum())
    return float((mask * _crop(valid, r0, c0, *mask.shape)).sum() / area) if area else 0.0


def interior_mean(prob: np.ndarray, valid: np.ndarray, geom) -> float:
    """Mean probability over the valid pixels of `geom`'s footprint less its 1-pixel edge (the
    whole footprint when nothing is left), where a right footprint shows no edge blur."""
    mask, r0, c0 = _local_mask(geom, 1)
    inner = ndimage.binary_erosion(mask > 0)
    weights = (inner if inner.any() else mask > 0) * _crop(valid, r0, c0, *mask.shape)
    return float((weights * _crop(prob, r0, c0, *mask.shape)).sum() / max(weights.sum(), 1.0))


def best_shift(
    prob: np.ndarray, geom, params: DiffParams, valid: np.ndarray | None = None,
    claims: np.ndarray | None = None, own: int = 0,
) -> tuple[float, tuple[int, int], float, float]:
    """Where `geom` fits the probability map best within +-`params.max_shift` pixels.

    The fit of a placement is the coverage (mean probability over the footprint's valid
    pixels) minus half the mean probability in a 2-pixel ring around it (so a footprint does
    not slide onto a neighbouring building). Candidates keep at least `params.min_valid` of
    the footprint on valid pixels. `claims` (H, W) labels the pixels other buildings explain
    (0 = none, `own` = this building): their probability does not count.
    Returns (coverage at its place, best integer shift, coverage there, fit gain of the best
    shift over no shift).
    """
    valid = np.ones(prob.shape, bool) if valid is None else valid
    m = params.max_shift
    mask, r0, c0 = _local_mask(geom, 2)
    area = float(mask.sum())
    if area == 0:
        return 0.0, (0, 0), 0.0, 0.0
    ring = ndimage.binary_dilation(mask > 0, iterations=2).astype(np.float32) - mask
    fh, fw = mask.shape
    v = _crop(valid, r0 - m, c0 - m, fh + 2 * m, fw + 2 * m)
    p = _crop(prob, r0 - m, c0 - m, fh + 2 * m, fw + 2 * m) * v
    if claims is not None:
        c = _crop(claims, r0 - m, c0 - m, fh + 2 * m, fw + 2 * m)
        p *= (c == 0) | (c == own)

    def correlate(window: np.ndarray, kernel: np.ndarray) -> np.ndarray:  # (2m+1, 2m+1)
        return signal.correlate(window, kernel, mode="valid", method="fft")

    seen = correlate(v, mask)
    cover = correlate(p, mask) / np.maximum(seen, 1.0)
    outside = correlate(p, ring) / np.maximum(correlate(v, ring), 1.0)
    fit = np.where(seen >= (params.min_valid - 1e-6) * area, cover - 0.5 * outside, -np.inf)
    yy, xx = np.mgrid[-m : m + 1, -m : m + 1]
    k = int(np.argmax(fit - 1e-3 * np.sqrt(xx**2 + yy**2)))  # ties go to the smallest shift
    if not np.isfinite(fit.flat[k]):
        return 0.0, (0, 0), 0.0, 0.0
    dy, dx = divmod(k, 2 * m + 1)
    here = float(cover[m, m]) if np.isfinite(fit[m, m]) else 0.0
    gain = float(fit.flat[k] - fit[m, m]) if np.isfinite(fit[m, m]) else float("inf")
    return here, (dx - m, dy - m), float(cover.flat[k]), gain


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


def _judge(prob: np.ndarray, valid: np.ndarray, geom, gid, p: DiffParams,
           claims: np.ndarray | None = None, own: int = 0) -> Change | None:
    """The status of one existing building (None when too little of it lies on imagery);
    `claims` and `own` as in `best_shift`."""
    if valid_share(geom, valid) < p.min_valid:
        return None
    here, (dx, dy), best, gain = best_shift(prob, geom, p, valid, claims, own)
    moved = shapely.transform(geom, lambda pts, d=(dx, dy): pts + np.array(d, float))
    if (best >= p.match and best > here and np.hypot(dx, dy) >= p.min_shift
            and max(abs(dx), abs(dy)) < p.max_shift  # on the edge of the search the fit still rises outwards
            and (here < p.match or gain >= p.gain)  # a building seen where it is mapped moves only for a clear gain
            and shapely.area(shapely.intersection(geom, moved)) >= p.min_shift_overlap * shapely.area(geom)):
        return Change("shifted", moved, interior_mean(prob, valid, moved), gid, (float(dx), float(dy)), geom)
    if here >= p.match:
        return Change("unchanged", geom, here, gid, (0.0, 0.0), geom)
    return Change("missing", geom, float(np.clip(1.0 - max(here, best), 0, 1)), gid, (0.0, 0.0), geom)


def _new_buildings(prob: np.ndarray, valid: np.ndarray, explained: np.ndarray, p: DiffParams) -> list[Change]:
    """Predicted blobs (on imagery) that the existing or corrected footprints do not explain."""
    predicted = (prob >= p.threshold) & valid
    # what the existing (or corrected) footprints do not explain, without thin slivers
    unexplained = ndimage.binary_opening(predicted & ~explained, iterations=2)
    labels, n = ndimage.label(unexplained)
    if not n:
        return []
    index = np.arange(1, n + 1)
    blob_labels, n_blobs = ndimage.label(predicted)
    blob_index = np.arange(1, n_blobs + 1)
    blob_area = np.concatenate([[1.0], ndimage.sum(predicted, blob_labels, blob_index)])
    blob_explained = np.concatenate([[0.0], ndimage.sum(explained, blob_labels, blob_index)]) / blob_area
    areas = ndimage.sum(unexplained, labels, index)
    blob_of = ndimage.maximum(blob_labels, labels, index).astype(int)  # each piece lies in one blob
    mean_prob = ndimage.mean(prob, labels, index)
    # the whole predicted blob a piece belongs to must be mostly unexplained
    keep = (areas >= p.min_area) & (
        (areas / blob_area[blob_of] >= 1.0 - p.new_overlap) | (blob_explained[blob_of] <= p.new_overlap)
    )
    confidence = {}
    for i, box in zip(index, ndimage.find_objects(labels)):
        if not keep[i - 1]:
            continue
        grown = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
        piece = labels[grown] == i
        ring = ndimage.binary_dilation(piece, iterations=2) & ~piece
        on_imagery = float(valid[grown][ring].mean()) if ring.any() else 1.0
        confidence[int(i)] = float(mean_prob[i - 1]) * on_imagery
    changes = []
    for poly, value in polygons_of(np.where(np.isin(labels, list(confidence)), labels, 0), p.simplify):
        if value in confidence and poly.area >= p.min_area / 2:
            changes.append(Change("new", poly, confidence[value], None))
    return changes


def compare(prob: np.ndarray, geoms: np.ndarray, ids: np.ndarray | None = None, params: DiffParams | None = None,
            valid: np.ndarray | None = None) -> list[Change]:
    """Classify every existing building and every unexplained predicted building (see module doc).

    Args:
        prob: (H, W) building probability.
        geoms: existing building polygons in pixel coordinates.
        ids: their identifiers (defaults to row numbers).
        valid: (H, W) True where there is imagery (default: everywhere in the array); a
            building mostly outside it cannot be judged and gets no status (it is not
            "missing"), and nothing is predicted there.
    """
    p = params or DiffParams()
    ids = np.arange(len(geoms)) if ids is None else ids
    valid = np.ones(prob.shape, bool) if valid is None else valid.astype(bool)
    prob = np.where(valid, prob, 0.0).astype(np.float32)
    present = [k for k, g in enumerate(geoms) if g is not None and not g.is_empty]
    judged = {k: _judge(prob, valid, geoms[k], ids[k], p) for k in present}
    judged = {k: c for k, c in judged.items() if c is not None}
    # a shift must not take pixels another building explains, as mapped or corrected (one the
    # prediction misses would slide onto its neighbour): search again without them
    placed = {k: geoms[k] for k in present} | {k: c.geometry for k, c in judged.items()}
    claims = _burn([(g, k + 1) for k, g in placed.items()], prob.shape, np.int32)
    for k, c in judged.items():
        if c.status == "shifted":
            judged[k] = _judge(prob, valid, geoms[k], ids[k], p, claims, k + 1)
    # existing footprints (judged or not) and corrections explain the predicted pixels under them
    known = [geoms[k] for k in present] + [c.geometry for c in judged.values() if c.status == "shifted"]
    explained = ndimage.binary_dilation(_burn([(g, 1) for g in known], prob.shape, np.uint8) > 0, iterations=2)
    return list(judged.values()) + _new_buildings(prob, valid, explained, p)


def _burn(shapes: list[tuple[object, int]], shape: tuple[int, int], dtype: type) -> np.ndarray:
    """Rasterise (geometry, value) pairs (pixel coordinates) on an (H, W) grid, 0 elsewhere."""
    if not shapes:
        return np.zeros(shape, dtype)
    return rasterio.features.rasterize(shapes, shape, transform=Affine.identity(), dtype=dtype)


def counts(changes: list[Change]) -> dict[str, int]:
    """Number of changes per status."""
    return {s: sum(c.status == s for c in changes) for s in STATUSES}
