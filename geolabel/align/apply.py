"""Apply an alignment model to a whole scene: predict the field tile by tile, move the vertices."""

from __future__ import annotations

import os
import re
from pathlib import Path

import geopandas as gpd
import keras
import numpy as np
import shapely
from scipy import ndimage

from geolabel.align.data import rasterize_map
from geolabel.align.fields import smooth_field, undisplace
from geolabel.atomic import atomic_path
from geolabel.errors import InputError
from geolabel.models import stride_of
from geolabel.predict.predictor import tta_predict
from geolabel.predict.windows import predict_in_tiles

FACTORS = (1, 1)
"""Default passes: two at full resolution, the second correcting what the first left."""
SMOOTH_PX = 24.0
"""Default width (pixels) of the Gaussian that pools the field over neighbouring buildings.
With FACTORS, chosen on validation sets other than the benchmark's test city
(benchmarks/results/alignment.md)."""


def predict_field(
    model: keras.Model, image: np.ndarray, amap: np.ndarray, tile: int = 512, margin: int = 32, tta: bool = False
) -> np.ndarray:
    """The aligning field (H, W, 2) of a whole image, predicted on overlapping tiles.

    Args:
        model: a MultiscaleAligner or AlignUpdateNet (anything returning a dict with
            `displacement`, or the field itself, from `[image, map]`).
        image: (H, W, 3) 0-255; amap: (H, W, 3) rasterised map (fill, edge, vertex).
        tile: core tile size; margin: context kept around each tile and then cropped.
        tta: average the 8 dihedral transforms of each tile (8x the work): the model's
            errors, and any pull in one direction, partly cancel.
    """

    def run(tiles: list[np.ndarray]) -> np.ndarray:
        out = model(tiles, training=False)
        return keras.ops.convert_to_numpy(out["displacement"] if isinstance(out, dict) else out)

    predict = (lambda tiles: tta_predict(run, tiles, vectors=True)) if tta else run
    return predict_in_tiles(predict, [image, amap], ("edge", "constant"), tile, margin, stride_of(model), desc="align")


def map_support(amap: np.ndarray, radius: int = 4) -> np.ndarray:
    """(H, W) 1 within `radius` pixels of the rasterised map's content, else 0: where the
    image can show the field."""
    return ndimage.maximum_filter(amap.max(axis=-1), size=2 * radius + 1)


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    x = image[:h, :w].astype(np.float32)
    return x.reshape(h // factor, factor, w // factor, factor, -1).mean(axis=(1, 3))


def align_geometries(
    model: keras.Model,
    image: np.ndarray,
    geoms: np.ndarray,
    factors: tuple[int, ...] = FACTORS,
    tile: int = 512,
    tta: bool = True,
    smooth: float = SMOOTH_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """Move each polygon's vertices by the predicted field, coarse to fine.

    At each downsampling factor (e.g. (4, 2, 1) for a single-scale AlignUpdateNet; (1,)
    or (1, 1) for the MultiscaleAligner, which chains scales inside) the image is averaged down,
    the current polygons are rasterised on that grid, the field is predicted (averaged
    over the 8 dihedral transforms with `tta`), pooled over neighbouring buildings
    (`smooth_field`, a Gaussian of `smooth` full-resolution pixels; 0 = off) and the
    vertices moved. Returns the aligned geometries (pixel coordinates of `image`) and the
    last full-resolution field.
    """
    current = np.asarray(geoms, dtype=object)
    field = np.zeros((*image.shape[:2], 2), np.float32)
    for factor in factors:
        small = _block_mean(image, factor) if factor > 1 else image  # tiles are cast to float32 anyway
        coarse = shapely.transform(current, lambda pts, f=factor: pts / f)
        amap = rasterize_map(coarse, small.shape[0], small.shape[1])
        field_c = predict_field(model, small, amap, tile=tile, tta=tta)
        field_c = smooth_field(field_c, map_support(amap), smooth / factor)
        current = shapely.transform(undisplace(coarse, field_c), lambda pts, f=factor: pts * f)
        if factor == 1:
            field = field_c
    return current, field


def load_alignment_model(path: str | os.PathLike) -> keras.Model:
    """Load a saved MultiscaleAligner / AlignUpdateNet (.keras); InputError names a bad path or another kind of model."""
    from geolabel.models import load_model
    from geolabel.models.align_update import AlignUpdateNet
    from geolabel.models.alignment import MultiscaleAligner

    model = load_model(path)
    if not isinstance(model, (MultiscaleAligner, AlignUpdateNet)):
        raise InputError(path, f"is a {type(model).__name__} model, not an alignment model "
                               "(a MultiscaleAligner from `geolabel align-train`, or an AlignUpdateNet)")
    return model


def align_file(
    image_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    downsample: int = 1,
    factors: tuple[int, ...] = FACTORS,
    tile: int = 512,
    tta: bool = True,
    smooth: float = SMOOTH_PX,
) -> dict:
    """Align a vector file's polygons to an image and write them (same attributes, input CRS).

    `factors`, `tta` and `smooth` as in `align_geometries`.

    Returns a summary: polygon count, the mean / max vertex move in pixels and metres, and
    the inference settings.
    """
    from geolabel.align.data import read_image, read_polygons
    from geolabel.align.fields import to_crs, to_pixels, vertex_errors

    image, transform, crs = read_image(image_path, downsample)  # the inputs first: they fail faster than a model loads
    frame, geoms = read_polygons(labels_path, crs)
    model = load_alignment_model(model_path)
    source_crs = gpd.read_file(labels_path, rows=1).crs
    pixels = to_pixels(geoms, transform)
    aligned, _ = align_geometries(model, image, pixels, factors=factors, tile=tile, tta=tta, smooth=smooth)
    moves = vertex_errors(pixels, aligned) if len(pixels) else np.zeros(0)
    frame = frame.set_geometry(list(to_crs(aligned, transform)), crs=crs).to_crs(source_crs)
    out = Path(out_path)
    driver = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}.get(out.suffix.lower())
    if driver is None:
        raise InputError(out_path, "unknown vector format (use .gpkg or .geojson)")
    layer = {"layer": re.sub(r"\W", "_", out.stem) or "aligned"} if driver == "GPKG" else {}
    with atomic_path(out, suffix=out.suffix) as tmp:
        frame.to_file(tmp, driver=driver, **layer)
    res = abs(transform.a)
    return {
        "polygons": int(len(frame)),
        "mean_move_px": float(moves.mean()) if moves.size else 0.0,
        "max_move_px": float(moves.max()) if moves.size else 0.0,
        "mean_move_m": float(moves.mean() * res) if moves.size else 0.0,
        "factors": list(factors),
        "tta": bool(tta),
        "smooth_px": float(smooth),
    }
