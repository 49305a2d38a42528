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

import numpy as np
from scipy import ndimage

DEFAULT_CORE_M = 1.0
"""Cores are further than this from the background: junctions narrower than 2 m get split."""


def building_instances(mask: np.ndarray, pixel_size: float, core_m: float = DEFAULT_CORE_M) -> np.ndarray:
    """Instance ids (int32, 0 = background) of a boolean building mask, touching buildings apart.

    Args:
        mask: (h, w) True on building pixels.
        pixel_size: ground metres per pixel.
        core_m: distance to the background that makes a pixel a building core; a blob whose
            cores fall apart into several pieces becomes that many buildings, a blob with no
            core (narrower than 2 x `core_m`) stays one building.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndimage.distance_transform_edt(mask)
    core_px = core_m / pixel_size
    markers, n = ndimage.label(distance >= core_px)
    blobs, n_blobs = ndimage.label(mask)
    # blobs with no core keep their own id (the watershed would give them to the background)
    has_core = np.zeros(n_blobs + 1, bool)
    has_core[np.unique(blobs[markers > 0])] = True
    coreless = ~has_core[blobs] & mask
    markers[coreless] = blobs[coreless] + n
    background = n + n_blobs + 1
    markers[~mask] = background
    if n <= 1:  # nothing to split: one core per blob at most
        return np.where(mask, blobs, 0).astype(np.int32)
    # flood from the cores downhill in distance; the background is its own (fixed) basin
    cost = np.round((1.0 - np.minimum(distance, core_px) / core_px) * 65535).astype(np.uint16)
    labels = ndimage.watershed_ift(cost, markers.astype(np.int32))
    labels[~mask] = 0
    return labels.astype(np.int32)


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
                       background: int = 0) -> np.ndarray:
    """`classes` with the `building` class cut into one 4-connected region per building
    (gap pixels become `background`); other classes are left as they are."""
    classes = np.asarray(classes)
    mask = classes == building
    if not mask.any():
        return classes
    kept = carve_instances(building_instances(mask, pixel_size, core_m))
    out = classes.copy()
    out[mask & ~kept] = background
    return out
