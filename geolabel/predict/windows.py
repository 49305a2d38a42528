"""Sliding windows over a raster and the smooth weights that blend their predictions.

Windows have one fixed size (so a compiled predict step never retraces) and step by
`window - overlap`; the last row and column are shifted back to end on the raster's
edge, so every window lies inside the raster whenever the raster is at least one
window large. Predictions are blended with weights that rise smoothly from a small
positive value at a window's edge to 1 at `overlap` pixels inside, and the weighted
sum is divided by the summed weights: no seams, and pixels near a window's edge
(where convolutions see padding instead of context) count little.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from geolabel.errors import InputError
from geolabel.progress import progress

EDGE_WEIGHT = 1e-3
"""Weight of a window's outermost pixels (> 0, so a pixel seen by one window only is still defined)."""


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of a raster go.

    Args:
        width, height: raster size in pixels.
        size: window side in pixels.
        overlap: pixels shared by neighbouring windows.
        rows, cols: top-left row / column of each window row / column.
    """

    width: int
    height: int
    size: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(row, col) of each window's top-left pixel, row-major."""
        for row in self.rows:
            for col in self.cols:
                yield row, col


def _starts(length: int, size: int, step: int) -> tuple[int, ...]:
    if length <= size:
        return (0,)
    starts = list(range(0, length - size, step))
    starts.append(length - size)
    return tuple(starts)


def fit_window(width: int, height: int, size: int, overlap: int, stride: int = 1) -> int:
    """The smallest window side (a multiple of `stride`, at most `size`) that covers the raster
    with as few windows as `size` does: the windows then overlap by about `overlap` instead
    of the last row and column overlapping by up to a whole window, so less is recomputed.

    Example:
        >>> fit_window(8192, 8192, 1024, 64, 4)  # 9 x 9 windows either way, 1.13x instead of 1.27x the pixels
        968
    """
    step = size - overlap
    side = 0
    for length in (width, height):
        count = len(_starts(length, size, step))
        side = max(side, math.ceil((length + (count - 1) * overlap) / count))
    side = math.ceil(max(side, 2 * overlap, 16) / stride) * stride
    return min(size, side)


def window_geometry(width: int, height: int, window: int, overlap: int, stride: int = 1,
                    fit: bool = True) -> tuple[int, int]:
    """(window side, overlap) that `predict_raster` runs on a `width` x `height` raster: the
    window clamped to the raster and rounded up to the model stride, the overlap to half of
    it, then (with `fit`) the side shrunk by `fit_window`."""
    size = min(int(window), max(width, height))
    size = max(16, math.ceil(size / stride) * stride)
    overlap = min(int(overlap), size // 2)
    if fit:
        size = fit_window(width, height, size, overlap, stride)
    return size, overlap


def plan_windows(width: int, height: int, size: int, overlap: int) -> WindowPlan:
    """Window positions covering a `width` x `height` raster with `size` windows overlapping by `overlap`.

    Rasters smaller than one window get one window anchored at (0, 0) that reaches past
    the raster (the caller pads it).
    """
    if size < 16:
        raise InputError("--window", f"must be at least 16 pixels, got {size}")
    if not 0 <= overlap <= size // 2:
        raise InputError("--overlap", f"must be between 0 and half the window ({size // 2}), got {overlap}")
    if width < 1 or height < 1:
        raise InputError("raster", f"has no pixels ({width} x {height})")
    step = size - overlap
    return WindowPlan(width, height, size, overlap, _starts(height, size, step), _starts(width, size, step))


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """(size, size) float32 blending weights: a raised-cosine ramp over `overlap` pixels at each edge.

    Example:
        >>> w = blend_weights(64, 16)
        >>> float(w[32, 32]), float(w[0, 0]) > 0
        (1.0, True)
    """
    ramp = np.ones(size, np.float64)
    if overlap > 0:
        # pixel centres at 0.5 .. overlap-0.5 go smoothly from ~EDGE_WEIGHT to ~1
        t = (np.arange(overlap) + 0.5) / overlap
        edge = EDGE_WEIGHT + (1 - EDGE_WEIGHT) * 0.5 * (1 - np.cos(np.pi * t))
        ramp[:overlap] = edge
        ramp[size - overlap:] = edge[::-1]
    return np.outer(ramp, ramp).astype(np.float32)


def predict_in_tiles(
    run: Callable[[list[np.ndarray]], np.ndarray],
    arrays: Sequence[np.ndarray],
    pad_modes: Sequence[str],
    tile: int,
    margin: int,
    stride: int = 1,
    desc: str = "predict",
) -> np.ndarray:
    """The per-pixel output of `run` over in-memory (H, W, C) arrays of one scene, tile by tile.

    Each `tile` x `tile` cell (both rounded to `stride`) is run with `margin` pixels of
    context around it (the arrays padded past the scene's edge with `pad_modes`, one numpy
    pad mode per array), and only its core is kept: the result equals a whole-scene run
    wherever the model's receptive field fits in the margin, in memory bounded by the tile.
    For scenes that fit in memory (alignment, map update); rasters stream through
    `predict_raster`.

    Args:
        run: list of (1, span, span, C) float32 tiles -> (1, span, span, ...) output.
        arrays: the scene's inputs, all with the same H and W.
        pad_modes: numpy pad mode per array ("edge", "constant", ...).
        tile: core cell side; margin: context on each side.
        stride: the model's input multiple.
        desc: progress bar label.

    Returns:
        (H, W, ...) float32.
    """
    h, w = arrays[0].shape[:2]
    tile = max(stride, tile // stride * stride)
    margin = -(-margin // stride) * stride
    ph, pw = -(-h // tile) * tile, -(-w // tile) * tile
    pad = ((margin, ph - h + margin), (margin, pw - w + margin), (0, 0))
    padded = [np.pad(a, pad, mode=mode).astype(np.float32, copy=False) for a, mode in zip(arrays, pad_modes)]
    span = tile + 2 * margin
    out = None
    for r, c in progress([(r, c) for r in range(0, ph, tile) for c in range(0, pw, tile)], desc=desc, unit="tile"):
        result = np.asarray(run([p[None, r : r + span, c : c + span] for p in padded]), np.float32)
        core = result[0, margin : margin + tile, margin : margin + tile]
        if out is None:
            out = np.zeros((ph, pw, *core.shape[2:]), np.float32)
        out[r : r + tile, c : c + tile] = core
    return out[:h, :w]


MAX_PIXELS = 4_000_000_000
"""A bigger prediction job (e.g. 64,000 x 64,000 px: an hour or more on a laptop) needs `predict --yes`."""


def check_job_size(width: int, height: int, source: object, factor: float = 1.0,
                   max_pixels: int | None = MAX_PIXELS) -> int:
    """The pixels a model will see for a `width` x `height` input resampled by `factor`; an
    InputError naming `source` and the size when they exceed `max_pixels` (None: no limit)."""
    pixels = round(width * factor) * round(height * factor)
    if max_pixels is not None and pixels > max_pixels:
        raise InputError(source, f"is {width:,} x {height:,} px ({pixels / 1e9:.1f} gigapixels for the model, more "
                                 f"than the {max_pixels / 1e9:g} predicted without asking); predict a part of it, "
                                 "run it with --beam on a cluster, or pass --yes to predict it all here")
    return pixels
