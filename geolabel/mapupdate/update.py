"""`geolabel mapupdate`: predictions vs the existing map -> GeoJSON, .osc, summary, preview."""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import keras
import numpy as np
import shapely
from PIL import Image, ImageDraw

from geolabel.align.apply import model_stride
from geolabel.align.data import Scene, rasterize_map
from geolabel.align.fields import to_crs
from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.errors import InputError
from geolabel.mapupdate.diff import Change, DiffParams, compare, counts
from geolabel.mapupdate.osc import build_osc, write_osc
from geolabel.predict.windows import predict_in_tiles

COLORS = {"new": (60, 180, 75), "missing": (230, 25, 75), "shifted": (255, 225, 25), "unchanged": (0, 130, 200)}


def building_probability(
    model: keras.Model, image: np.ndarray, geoms: np.ndarray | None = None, tile: int = 512, margin: int = 32
) -> np.ndarray:
    """(H, W) building probability of a whole image, predicted on overlapping tiles.

    A segmentation model (image -> softmax, class 1 = building) sees the image alone; an
    AlignUpdateNet (two inputs) also sees the existing map rasterised, and its `fill`
    output is used: it segments the true buildings, including those the map misses.
    """
    two_inputs = len(getattr(model, "inputs", None) or []) == 2 or hasattr(model, "level_weights")
    stride = model_stride(model) if hasattr(model, "stride") else _stride(model)

    def run(tiles: list[np.ndarray]) -> np.ndarray:
        if two_inputs:
            return keras.ops.convert_to_numpy(model(tiles, training=False)["segmentation"][..., 1])
        return keras.ops.convert_to_numpy(model(tiles[0], training=False)[..., 1])

    arrays = [image]
    if two_inputs:
        arrays.append(rasterize_map(geoms if geoms is not None else np.array([]), *image.shape[:2]))
    return predict_in_tiles(run, arrays, ("edge", "constant"), tile, margin, stride)


def _stride(model: keras.Model) -> int:
    try:
        from geolabel.models import stride_of

        return int(stride_of(model))
    except ImportError:  # pragma: no cover - registry always present in the package
        return 32


def changes_frame(changes: list[Change], scene: Scene) -> gpd.GeoDataFrame:
    """The changes as a GeoDataFrame in EPSG:4326 with status, confidence, osm_id, shift (m)."""
    geoms = to_crs(np.array([c.geometry for c in changes], dtype=object), scene.transform)
    res = abs(scene.transform.a)
    frame = gpd.GeoDataFrame(
        {
            "status": [c.status for c in changes],
            "confidence": [round(float(c.confidence), 4) for c in changes],
            "osm_id": [None if c.source_id is None or c.source_id != c.source_id else str(c.source_id) for c in changes],
            "shift_x_m": [round(c.shift[0] * res, 3) for c in changes],
            "shift_y_m": [round(-c.shift[1] * res, 3) for c in changes],
        },
        geometry=list(geoms),
        crs=scene.crs,
    )
    return frame.to_crs("EPSG:4326")


def preview(scene: Scene, changes: list[Change], path: str | os.PathLike, max_side: int = 1600) -> None:
    """PNG of the image with each change outlined in its status colour (the original dashed-thin)."""
    h, w = scene.shape
    scale = min(1.0, max_side / max(h, w))
    img = Image.fromarray(scene.image).convert("RGB")
    if scale < 1:
        img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))))
    draw = ImageDraw.Draw(img)
    for c in changes:
        if c.status == "shifted" and c.original is not None:
            for ring in _exteriors(c.original):
                draw.line([(x * scale, y * scale) for x, y in ring], fill=(255, 255, 255), width=1)
        for ring in _exteriors(c.geometry):
            draw.line([(x * scale, y * scale) for x, y in ring], fill=COLORS[c.status], width=2)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _exteriors(geom) -> list:
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    return [list(p.exterior.coords) for p in polys if not p.is_empty]


def write_outputs(
    scene: Scene,
    changes: list[Change],
    out_dir: str | os.PathLike,
    source: str = "geolabel",
    versions: dict | None = None,
) -> dict:
    """Write changes.geojson, changes.osc, summary.json and preview.png; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = changes_frame(changes, scene)
    with atomic_path(out / "changes.geojson") as tmp:
        frame.to_file(tmp, driver="GeoJSON")
    new = [g for g, s in zip(frame.geometry, frame.status) if s == "new"]
    versions = versions or {}
    shifted = []
    for g, s, oid in zip(frame.geometry, frame.status, frame.osm_id):
        if s == "shifted":
            way = _as_int(oid)
            shifted.append((way, g, versions.get(str(oid))))
    write_osc(out / "changes.osc", build_osc(new, shifted, source=source))
    preview(scene, changes, out / "preview.png")
    summary = {
        "counts": counts(changes),
        "shifted_without_osm_id": sum(1 for way, _, _ in shifted if way is None),
        "shifted_without_version": sum(1 for way, _, v in shifted if way is not None and v is None),
        "source": source,
        "files": ["changes.geojson", "changes.osc", "summary.json", "preview.png"],
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _as_int(value) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def map_update(
    scene: Scene,
    prob: np.ndarray,
    out_dir: str | os.PathLike,
    params: DiffParams | None = None,
    source: str = "geolabel",
    versions: dict | None = None,
) -> tuple[list[Change], dict]:
    """Compare `prob` (on the scene's grid) with the scene's polygons and write all outputs."""
    valid = np.array([g is not None and not shapely.is_empty(g) for g in scene.geoms], bool)
    imagery = scene.image.any(axis=-1)  # nodata is 0 on every band (geolabel fetch's convention)
    changes = compare(prob, scene.geoms[valid], scene.ids[valid], params, valid=imagery)
    return changes, write_outputs(scene, changes, out_dir, source, versions)


def load_model(path: str | os.PathLike) -> keras.Model:
    """A segmentation model or AlignUpdateNet from a .keras file or a `geolabel train` run folder."""
    import geolabel.models.align_update  # noqa: F401  (registers the classes)
    import geolabel.models.rnn_refine  # noqa: F401

    p = Path(path)
    if p.is_dir():
        if (p / "model.keras").is_file():
            p = p / "model.keras"
        else:
            raise InputError(path, "is a folder without model.keras (not a geolabel run folder)")
    if not p.is_file():
        raise InputError(path, "no such model file")
    try:
        import geolabel.models  # noqa: F401  (registers the segmentation models' layers)
    except ImportError:  # pragma: no cover
        pass
    try:
        return keras.models.load_model(p, compile=False)
    except Exception as err:  # Keras raises many types for foreign files
        raise InputError(path, f"not a loadable Keras model ({str(err).splitlines()[0][:200]})") from err


def read_probability(path: str | os.PathLike, shape: tuple[int, int], band: int = 2) -> np.ndarray:
    """Building probability from a `probabilities.tif` (one band per class; uint8 is read as /255)."""
    from rasterio.enums import Resampling

    from geolabel.data.raster import open_raster

    with open_raster(path) as src:
        if src.count < band:
            raise InputError(path, f"has {src.count} bands; the building class needs band {band}")
        data = src.read(band, out_shape=shape, resampling=Resampling.bilinear).astype(np.float32)
        scale = 255.0 if src.dtypes[band - 1] == "uint8" else 1.0
    return data / scale


def map_update_files(
    image_path: str | os.PathLike,
    osm_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    probabilities_path: str | os.PathLike | None = None,
    downsample: int = 1,
    params: DiffParams | None = None,
    source: str = "geolabel",
    tile: int = 512,
) -> dict:
    """Run the whole map update from files: predict (or read) probabilities, compare, write."""
    from geolabel.align.data import load_scene

    if (model_path is None) == (probabilities_path is None):
        raise InputError("--model/--probabilities", "give exactly one of them")
    scene = load_scene(image_path, osm_path, downsample)
    if probabilities_path is not None:
        prob = read_probability(probabilities_path, scene.shape)
    else:
        prob = building_probability(load_model(model_path), scene.image, scene.geoms, tile=tile)
    frame = gpd.read_file(osm_path)
    versions = {}
    if "version" in frame and "osm_id" in frame:
        versions = {str(k): int(v) for k, v in zip(frame["osm_id"], frame["version"]) if v == v and k is not None}
    _, summary = map_update(scene, prob, out_dir, params, source, versions)
    return summary
