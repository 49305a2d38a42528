"""Predict a raster at a model's training resolution and give the answer on the raster's own grid.

A model sees buildings at the scale it was trained on: a 0.3 m image fed to a 7.5 cm model
shows it buildings four times too small. The input is read through a GDAL warped VRT at the
model's resolution (streamed window by window, so memory stays flat), predicted, and the
probabilities are warped back onto the input grid tile by tile; classes are the argmax of
the warped-back probabilities (smooth outlines), nodata where the input had none.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geolabel.atomic import temporary_prefix
from geolabel.classes import IGNORE
from geolabel.data.raster import RasterWriter, ground_pixel_size, open_raster, streaming_env
from geolabel.errors import InputError
from geolabel.predict.predictor import PredictResult, argmax_planes, predict_raster
from geolabel.pretrained import ModelCard
from geolabel.progress import logger


def model_resampling(card: ModelCard | None, input_path: str | os.PathLike,
                     resample: bool = True) -> tuple[float, dict[str, str]]:
    """(factor for `predict_resampled`, attribution tags for the outputs) from a model's card
    (`RunInputs.card`).

    Models without a card (a user's run) predict at the input's resolution and add no tags.
    Raises InputError for inputs far coarser than the model can use.
    """
    if card is None:
        return 1.0, {}
    tags = {"model": card.name, "model_license": card.license, "attribution": card.attribution}
    if not resample:
        return 1.0, tags
    with open_raster(input_path) as src:
        if src.crs is None:
            logger.warning("%s has no CRS; predicting at its own resolution", input_path)
            return 1.0, tags
        pixel_m = math.sqrt(math.prod(ground_pixel_size(src.transform, src.crs, src.width, src.height)))
    factor = card.resampling_factor(pixel_m, str(input_path))
    if factor != 1.0:
        logger.warning("%s: %.3g m pixels, model trained at %g m: predicting on a resampled copy (x%.3g)",
                       input_path, pixel_m, card.resolution_m, factor)
    return factor, tags


def write_resampled_vrt(input_path: str | os.PathLike, factor: float, vrt_path: Path) -> None:
    """Write a VRT of `input_path` with pixels `factor` times smaller (factor > 1 = finer)."""
    with open_raster(input_path) as src:
        if src.crs is None:
            raise InputError(input_path, "has no CRS, so it cannot be resampled to the model's resolution")
        width, height = max(1, round(src.width * factor)), max(1, round(src.height * factor))
        transform = src.transform * Affine.scale(src.width / width, src.height / height)
        resampling = Resampling.bilinear if factor > 1 else Resampling.average
        with WarpedVRT(src, crs=src.crs, transform=transform, width=width, height=height,
                       resampling=resampling) as vrt:
            rasterio.shutil.copy(vrt, vrt_path, driver="VRT")


def _warp_back(stage: Path, out: Path, input_path: str | os.PathLike, tile: int, compress: str,
               compress_level: int | None) -> None:
    """Warp stage/{probabilities,classes}.tif onto the input grid, tile by tile, as out/*.tif."""
    with open_raster(input_path) as src:
        grid = dict(crs=src.crs, transform=src.transform, width=src.width, height=src.height)
        input_pixel = abs(src.res[0])
    with streaming_env(), rasterio.open(stage / "probabilities.tif") as probs_src, \
            rasterio.open(stage / "classes.tif") as cls_src, \
            WarpedVRT(probs_src, resampling=Resampling.average if abs(probs_src.res[0]) < input_pixel
                      else Resampling.bilinear, **grid) as probs_vrt, \
            WarpedVRT(cls_src, resampling=Resampling.nearest, nodata=IGNORE, **grid) as cls_vrt:
        tags = {**probs_src.tags(), "resampled_from": f"{probs_src.res[0]:.6g} {probs_src.crs.linear_units}"}
        common = dict(blocksize=tile, compress=compress, compress_level=compress_level, **grid)
        float_probs = probs_src.dtypes[0] == "float32"
        with RasterWriter(out / "classes.tif", count=1, dtype="uint8", nodata=IGNORE,
                          band_descriptions=list(cls_src.descriptions), colormap=cls_src.colormap(1),
                          overview_resampling="nearest", tags={**cls_src.tags(), **tags}, **common) as cls_w, \
                RasterWriter(out / "probabilities.tif", count=probs_src.count, dtype=probs_src.dtypes[0],
                             nodata=probs_src.nodata, band_descriptions=list(probs_src.descriptions),
                             overview_resampling="average", tags=tags, **common) as prob_w:
            for row in range(0, grid["height"], tile):
                for col in range(0, grid["width"], tile):
                    win = Window(col, row, min(tile, grid["width"] - col), min(tile, grid["height"] - row))
                    planes = probs_vrt.read(window=win)
                    invalid = cls_vrt.read(1, window=win) == IGNORE
                    classes = argmax_planes(np.nan_to_num(planes) if float_probs else planes)
                    classes[invalid] = IGNORE
                    planes[:, invalid] = np.nan if float_probs else 0
                    cls_w.write(classes, win)
                    prob_w.write(planes, win)


def predict_resampled(predict_fn: Any, input_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                      factor: float, **options: Any) -> PredictResult:
    """`predict_raster` on the input resampled by `factor` (input pixel / model pixel), written on the input grid.

    `options` are `predict_raster`'s; `on_tile` only at factor 1 (resampled, the tiles are on the
    model's grid, not the input's). The preview shows the resampled input. Nothing appears under
    the output names if any step fails.
    """
    if factor == 1.0:
        return predict_raster(predict_fn, input_path, out_dir, **options)
    if options.get("on_tile") is not None:
        raise ValueError("on_tile needs the input's own grid: the tiles of a resampled prediction are on the model's")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=temporary_prefix("resample"), dir=out) as tmp:
        stage = Path(tmp)
        vrt = stage / "input.vrt"
        write_resampled_vrt(Path(input_path).resolve() if "://" not in str(input_path) else input_path, factor, vrt)
        inner = predict_raster(predict_fn, vrt, stage / "model-grid", **options)
        _warp_back(stage / "model-grid", out, input_path, options.get("tile", 512), options.get("compress", "deflate"),
                   options.get("compress_level", 3))
        preview = None
        if inner.preview is not None:
            preview = out / inner.preview.name
            shutil.move(inner.preview, preview)
    with open_raster(out / "classes.tif") as written:
        width, height = written.width, written.height
    timings = {**inner.timings, "resample_factor": factor}
    return PredictResult(out / "classes.tif", out / "probabilities.tif", preview, width, height, inner.windows,
                         time.perf_counter() - start, timings, inner.window)
