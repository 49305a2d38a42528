"""PolyCNN inference: objects of a class raster -> square crops -> regressed quadrilaterals.

`polygonize_polycnn` is the "polycnn" polygoniser (`geolabel.vectorize.POLYGONIZERS`): its
georeferenced quadrilaterals carry the attributes of the mask-based polygons (class, area,
confidence).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from geolabel.classes import building_class
from geolabel.errors import InputError
from geolabel.progress import logger
from geolabel.vectorize.polycnn.geometry import orient, quad_polygon
from geolabel.vectorize.polycnn.samples import Crop, SceneQuads, crop_window, quad_crop, sample_crop

MODEL_ENV = "GEOLABEL_POLYCNN_MODEL"


def load_polycnn(model: Any) -> Any:
    """A PolyCNN from a keras.Model, a `model.keras` file or a run folder holding one."""
    import keras

    from geolabel.models import load_model

    return model if isinstance(model, keras.Model) else load_model(model)


def regress_crops(model: Any, crops: Sequence[Crop], batch_size: int = 64) -> list[np.ndarray]:
    """The model's quadrilateral for each crop, in source pixel coordinates, clockwise on screen."""
    if not crops:
        return []
    images = np.stack([c.image for c in crops]).astype("float32")
    out = np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).reshape(-1, 4, 2)
    return [orient(c.to_source(v)) for c, v in zip(crops, out, strict=True)]


def regress_scene(model: Any, scene: SceneQuads, margin: float = 0.25, batch_size: int = 64) -> list[np.ndarray]:
    """PolyCNN quadrilaterals (source pixels) for every building of `scene`, from un-jittered crops."""
    patch = int(model.input_shape[1])
    return regress_crops(model, [quad_crop(scene.image, q, margin, patch) for q in scene.quads], batch_size)


def regress_components(
    classes: np.ndarray,
    image: np.ndarray,
    model: Any,
    class_id: int = 1,
    probabilities: np.ndarray | None = None,
    min_pixels: int = 16,
    margin: float = 0.25,
    batch_size: int = 64,
) -> list[tuple[np.ndarray, int, float]]:
    """Quadrilaterals (source pixel coordinates) for the connected components of `classes == class_id`.

    Args:
        classes: (H, W) class raster.
        image: (H, W, C) or (C, H, W) imagery on the same grid, values in [0, 255].
        model: a PolyCNN (see `load_polycnn`).
        probabilities: optional (H, W, K) or (K, H, W) probabilities for the confidence.
        min_pixels: smaller components are skipped.

    Returns:
        (ring (4, 2), component pixel count, confidence) per object.
    """
    from scipy import ndimage

    classes = np.asarray(classes)
    h, w = classes.shape
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError("image", f"expected a 3-D image array, got shape {image.shape}")
    if image.shape[:2] != (h, w) and image.shape[1:] == (h, w):
        image = image.transpose(1, 2, 0)
    if image.shape[:2] != (h, w):
        raise InputError("image", f"shape {image.shape} is not on the class raster's grid {(h, w)}")
    model = load_polycnn(model)
    bands = int(model.input_shape[-1])
    if image.shape[2] < bands:
        image = np.repeat(image[..., :1], bands, axis=2)
    image = image[..., :bands]
    prob = None
    if probabilities is not None:
        prob = np.asarray(probabilities)
        if prob.shape[:2] != (h, w):
            prob = prob.transpose(1, 2, 0)
    labels, _ = ndimage.label(classes == class_id)
    patch = int(model.input_shape[1])
    crops, meta = [], []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        component = labels[sl] == index
        pixels = int(component.sum())
        if pixels < min_pixels:
            continue
        bbox = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        crops.append(sample_crop(image, crop_window(bbox, margin), patch))
        confidence = float(prob[sl][component][:, class_id].mean()) if prob is not None else 1.0
        meta.append((pixels, confidence))
    rings = regress_crops(model, crops, batch_size)
    return [(ring, pixels, conf) for ring, (pixels, conf) in zip(rings, meta, strict=True)]


def _image_array(image: Any, shape: tuple[int, int], transform: Any) -> np.ndarray:
    """The imagery as (h, w, C): an array on the class grid, or a raster file on the same grid."""
    if isinstance(image, (str, os.PathLike)):
        from geolabel.data.raster import read_raster

        block = read_raster(image)
        if (block.height, block.width) != shape or not block.transform.almost_equals(transform):
            raise InputError(image, "imagery is not on the grid of the class raster")
        return block.array.transpose(1, 2, 0)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[:2] != shape and array.shape[1:] == shape:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[:2] != shape:
        raise InputError("image", f"shape {array.shape} is not on the class raster's grid {shape}")
    return array


def polygonize_polycnn(
    classes: np.ndarray,
    transform: Any,
    crs: Any = None,
    probabilities: np.ndarray | None = None,
    *,
    class_map: Any = None,
    min_area: float = 0.0,
    image: Any = None,
    model: Any = None,
    class_ids: Sequence[int] | None = None,
    min_pixels: int = 16,
    margin: float = 0.25,
    batch_size: int = 64,
) -> Any:
    """PolyCNN polygoniser (registered as "polycnn"): one regressed quadrilateral per object.

    Objects are the connected components of each class in `class_ids` (default: the class
    named "building", else 1); each is cropped from the imagery, regressed by PolyCNN and
    georeferenced.

    Args:
        classes: (h, w) class raster.
        transform, crs: georeferencing of the raster.
        probabilities: optional (K, h, w) (or (h, w, K)) probabilities in [0, 1] for `confidence`.
        class_map: names for the `class` column (`geolabel.classes.ClassMap`).
        min_area: quadrilaterals smaller than this many square ground metres are dropped.
        image: the imagery on the same grid: (C, h, w) / (h, w, C) array or a raster path.
        model: a PolyCNN, a `model.keras` or a `geolabel polycnn-train` run folder; default:
            the path in the environment variable GEOLABEL_POLYCNN_MODEL.

    Returns:
        GeoDataFrame[class, area (m2), confidence, geometry] in `crs`, as the mask-based polygonisers.
    """
    import geopandas as gpd

    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise InputError("classes", f"expected a (h, w) class raster, got shape {classes.shape}")
    if image is None:
        raise InputError("image", "the PolyCNN polygoniser needs the imagery (array or raster path) on the class grid")
    if model is None:
        model = os.environ.get(MODEL_ENV)
        if not model:
            raise InputError("model", f"no PolyCNN model given (pass model= or set {MODEL_ENV} to a polycnn-train run)")
    model = load_polycnn(model)
    pixels = _image_array(image, classes.shape, transform)
    names = tuple(class_map.names) if class_map is not None else ()
    if class_ids is None:
        class_ids = [building_class(names)]
    prob = None
    if probabilities is not None:
        prob = np.asarray(probabilities, dtype="float32")
        if prob.ndim == 3 and prob.shape[:2] != classes.shape:
            prob = prob.transpose(1, 2, 0)
    rows = []
    for class_id in class_ids:
        for ring, _count, confidence in regress_components(
            classes, pixels, model, int(class_id), prob, min_pixels, margin, batch_size
        ):
            poly = quad_polygon(np.array([transform * (float(x), float(y)) for x, y in ring]))
            if poly.is_empty or poly.geom_type != "Polygon":
                continue
            name = names[class_id] if class_id < len(names) else str(class_id)
            rows.append({"class": name, "confidence": confidence, "geometry": poly})
    frame = gpd.GeoDataFrame(rows, columns=["class", "confidence", "geometry"], geometry="geometry", crs=crs)
    frame.insert(1, "area", _ground_areas(frame))
    frame = frame[frame["area"] >= min_area].reset_index(drop=True)
    logger.info("polycnn polygons: %d objects", len(frame))
    return frame


def _ground_areas(frame: Any) -> np.ndarray:
    """Areas in square ground metres (through the local UTM zone when the CRS is not metric-true)."""
    if len(frame) == 0:
        return np.zeros(0)
    if frame.crs is None:
        return frame.geometry.area.to_numpy(dtype=float)
    return frame.geometry.to_crs(frame.estimate_utm_crs()).area.to_numpy(dtype=float)
