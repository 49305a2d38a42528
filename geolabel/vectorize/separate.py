"""One object per building: touching buildings in a predicted mask split apart along their necks.

A model trained on OSM masks paints touching buildings as one blob. Where two buildings meet
along a junction narrower than their bodies, the blob's distance to the background has one
peak per building; a watershed of that distance seeded by the building cores (pixels further
than `core_m` from the background) splits the blob along the junctions (the classic
distance-transform watershed). The split is carved into the class raster as a one-pixel line
of background, so every polygoniser, which outlines 4-connected regions, then returns one
polygon per building.
"""

from __future__ import annotations

import edt
import numpy as np
from scipy import ndimage

DEFAULT_CORE_M = 1.0
"""Cores are further than this from the background: junctions narrower than 2 m get split."""
DEFAULT_NECK_RATIO = 0.6
"""A junction at least this fraction of the thinner piece's width is a wing, not a neck."""
DEFAULT_MIN_CONFIDENCE = 0.8
"""Objects whose mean class probability is lower are dropped when polygonising: chosen for building
F1 on held-out cities, each scored with the value chosen on the others
(benchmarks/results/generalisation-postprocessing.md)."""


def building_instances(mask: np.ndarray, pixel_size: float, core_m: float = DEFAULT_CORE_M,
                       neck_ratio: float = DEFAULT_NECK_RATIO) -> np.ndarray:
    """Instance ids (int32, 0 = background) of a boolean building mask, touching buildings apart.

    Args:
        mask: (h, w) True on building pixels.
        pixel_size: ground metres per pixel.
        core_m: distance to the background that makes a pixel a building core; a blob whose
            cores fall apart into several pieces becomes that many buildings, a blob with no
            core (narrower than 2 x `core_m`) stays one building.
        neck_ratio: pieces stay apart only where their junction is narrower than this fraction
            of the thinner piece's width (`_merge_wide_junctions`).
    """
    mask = np.asarray(mask, bool)
    distance = distance_to_background(mask)
    core_px = core_m / pixel_size
    blobs, n_blobs = ndimage.label(mask)
    cores, n_cores = ndimage.label(distance >= core_px)
    core_blob = np.zeros(n_cores + 1, np.int64)
    core_blob[cores] = blobs  # every core lies inside one blob
    split = np.flatnonzero(np.bincount(core_blob[1:], minlength=n_blobs + 1) >= 2)
    instances = blobs.astype(np.int32)  # a blob with one core or none is one building
    boxes, next_id = ndimage.find_objects(blobs), n_blobs + 1
    by_blob = np.argsort(core_blob[1:], kind="stable") + 1  # core ids grouped by blob
    sorted_blobs = core_blob[by_blob]
    starts, ends = np.searchsorted(sorted_blobs, split), np.searchsorted(sorted_blobs, split, side="right")
    local = np.zeros(n_cores + 1, np.int32)
    for blob, start, end in zip(split, starts, ends):  # only blobs with several cores are flooded: few, and small
        own = by_blob[start:end]
        box = boxes[blob - 1]
        inside, near = np.pad(blobs[box] == blob, 1), np.pad(distance[box], 1)
        local[own] = np.arange(1, len(own) + 1)
        pieces = _flood(np.where(inside, local[np.pad(cores[box], 1)], 0), near, inside, core_px)
        pieces = _merge_wide_junctions(pieces, near, neck_ratio)[1:-1, 1:-1]
        inside = inside[1:-1, 1:-1]
        instances[box][inside] = pieces[inside] + (next_id - 1)
        next_id += len(own)
    return instances


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels, float64) of every True pixel to the nearest False one: the
    values of `scipy.ndimage.distance_transform_edt`, from `edt`'s kernel (6x faster: the
    largest cost of separation). Its float32 result squared and rounded is the exact integer
    squared distance, so the square root is scipy's to the last bit. inf where `mask` has no
    False pixel."""
    squared = np.square(edt.edt(mask, black_border=False, parallel=1), dtype=np.float64)
    return np.sqrt(np.rint(squared, out=squared), out=squared)


def _flood(seeds: np.ndarray, distance: np.ndarray, inside: np.ndarray, core_px: float) -> np.ndarray:
    """Watershed of one blob (`inside`, padded by a ring of outside pixels) from its cores
    (`seeds`): each pixel joins the core whose flood reaches it first as the level falls from
    the cores to the blob's edge (depth = `distance`, clipped at `core_px`).

    `ndimage.watershed_ift` weighs a step by the difference of the two pixels' values, so the
    depth goes on the black squares of a checkerboard and 0 on the white ones: every 4-neighbour
    step then weighs the depth of its black pixel, and a path its deepest-reaching level. Outside
    pixels weigh more than any inside step, so no flood leaves the blob.
    """
    rows, cols = np.indices(inside.shape)
    depth = np.round((1.0 - np.minimum(distance, core_px) / core_px) * 32767).astype(np.uint16)
    levels = np.where(inside, np.where((rows + cols) % 2 == 0, depth, 0), 65535).astype(np.uint16)
    return np.where(inside, ndimage.watershed_ift(levels, seeds.astype(np.int32)), 0).astype(np.int32)


def _merge_wide_junctions(labels: np.ndarray, distance: np.ndarray, neck_ratio: float) -> np.ndarray:
    """Join neighbouring pieces whose junction is not a neck: its widest point (the saddle of the
    distance) reaches `neck_ratio` x the thinner piece's own half-width (its distance peak), as
    where a wing or porch meets its house along its whole width."""
    n = int(labels.max())
    pairs, saddles = [], []
    for a, b, da, db in ((labels[:, :-1], labels[:, 1:], distance[:, :-1], distance[:, 1:]),
                         (labels[:-1, :], labels[1:, :], distance[:-1, :], distance[1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])
        pairs.append(lo.astype(np.int64) * (n + 1) + hi)
        saddles.append(np.minimum(da[touch], db[touch]))
    keys, saddle = np.concatenate(pairs), np.concatenate(saddles)
    if not len(keys):
        return labels
    unique, inverse = np.unique(keys, return_inverse=True)
    widest = np.zeros(len(unique))
    np.maximum.at(widest, inverse, saddle)
    peak = np.zeros(n + 1)
    np.maximum.at(peak, labels.ravel(), distance.ravel())  # per-piece maximum; ndimage.maximum sorts (30x slower)
    parent = np.arange(n + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key, width in zip(unique.tolist(), widest.tolist()):
        a, b = divmod(key, n + 1)
        if width >= neck_ratio * min(peak[a], peak[b]):
            parent[root(a)] = root(b)
    roots = np.array([root(i) for i in range(n + 1)])
    return roots[labels].astype(np.int32)


def carve_instances(instances: np.ndarray) -> np.ndarray:
    """Boolean mask of `instances` with a one-pixel gap wherever two ids touch (4-neighbourhood):
    its 4-connected regions are the instances. A jagged junction can leave slivers of an
    instance cut off from its body: only each instance's largest piece is kept."""
    ids = np.asarray(instances)
    keep = ids > 0
    right = (ids[:, :-1] != ids[:, 1:]) & (ids[:, 1:] > 0)
    down = (ids[:-1, :] != ids[1:, :]) & (ids[1:, :] > 0)
    keep[:, :-1] &= ~right
    keep[:-1, :] &= ~down
    pieces, n = ndimage.label(keep)
    if n == 0:
        return keep
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)
    owner[pieces[keep]] = ids[keep]
    order = np.lexsort((-sizes[1:], owner[1:])) + 1  # by instance, largest piece first
    largest = np.zeros(n + 1, bool)
    first = np.ones(len(order), bool)
    first[1:] = owner[order[1:]] != owner[order[:-1]]
    largest[order[first]] = True
    return largest[pieces]


def separate_buildings(classes: np.ndarray, building: int, pixel_size: float, core_m: float = DEFAULT_CORE_M,
                       background: int = 0, neck_ratio: float = DEFAULT_NECK_RATIO) -> np.ndarray:
    """`classes` with the `building` class cut into one 4-connected region per building
    (gap pixels become `background`); other classes are left as they are."""
    classes = np.asarray(classes)
    mask = classes == building
    if not mask.any():
        return classes
    kept = carve_instances(building_instances(mask, pixel_size, core_m, neck_ratio))
    out = classes.copy()
    out[mask & ~kept] = background
    return out
