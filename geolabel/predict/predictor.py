"""Predict any-size rasters window by window: bounded memory, I/O overlapped with compute.

`predict_raster(predict_fn, input, out_dir)` slides fixed-size overlapping windows over
the raster in row-major order. A reader thread reads and batches windows, the calling
thread runs `predict_fn` on each batch (a compiled Keras step, or a TF Serving client:
`predict_fn` is the seam), and a writer thread blends the window probabilities into
output tiles with smooth weights and writes each tile as soon as no later window
touches it. Only the tiles under the current row of windows are held, so memory does
not grow with the raster's height, and bounded queues keep at most a few batches in
flight.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

from geolabel.atomic import atomic_path
from geolabel.classes import IGNORE, ClassMap
from geolabel.data.imagery import InputScaling
from geolabel.data.raster import STREAMING_CACHE_MB, RasterWriter, open_raster, streaming_env
from geolabel.data.standardize import BandStats, raster_band_stats, standardize
from geolabel.errors import InputError
from geolabel.predict.windows import blend_weights, plan_windows, window_geometry
from geolabel.progress import logger, progress

PredictFn = Callable[[np.ndarray], np.ndarray]
"""A batch of float32 windows (B, H, W, C) in [0, 255] -> probabilities (B, H, W, K)."""
TileListener = Callable[[int, int, np.ndarray, np.ndarray, ClassMap], None]
"""Told of each written output tile: (row, col, classes (h, w), probabilities (K, h, w) as written, class map)."""

PALETTE = [(0, 0, 0), (230, 25, 75), (255, 225, 25), (60, 180, 75), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]
_STOP = object()


# --------------------------------------------------------------------------- models


class KerasPredictor:
    """A `predict_fn` running a Keras segmentation model as one compiled step per batch shape and
    test-time transform count (the transforms and their float32 mean inside the step).

    Args:
        model: a Keras model following geolabel's model contract.
        jit_compile: compile the step with XLA (TensorFlow backend; `jax` always compiles).
        precision: compute precision (`geolabel.precision`; "auto": bfloat16 on CPUs with bf16
            units, float16 on GPUs); probabilities come back float32 whatever it is.

    Attributes:
        stride: window sides must be a multiple of this (from `geolabel.models.stride_of`).
    """

    def __init__(self, model: Any, jit_compile: bool = False, precision: str = "auto"):
        import keras

        from geolabel.precision import resolve_precision

        self.model = model
        self.backend = keras.backend.backend()
        self.jit_compile = jit_compile
        self.precision = resolve_precision(precision) if self.backend == "tensorflow" else "float32"
        try:
            from geolabel.models import stride_of

            self.stride = int(stride_of(model))
        except Exception:  # a foreign model: no stride requirement known
            self.stride = 1
        self.channels = int(model.inputs[0].shape[-1]) if getattr(model, "inputs", None) else None
        self._steps: dict[int, Callable[[np.ndarray], np.ndarray]] = {}  # transform count -> compiled step

    def _compile(self, transforms: int) -> Callable[[np.ndarray], np.ndarray]:
        import keras

        ks = TTA_TRANSFORMS[check_tta(transforms)]
        model = self.model
        if self.backend == "tensorflow":
            import tensorflow as tf

            from geolabel.precision import with_precision
            from geolabel.predict.fused import with_fused_group_norm, with_portable_rewrites

            model = with_portable_rewrites(with_fused_group_norm(with_precision(model, self.precision)))

        def averaged(x: Any) -> Any:  # the transforms inside the step: no numpy round trip per transform
            total = None
            for k in ks:
                out = keras.ops.cast(model(_d4(x, k, keras.ops), training=False), "float32")
                out = _d4_inverse(out, k, keras.ops)
                total = out if total is None else total + out
            return total / len(ks) if len(ks) > 1 else total

        if self.backend == "tensorflow":
            # One trace per window shape: relaxing H and W to None would break bilinear
            # upsampling in Keras 3, and predict_raster keeps a single shape anyway.
            step = tf.function(averaged, jit_compile=self.jit_compile)
            return lambda batch: np.asarray(step(tf.convert_to_tensor(batch)), np.float32)
        if self.backend == "jax":
            import jax

            jitted = jax.jit(averaged)
            return lambda batch: np.asarray(jitted(batch), np.float32)
        return lambda batch: tta_predict(lambda x: np.asarray(model.predict_on_batch(x)), batch, transforms=transforms)

    def __call__(self, batch: np.ndarray, transforms: int = 1) -> np.ndarray:
        """Probabilities of `batch`, averaged over `transforms` dihedral transforms (`tta_predict`)."""
        if transforms not in self._steps:
            self._steps[transforms] = self._compile(transforms)
        return self._steps[transforms](np.asarray(batch, np.float32))


def keras_predict_fn(model: Any, jit_compile: bool = False, precision: str = "auto") -> KerasPredictor:
    """A `predict_fn` for `predict_raster` from a Keras model (compiled once per window shape)."""
    return KerasPredictor(model, jit_compile=jit_compile, precision=precision)


# --------------------------------------------------------------------------- D4 test-time augmentation


def _rot90(batch: Any, k: int, ops: Any) -> Any:
    """`np.rot90(batch, k, axes=(1, 2))` from flips and a transpose: Keras 3.15's `ops.rot90` gets
    non-square TensorFlow tensors wrong for k > 1 (tensorflow#127248, fixed by keras#23435)."""
    k %= 4
    if k == 2:
        return ops.flip(ops.flip(batch, axis=1), axis=2)
    if k == 0:
        return batch
    return ops.flip(ops.transpose(batch, (0, 2, 1, 3)), axis=1 if k == 1 else 2)


def _d4(batch: Any, k: int, ops: Any = np) -> Any:
    """Transform k (0..7) of the dihedral group on (B, H, W, C): k % 4 quarter turns, then a flip if k >= 4.
    `ops`: numpy, or keras.ops inside a compiled step."""
    out = _rot90(batch, k, ops)
    return ops.flip(out, axis=2) if k >= 4 else out


def _d4_inverse(batch: Any, k: int, ops: Any = np) -> Any:
    if k >= 4:
        batch = ops.flip(batch, axis=2)
    return _rot90(batch, -k, ops)


def _d4_vectors_inverse(field: np.ndarray, k: int) -> np.ndarray:
    """Turn (dx, dy) vectors predicted under transform k back to the untransformed frame."""
    dx, dy = field[..., 0], field[..., 1]
    if k >= 4:
        dx = -dx
    for _ in range(k % 4):  # a quarter turn maps (dx, dy) to (dy, -dx); undo it
        dx, dy = -dy, dx
    return np.stack([dx, dy], axis=-1)


TTA_TRANSFORMS = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}
"""Dihedral transforms (`_d4`'s k) averaged for each `tta` count: a subgroup each time (identity;
+ mirror; + half turn and its mirror; all of D4), so every count treats directions evenly."""
DEFAULT_TTA = 2
"""Transforms `geolabel predict` averages unless told: on unseen cities the mirror pair gains as much
building F1 as all eight at a quarter of their cost (`benchmarks/results/generalisation.md`)."""


def check_tta(tta: int) -> int:
    """`tta` as a transform count, or InputError naming the option."""
    if isinstance(tta, bool) or tta not in TTA_TRANSFORMS:
        raise InputError("--tta", f"{tta!r} transforms: use one of {', '.join(map(str, TTA_TRANSFORMS))}")
    return int(tta)


def tta_predict(
    predict_fn: PredictFn | Callable[[list[np.ndarray]], np.ndarray],
    inputs: np.ndarray | list[np.ndarray],
    vectors: bool = False,
    transforms: int = 8,
) -> np.ndarray:
    """Mean of `predict_fn` over `transforms` dihedral transforms of square windows (`TTA_TRANSFORMS`),
    mapped back; 1 is the plain prediction.

    Args:
        inputs: a (B, H, W, C) batch, or a list of them transformed alike (image and map).
        vectors: the output is a displacement field (dx, dy): its vectors turn with the
            windows, so a bias in a fixed direction averages out instead of adding up.
        transforms: 1, 2, 4 or 8.
    """
    ks = TTA_TRANSFORMS[check_tta(transforms)]
    if isinstance(predict_fn, KerasPredictor) and not vectors and not isinstance(inputs, (list, tuple)):
        return predict_fn(inputs, transforms=transforms)  # the transforms run inside its compiled step
    if ks == (0,):
        return np.asarray(predict_fn(inputs), np.float32)
    total = None
    for k in ks:
        x = [np.ascontiguousarray(_d4(a, k)) for a in inputs] if isinstance(inputs, (list, tuple)) \
            else np.ascontiguousarray(_d4(inputs, k))
        out = _d4_inverse(np.asarray(predict_fn(x), np.float32), k)
        if vectors:
            out = _d4_vectors_inverse(out, k)
        total = out.copy() if total is None else total + out
    return total / len(ks)


# --------------------------------------------------------------------------- result


@dataclass
class PredictResult:
    """What `predict_raster` wrote and how long it took."""

    classes: Path
    probabilities: Path
    preview: Path | None
    width: int
    height: int
    windows: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    window: int = 0
    """Side of the windows run (the requested window fitted to the raster: `window_geometry`)."""

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)


def _class_map(classes: ClassMap | Sequence[str] | None, k: int) -> ClassMap:
    if isinstance(classes, ClassMap):
        cmap = classes
    elif classes is not None:
        names = tuple(classes)
        cmap = ClassMap(names, tuple(PALETTE[i % len(PALETTE)] for i in range(len(names))))
    elif k == 2:
        cmap = ClassMap()
    else:
        names = ("background", "building", "road")[:k] if k <= 3 else tuple(f"class{i}" for i in range(k))
        cmap = ClassMap(names, tuple(PALETTE[i % len(PALETTE)] for i in range(k)))
    if cmap.num_classes != k:
        raise InputError("classes", f"{cmap.num_classes} class names given but the model predicts {k} classes")
    return cmap


# --------------------------------------------------------------------------- the tiled accumulator


def argmax_planes(planes: np.ndarray) -> np.ndarray:
    """uint8 argmax over the first axis of (K, h, w), one whole plane at a time.

    Same result as `np.argmax(planes, axis=0)` (ties go to the lower class), ~5x faster for
    the few classes of a segmentation: numpy's argmax walks the K values of each pixel.
    """
    best = planes[0]
    classes = np.zeros(planes.shape[1:], np.uint8)
    for k in range(1, len(planes)):
        better = planes[k] > best
        classes = better.view(np.uint8) if k == 1 else np.where(better, np.uint8(k), classes)
        if k + 1 < len(planes):
            best = np.maximum(best, planes[k])
    return classes


class _Blender:
    """Weighted sums of window probabilities in output tiles; writes a tile once no later window touches it.

    Tiles hold class planes (K, h, w) plus the weight sum; each window is weighted once into a
    reused buffer and finished tiles' buffers are recycled, so blending allocates (and
    page-faults) nothing per window after the first row of tiles. `write(row, col, planes,
    valid)` gets the finished tile's probability planes and may change them in place.
    """

    def __init__(self, plan, tile: int, weights: np.ndarray, write: Callable[[int, int, np.ndarray, np.ndarray], None]):
        self.plan, self.tile, self.weights, self.write = plan, tile, weights, write
        self.tiles: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.peak_tiles = 0
        self._weighted: np.ndarray | None = None
        self._free: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]] = {}
        ncols = len(plan.cols)
        # the last window (row-major index) touching each tile row / tile column
        last_row: dict[int, int] = {}
        for i, r in enumerate(plan.rows):
            for ti in range(r // tile, (min(r + plan.size, plan.height) - 1) // tile + 1):
                last_row[ti] = i
        last_col: dict[int, int] = {}
        for j, c in enumerate(plan.cols):
            for tj in range(c // tile, (min(c + plan.size, plan.width) - 1) // tile + 1):
                last_col[tj] = j
        self.finish_after: dict[int, list[tuple[int, int]]] = {}
        for ti, i in last_row.items():
            for tj, j in last_col.items():
                self.finish_after.setdefault(i * ncols + j, []).append((ti, tj))

    def _tile_buffers(self, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed (K + 1, h, w) sums (class planes, then the weight sum) and an (h, w) valid mask."""
        free = self._free.get(shape)
        if free:
            sums, valid = free.pop()
            sums.fill(0.0)
            valid.fill(False)
            return sums, valid
        return np.zeros(shape, np.float32), np.zeros(shape[1:], bool)

    def add(self, index: int, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Blend the (size, size, K) probabilities of window `index` at (row, col) in."""
        size, tile, plan = self.plan.size, self.tile, self.plan
        k = probs.shape[-1]
        if self._weighted is None or self._weighted.shape[0] != k:
            self._weighted = np.empty((k, size, size), np.float32)
        np.multiply(np.moveaxis(probs, -1, 0), self.weights, out=self._weighted)
        r_end, c_end = min(row + size, plan.height), min(col + size, plan.width)
        for ti in range(row // tile, (r_end - 1) // tile + 1):
            t_r0, t_r1 = ti * tile, min((ti + 1) * tile, plan.height)
            r0, r1 = max(row, t_r0), min(r_end, t_r1)
            for tj in range(col // tile, (c_end - 1) // tile + 1):
                t_c0, t_c1 = tj * tile, min((tj + 1) * tile, plan.width)
                c0, c1 = max(col, t_c0), min(c_end, t_c1)
                acc = self.tiles.get((ti, tj))
                if acc is None:
                    acc = self.tiles[(ti, tj)] = self._tile_buffers((k + 1, t_r1 - t_r0, t_c1 - t_c0))
                sums, acc_valid = acc
                src = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
                dst = (slice(r0 - t_r0, r1 - t_r0), slice(c0 - t_c0, c1 - t_c0))
                sums[(slice(0, k), *dst)] += self._weighted[(slice(None), *src)]
                sums[(k, *dst)] += self.weights[src]
                acc_valid[dst] |= valid[src]
        self.peak_tiles = max(self.peak_tiles, len(self.tiles))
        for key in self.finish_after.pop(index, ()):
            sums, acc_valid = self.tiles.pop(key)
            sums[:k] /= sums[k]
            self.write(key[0] * tile, key[1] * tile, sums[:k], acc_valid)
            self._free.setdefault(sums.shape, []).append((sums, acc_valid))


# --------------------------------------------------------------------------- prediction


def _valid_mask(src, block: np.ndarray, window: Window, boundless: bool) -> np.ndarray:
    """(h, w) True where the input holds data (nodata value, NaN, alpha or internal mask)."""
    if src.nodata is not None:
        nodata = src.nodata
        invalid = np.isnan(block).all(axis=0) if np.isnan(nodata) else (block == nodata).all(axis=0)
        valid = ~invalid
    elif any(MaskFlags.alpha in f or MaskFlags.per_dataset in f for f in src.mask_flag_enums):
        valid = src.read_masks(1, window=window, boundless=boundless) > 0
    else:
        valid = np.ones(block.shape[1:], bool)
    if np.issubdtype(block.dtype, np.floating):
        valid &= np.isfinite(block).all(axis=0)
    return valid


def predict_raster(
    predict_fn: PredictFn | Any,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    window: int = 1024,
    overlap: int = 64,
    fit_to_raster: bool = True,
    batch_size: int = 1,
    tta: int = DEFAULT_TTA,
    classes: ClassMap | Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    scene_norm: bool | BandStats = False,
    scene_contrast: bool = True,
    tile: int = 512,
    probability_dtype: str = "uint8",
    preview: bool = True,
    preview_size: int = 1024,
    queue_size: int = 3,
    compress: str = "deflate",
    compress_level: int | None = 3,
    gdal_cache_mb: int = STREAMING_CACHE_MB,
    precision: str = "auto",
    tags: dict[str, str] | None = None,
    scaling: InputScaling | None = None,
    on_tile: TileListener | None = None,
) -> PredictResult:
    """Label every pixel of a raster with `predict_fn`; write classes.tif, probabilities.tif, preview.png.

    Args:
        predict_fn: batch of float32 windows (B, H, W, C) -> probabilities (B, H, W, K); a
            Keras model is wrapped with `keras_predict_fn`.
        input_path: any GDAL raster (any CRS); its nodata value, alpha band or mask is respected.
        out_dir: output folder (created).
        window: largest window side in pixels (rounded up to the model's stride).
        overlap: pixels shared by neighbouring windows, blended with smooth weights.
        fit_to_raster: shrink the window to the smallest side that needs as many windows
            (`fit_window`: less overlap recomputed); False runs `window` as given (Beam
            blocks, which must reproduce the whole raster's windows).
        batch_size: windows per `predict_fn` call (a last partial batch is padded to it). One is
            fastest on CPU: whole windows keep both cores busy, and single images take
            `GroupNorm`'s fused path.
        tta: dihedral transforms averaged per window (test-time augmentation: 1 = off, 2, 4 or 8 =
            all of D4; `TTA_TRANSFORMS`), each one more model run.
        classes: class names or a ClassMap (default: by the number of classes predicted).
        bands: 1-based input bands fed to the model (default: the first C, C from the model).
        scene_norm: map the raster's band statistics to the reference first, as for a model
            trained with `TrainConfig.scene_norm`; a `BandStats` gives the statistics (of the
            raster's bands, before `scene_contrast`) instead of reading them, e.g. for a block
            of a larger scene. A `predict_fn` with `standardizes_scenes` (a served export that
            standardises in its graph) gets them through `predict_fn.for_scene(stats)` and raw pixels.
        scene_contrast: with `scene_norm`, also match the band standard deviations
            (`TrainConfig.scene_contrast`).
        tile: output tile (and COG block) side in pixels.
        probability_dtype: "uint8" (probability x 255, 0 on nodata) or "float32" (NaN on nodata).
        preview: also write preview.png (input with the classes overlaid).
        preview_size: longest side of the preview in pixels.
        queue_size: batches in flight between the reader, the model and the writer.
        compress: compression of the COGs.
        compress_level: its level; 3 writes the COGs ~2.3x faster than GDAL's default 6
            (deflate) for files ~15% larger.
        gdal_cache_mb: GDAL block cache while predicting (`geolabel.data.raster.streaming_env`).
        precision: compute precision of a Keras model given as `predict_fn` (`keras_predict_fn`).
        tags: extra metadata tags for both COGs (e.g. the model's attribution).
        scaling: how the model's training chips were made from their imagery (`load_run_input`):
            its bands are the default `bands`, and 16-bit input is stretched to uint8 as they were.
        on_tile: called with each output tile as it is written (row, col, classes, probabilities
            as written, class map), e.g. `geolabel.vectorize.polygons.StreamedPolygons.add`.

    Returns:
        PredictResult with the output paths and timings.

    Outputs have the input's CRS, transform and size; `classes.tif` is uint8 with 255
    (geolabel.classes.IGNORE) on nodata. On any error nothing appears under the output names.
    """
    out = Path(out_dir)

    def open_files(stack: contextlib.ExitStack, grid: _Grid, cmap: ClassMap, file_tags: dict[str, str]) -> _Outputs:
        common = dict(width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform, blocksize=tile,
                      compress=compress, compress_level=compress_level)
        return _Outputs(
            stack.enter_context(RasterWriter(out / "classes.tif", count=1, dtype="uint8", nodata=IGNORE,
                                             band_descriptions=["class"], colormap=cmap.colormap(),
                                             overview_resampling="nearest", tags=file_tags, **common)).write,
            stack.enter_context(RasterWriter(
                out / "probabilities.tif", count=cmap.num_classes, dtype=probability_dtype,
                nodata=None if probability_dtype == "uint8" else float("nan"), band_descriptions=list(cmap.names),
                overview_resampling="average", tags=probability_tags(file_tags, probability_dtype), **common)).write)

    start = time.perf_counter()
    with streaming_env(gdal_cache_mb):
        run = _predict(predict_fn, input_path, None, open_files, window=window, overlap=overlap,
                       fit_to_raster=fit_to_raster, batch_size=batch_size, tta=tta, classes=classes, bands=bands,
                       scene_norm=scene_norm, scene_contrast=scene_contrast, tile=tile,
                       probability_dtype=probability_dtype, preview_size=preview_size if preview else 0,
                       queue_size=queue_size, precision=precision, tags=tags, scaling=scaling, on_tile=on_tile)
    preview_path = None
    if run.canvas is not None:
        preview_path = render_preview(run.canvas.image, run.src_dtype, run.canvas.classes, run.cmap, out / "preview.png")
    return PredictResult(out / "classes.tif", out / "probabilities.tif", preview_path, run.grid.width, run.grid.height,
                         run.windows, time.perf_counter() - start, run.timings, run.size)


@dataclass
class RegionPrediction:
    """What `predict_region` computed for a window of a raster: arrays on that window's grid."""

    classes: np.ndarray
    """(h, w) uint8 class ids, `IGNORE` on nodata."""
    probabilities: np.ndarray
    """(K, h, w) probabilities as `probability_dtype` (uint8 x 255, 0 on nodata; or float32, NaN on nodata)."""
    class_map: ClassMap
    tags: dict[str, str]
    """The metadata tags `predict_raster` gives classes.tif (`probability_tags` for probabilities.tif)."""


def predict_region(predict_fn: PredictFn | Any, input_path: str | os.PathLike, region: Window, *, window: int = 1024,
                   overlap: int = 64, fit_to_raster: bool = True, batch_size: int = 1, tta: int = DEFAULT_TTA,
                   classes: ClassMap | Sequence[str] | None = None, bands: Sequence[int] | None = None,
                   scene_norm: bool | BandStats = False, scene_contrast: bool = True, tile: int = 512,
                   probability_dtype: str = "uint8", queue_size: int = 3, precision: str = "auto",
                   tags: dict[str, str] | None = None, scaling: InputScaling | None = None, **_files: Any,
                   ) -> RegionPrediction:
    """`predict_raster` on `region` of the input as if it were the whole raster (pixels beyond it are
    nodata), returned as arrays instead of files: what a Beam block computes, with no file in
    between. Options as `predict_raster`'s (those about output files are ignored)."""
    region = Window(int(region.col_off), int(region.row_off), int(region.width), int(region.height))
    arrays: dict[str, np.ndarray] = {}

    def open_arrays(stack: contextlib.ExitStack, grid: _Grid, cmap: ClassMap, file_tags: dict[str, str]) -> _Outputs:
        arrays["classes"] = np.full((grid.height, grid.width), IGNORE, np.uint8)
        arrays["probabilities"] = np.zeros((cmap.num_classes, grid.height, grid.width), probability_dtype)

        def into(name: str) -> Callable[[np.ndarray, Window], None]:
            def write(data: np.ndarray, win: Window) -> None:
                rows, cols = slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width)
                arrays[name][..., rows, cols] = data
            return write

        return _Outputs(into("classes"), into("probabilities"))

    run = _predict(predict_fn, input_path, region, open_arrays, window=window, overlap=overlap,
                   fit_to_raster=fit_to_raster, batch_size=batch_size, tta=tta, classes=classes, bands=bands,
                   scene_norm=scene_norm, scene_contrast=scene_contrast, tile=tile, probability_dtype=probability_dtype,
                   preview_size=0, queue_size=queue_size, precision=precision, tags=tags, scaling=scaling)
    return RegionPrediction(arrays["classes"], arrays["probabilities"], run.cmap, run.file_tags)


def probability_tags(tags: dict[str, str], probability_dtype: str) -> dict[str, str]:
    """probabilities.tif's tags: classes.tif's and the scale of its values."""
    return {**tags, "scale": "1/255" if probability_dtype == "uint8" else "1"}


@dataclass
class _Grid:
    width: int
    height: int
    crs: Any
    transform: Any


@dataclass
class _Outputs:
    """Where finished tiles go: (data, window) writers of the classes and of the probabilities."""

    classes: Callable[[np.ndarray, Window], None]
    probabilities: Callable[[np.ndarray, Window], None]


@dataclass
class _Run:
    grid: _Grid
    windows: int
    size: int
    cmap: ClassMap
    file_tags: dict[str, str]
    timings: dict[str, float]
    canvas: Any
    src_dtype: str


def _predict(predict_fn, input_path, region: Window | None, open_outputs, *, window, overlap, fit_to_raster,
             batch_size, tta, classes, bands, scene_norm, scene_contrast, tile, probability_dtype, preview_size,
             queue_size, precision, tags, scaling, on_tile: TileListener | None = None) -> _Run:
    """The windowed prediction of `region` (None: the whole raster), its tiles handed to
    `open_outputs(stack, grid, class_map, tags)`'s writers as they finish."""
    if probability_dtype not in ("uint8", "float32"):
        raise InputError("probability_dtype", f"must be uint8 or float32, got {probability_dtype!r}")
    check_tta(tta)
    if batch_size < 1:
        raise InputError("--batch-size", "must be >= 1")
    if tile % 16:
        raise InputError("tile", "must be a multiple of 16")
    if hasattr(predict_fn, "inputs") and hasattr(predict_fn, "predict_on_batch"):
        predict_fn = keras_predict_fn(predict_fn, precision=precision)
    stride = int(getattr(predict_fn, "stride", 1) or 1)
    with open_raster(input_path) as src:
        region = region or Window(0, 0, src.width, src.height)
        width, height, crs = int(region.width), int(region.height), src.crs
        transform = src.window_transform(region)
        channels = getattr(predict_fn, "channels", None)
        default = list(scaling.bands) if scaling else list(range(1, (channels or min(src.count, 3)) + 1))
        band_list = list(bands) if bands else default
        if max(band_list) > src.count or min(band_list) < 1:
            raise InputError(input_path, f"has {src.count} bands; bands {band_list} were asked for")
        if channels is not None and len(band_list) != channels:
            raise InputError("--bands", f"the model takes {channels} bands, {len(band_list)} given")
        size, overlap = window_geometry(width, height, window, overlap, stride, fit=fit_to_raster)
        plan = plan_windows(width, height, size, overlap)
        src_nodata = src.nodata
        src_dtype = src.dtypes[0]
    stats = scene_stats = None  # what the pixels are standardised with here, and the scene's
    if scene_norm is not False:
        scene_stats = scene_norm if isinstance(scene_norm, BandStats) else raster_band_stats(input_path, band_list, scaling)
        if getattr(predict_fn, "standardizes_scenes", False):  # the served graph standardises
            predict_fn = predict_fn.for_scene(scene_stats)
        else:
            stats = scene_stats.with_contrast(scene_contrast)
    nodata_value = getattr(predict_fn, "nodata_value", 0.0)
    weights = blend_weights(size, overlap)
    positions = list(plan)
    batches = [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]
    logger.info("predict %s: %dx%d px, %d windows of %d px (overlap %d), %d batches",
                input_path, width, height, len(positions), size, overlap, len(batches))

    canvas = _PreviewCanvas(width, height, preview_size) if preview_size else None
    stop = threading.Event()
    errors: list[BaseException] = []
    q_in: queue.Queue = queue.Queue(maxsize=queue_size)
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    timings = {"read": 0.0, "predict": 0.0, "blend_write": 0.0, "wait_input": 0.0, "windows_skipped": 0.0}

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue):
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _STOP

    def reader() -> None:
        try:
            with open_raster(input_path) as rsrc:
                fill = src_nodata if src_nodata is not None else 0
                for batch in batches:
                    t0 = time.perf_counter()
                    x = np.zeros((batch_size, size, size, len(band_list)), np.float32)
                    valid = np.zeros((len(batch), size, size), bool)
                    for b, (row, col) in enumerate(batch):
                        win = Window(region.col_off + col, region.row_off + row, size, size)
                        boundless = win.row_off + size > rsrc.height or win.col_off + size > rsrc.width
                        try:
                            block = rsrc.read(band_list, window=win, boundless=boundless, fill_value=fill)
                        except rasterio.errors.RasterioError as err:
                            raise InputError(input_path, f"cannot read window {win} ({err})") from err
                        ok = _valid_mask(rsrc, block, win, boundless)
                        if row + size > height or col + size > width:  # beyond the region: nodata, as beyond a raster
                            block[:, height - row:] = fill
                            block[:, :, width - col:] = fill
                            ok[height - row:] = False
                            ok[:, width - col:] = False
                        valid[b] = ok
                        if canvas is not None:
                            canvas.add_image(row, col, block[:3])
                        pixels = np.moveaxis(scaling.apply(block) if scaling else block, 0, -1)
                        x[b] = standardize(pixels, stats) if stats else pixels  # converted on assignment
                        if not ok.all():  # nodata (and NaN, never valid) pixels go in as 0 (or as marked)
                            x[b][~ok] = nodata_value
                    x[len(batch):] = x[len(batch) - 1]  # pad a last partial batch: one compiled shape
                    timings["read"] += time.perf_counter() - t0
                    if not put(q_in, (batch, x, valid)):
                        return
            put(q_in, None)
        except BaseException as err:  # noqa: BLE001  (re-raised in the calling thread)
            errors.append(err)
            stop.set()

    state: dict[str, Any] = {}

    def writer() -> None:
        try:
            index = 0
            while True:
                item = get(q_out)
                if item is _STOP or item is None:
                    return
                batch, probs, valid = item
                t0 = time.perf_counter()
                if "blender" not in state:
                    state["open"](probs.shape[-1])
                for b, (row, col) in enumerate(batch):
                    state["blender"].add(index, row, col, probs[b], valid[b])
                    index += 1
                timings["blend_write"] += time.perf_counter() - t0
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
            stop.set()

    with contextlib.ExitStack() as stack:

        def open_writers(k: int) -> None:
            cmap = _class_map(classes, k)
            state["cmap"] = cmap
            file_tags = {**(tags or {}), "classes": json.dumps(list(cmap.names)), "window": str(size),
                         "overlap": str(overlap), "tta": str(tta), "software": "geolabel predict"}
            if scene_stats:
                file_tags["scene_band_stats"] = json.dumps(scene_stats.with_contrast(scene_contrast).to_dict())
            state["file_tags"] = file_tags
            outputs = open_outputs(stack, _Grid(width, height, crs, transform), cmap, file_tags)

            def write_tile(row: int, col: int, planes: np.ndarray, valid: np.ndarray) -> None:
                h, w = valid.shape
                win = Window(col, row, w, h)
                cls = argmax_planes(planes)
                cls[~valid] = IGNORE
                outputs.classes(cls, win)
                if canvas is not None:
                    canvas.add_classes(row, col, cls)
                if probability_dtype == "uint8":
                    np.multiply(planes, 255.0, out=planes)  # in place: the blender's buffer is ours to change
                    np.clip(np.rint(planes, out=planes), 0, 255, out=planes)
                    planes = planes.astype(np.uint8)
                    planes[:, ~valid] = 0
                else:
                    planes[:, ~valid] = np.nan
                outputs.probabilities(planes, win)
                if on_tile is not None:
                    on_tile(row, col, cls, planes, cmap)

            state["blender"] = _Blender(plan, tile, weights, write_tile)

        state["open"] = open_writers
        threads = [threading.Thread(target=reader, name="geolabel-read", daemon=True),
                   threading.Thread(target=writer, name="geolabel-write", daemon=True)]
        for t in threads:
            t.start()
        try:
            for _ in progress(range(len(batches)), desc="predict", unit="batch"):
                t0 = time.perf_counter()
                item = get(q_in)
                timings["wait_input"] += time.perf_counter() - t0
                if item is _STOP or item is None:
                    break
                batch, x, valid = item
                if not valid.any() and "classes" in state:  # all nodata: every pixel is written as nodata
                    probs = np.zeros((*x.shape[:3], state["classes"]), np.float32)
                    timings["windows_skipped"] += len(batch)
                else:
                    t0 = time.perf_counter()
                    probs = tta_predict(predict_fn, x, transforms=tta)
                    timings["predict"] += time.perf_counter() - t0
                    state["classes"] = probs.shape[-1]
                if probs.shape[:3] != x.shape[:3]:
                    raise InputError("predict_fn", f"returned shape {probs.shape} for windows {x.shape}")
                if not put(q_out, (batch, probs[:len(batch)], valid)):
                    break
            put(q_out, None)
            threads[1].join()
        except BaseException:
            stop.set()
            raise
        finally:
            if errors:
                stop.set()
            for t in threads:
                t.join(timeout=60)
        if errors:
            raise errors[0]
        if stop.is_set() or "blender" not in state or state["blender"].tiles or state["blender"].finish_after:
            raise RuntimeError("prediction stopped before every window was written")
        peak_tiles = state["blender"].peak_tiles
    timings["peak_tiles_held"] = float(peak_tiles)
    return _Run(_Grid(width, height, crs, transform), len(positions), size, state["cmap"], state["file_tags"], timings,
                canvas, src_dtype)


def _preview_shape(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(height, width) of a preview whose longest side is at most `max_size`."""
    scale = max(max(width, height) / max_size, 1.0)
    return max(1, round(height / scale)), max(1, round(width / scale))


class _PreviewCanvas:
    """The preview's pixels, sampled (nearest) from the windows as they are read and from the
    class tiles as they are written, so the preview costs no second pass over the input."""

    def __init__(self, width: int, height: int, max_size: int):
        h, w = _preview_shape(width, height, max_size)
        self.rows = ((np.arange(h) + 0.5) * height / h).astype(np.int64)
        self.cols = ((np.arange(w) + 0.5) * width / w).astype(np.int64)
        self.image = np.zeros((3, h, w), np.float32)
        self.classes = np.full((h, w), IGNORE, np.uint8)

    def _sample(self, row: int, col: int, h: int, w: int) -> tuple[tuple, tuple]:
        """(preview index, block index) of the preview pixels inside the h x w block at (row, col)."""
        rows = np.nonzero((self.rows >= row) & (self.rows < row + h))[0]
        cols = np.nonzero((self.cols >= col) & (self.cols < col + w))[0]
        return (rows[:, None], cols[None, :]), (self.rows[rows, None] - row, self.cols[None, cols] - col)

    def add_image(self, row: int, col: int, bands: np.ndarray) -> None:
        """(bands <= 3, h, w) raw pixels of the window at (row, col)."""
        dst, src = self._sample(row, col, *bands.shape[1:])
        picked = bands[(slice(None), *src)]
        self.image[(slice(None), *dst)] = picked if len(bands) == 3 else picked[:1]

    def add_classes(self, row: int, col: int, classes: np.ndarray) -> None:
        dst, src = self._sample(row, col, *classes.shape)
        self.classes[dst] = classes[src]


def write_preview(
    image_path: str | os.PathLike,
    classes_path: str | os.PathLike,
    out_path: str | os.PathLike,
    class_map: ClassMap,
    bands: Sequence[int] = (1, 2, 3),
    max_size: int = 1024,
    alpha: float = 0.3,
) -> Path:
    """A PNG of the image (decimated to `max_size`) with the non-background classes overlaid."""
    with open_raster(image_path) as src:
        h, w = _preview_shape(src.width, src.height, max_size)
        bands = [b for b in bands if b <= src.count] or [1]
        img = src.read(list(bands), out_shape=(len(bands), h, w), resampling=Resampling.average).astype(np.float32)
        dtype = src.dtypes[0]
    with open_raster(classes_path) as src:
        cls = src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    return render_preview(img, dtype, cls, class_map, out_path, alpha)


def render_preview(image: np.ndarray, dtype: str, classes: np.ndarray, class_map: ClassMap,
                   out_path: str | os.PathLike, alpha: float = 0.3) -> Path:
    """Write (bands, h, w) `image` pixels of raster type `dtype` as a PNG with `classes` overlaid:
    cropped to the pixels with data, each class filled lightly and outlined in its colour inside
    a black halo (readable on any roof), with a legend (`geolabel.preview`). Non-uint8 rasters
    are stretched between their 2nd and 98th percentiles."""
    from PIL import Image

    from geolabel.preview import HALO, data_extent, outline_masks, with_legend

    box = data_extent(classes != IGNORE)
    img, classes = image[(slice(None), *box)].astype(np.float32), classes[box]
    if dtype != "uint8":
        finite = img[np.isfinite(img)]
        lo, hi = (np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0))
        img = (img - lo) / max(hi - lo, 1e-9) * 255.0
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    rgb = np.clip(np.nan_to_num(np.moveaxis(img[:3], 0, -1)), 0, 255)
    rgb[classes == IGNORE] *= 0.5
    shown = [k for k in range(1, class_map.num_classes) if (classes == k).any()]
    for k in shown:
        mask = classes == k
        edge, halo = outline_masks(mask)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(class_map.colors[k], np.float32)
        rgb[halo & (classes != IGNORE)] = HALO
        rgb[edge] = class_map.colors[k]
    entries = [(class_map.names[k], class_map.colors[k]) for k in range(1, class_map.num_classes)]
    if (classes == IGNORE).any():
        entries.append(("no data", (64, 64, 64)))
    legend = with_legend(Image.fromarray(rgb.astype(np.uint8)), entries, title="predicted")
    with atomic_path(out_path) as tmp:
        legend.save(tmp, format="PNG")
    return Path(out_path)
