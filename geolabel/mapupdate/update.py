"""`geolabel mapupdate`: predictions vs the existing map -> GeoJSON, .osc, summary, preview.

Precision first: only changes at or above `DiffParams.min_confidence` that OSM can take as
they are go to `changes.osc` (new buildings; shifted buildings whose nodes and versions the
map gives). Everything is in the review layer `changes.geojson` with its status, confidence
and where it went; confident corrections that cannot be uploaded are in `changes.osm`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import geopandas as gpd
import keras
import numpy as np
import shapely
from PIL import Image, ImageDraw

from geolabel.align.data import Scene, rasterize_map
from geolabel.align.fields import to_crs
from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.classes import STATUS_COLORS
from geolabel.data.osm import OSM_ATTRIBUTION, OsmBuilding, OsmNode
from geolabel.data.vectors import write_vectors
from geolabel.errors import InputError
from geolabel.models import load_model, stride_of
from geolabel.mapupdate.diff import Change, DiffParams, compare, counts
from geolabel.mapupdate.osc import build_osc, build_review_osm, write_osc
from geolabel.predict.windows import predict_in_tiles

OSC, JOSM, REVIEW = "changes.osc", "changes.osm", "review"


def building_probability(
    model: keras.Model, image: np.ndarray, geoms: np.ndarray | None = None, tile: int = 512, margin: int = 32
) -> np.ndarray:
    """(H, W) building probability of a whole image, predicted on overlapping tiles.

    A segmentation model (image -> softmax, class 1 = building) sees the image alone; an
    AlignUpdateNet (two inputs) also sees the existing map rasterised, and its `fill`
    output is used: it segments the true buildings, including those the map misses.
    """
    two_inputs = _takes_the_map(model)
    stride = stride_of(model)

    def run(tiles: list[np.ndarray]) -> np.ndarray:
        if two_inputs:
            return keras.ops.convert_to_numpy(model(tiles, training=False)["segmentation"][..., 1])
        return keras.ops.convert_to_numpy(model(tiles[0], training=False)[..., 1])

    arrays = [image]
    if two_inputs:
        arrays.append(rasterize_map(geoms if geoms is not None else np.array([]), *image.shape[:2]))
    return predict_in_tiles(run, arrays, ("edge", "constant"), tile, margin, stride)


def _takes_the_map(model: keras.Model) -> bool:
    """Whether `model` takes the image and the map rasterised (an AlignUpdateNet)."""
    return len(getattr(model, "inputs", None) or []) == 2 or hasattr(model, "level_weights")


def load_map_scene(
    image_path: str | os.PathLike, osm_path: str | os.PathLike, downsample: int = 1
) -> tuple[Scene, dict[object, OsmBuilding]]:
    """The image and the existing buildings as a Scene, and the OSM objects by scene id.

    OSM XML (.osm, .osm.bz2) gives ids "way/ID" / "relation/ID" with versions and nodes (what an
    uploadable modify needs); PBF extracts and vector files (GeoJSON, GPKG with an `osm_id`
    column, or row numbers) give geometry and ids only. InputError (naming both inputs) when the
    map has buildings but none lies on the image: every predicted building would be "new".
    """
    from geolabel.align.data import read_image, read_polygons
    from geolabel.align.fields import to_pixels
    from geolabel.classes import BUILDINGS
    from geolabel.data.osm import is_osm_extract, is_osm_xml, read_osm_buildings, read_osm_extract

    image, transform, crs = read_image(image_path, downsample)
    buildings: dict[object, OsmBuilding] = {}
    if is_osm_xml(osm_path):
        buildings = {b.key: b for b in read_osm_buildings(osm_path)}
        frame = gpd.GeoDataFrame({"osm_id": list(buildings)}, geometry=[b.geometry for b in buildings.values()],
                                 crs="EPSG:4326").to_crs(crs)
    elif is_osm_extract(osm_path):
        frame = read_osm_extract(osm_path, BUILDINGS)[0].to_crs(crs).reset_index(drop=True)
    else:
        frame, _ = read_polygons(osm_path, crs)
    frame = frame[_placeable(frame.geometry.values, image.shape[:2], transform, crs, image_path, osm_path)]
    geoms = np.asarray(frame.geometry.values, dtype=object)
    ids = frame["osm_id"].to_numpy() if "osm_id" in frame else np.arange(len(frame))
    return Scene(image, transform, crs, to_pixels(geoms, transform), ids), buildings


def _placeable(geoms: np.ndarray, shape: tuple[int, int], transform, crs, image_path: str | os.PathLike,
               osm_path: str | os.PathLike) -> np.ndarray:
    """Which `geoms` (image CRS) have finite coordinates (a wrong CRS gives inf); InputError naming
    both inputs when there are some but none lies on the image (different places, or a wrong CRS)."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    finite = np.isfinite(shapely.bounds(geoms)).all(axis=1)
    box = array_bounds(*shape, transform)
    if not len(geoms) or shapely.intersects(geoms[finite], shapely.box(*box)).any():
        return finite
    image_box = transform_bounds(crs, "EPSG:4326", *box)
    with np.errstate(invalid="ignore"):
        map_box = gpd.GeoSeries(geoms[finite], crs=crs).to_crs("EPSG:4326").total_bounds if finite.any() else None
    where = "not placeable in the image's CRS" if map_box is None else _lonlat(map_box)
    raise InputError(
        osm_path,
        f"none of its {len(geoms)} buildings lies on the image {os.fspath(image_path)} (lon/lat bounds: map {where}, "
        f"image {_lonlat(image_box)}): different places, or a wrong CRS in one of them",
    )


def _lonlat(box) -> str:
    return "(" + ", ".join(f"{v:.5f}" for v in box) + ")"


def imagery_mask(image_path: str | os.PathLike, shape: tuple[int, int], image: np.ndarray) -> np.ndarray:
    """(H, W) True where the raster has imagery: its own nodata/alpha mask (read on the scene's
    grid), and not 0 on every band (`geolabel fetch`'s nodata, and a mosaic's missing tiles)."""
    from rasterio.enums import Resampling

    from geolabel.data.raster import open_raster

    with open_raster(image_path) as src:
        mask = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
    return mask & image.any(axis=-1)


def predict_probabilities(image_path: str | os.PathLike, out_dir: str | os.PathLike,
                          model_path: str | os.PathLike | None = None,
                          predict_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                          precision: str = "auto", window: int = 1024, overlap: int = 64,
                          model: keras.Model | None = None) -> Path:
    """`OUT/predict/probabilities.tif` of IMAGE, written by `geolabel predict`'s own path (windows,
    blending, the run's input contract, resampling to a shipped model's resolution), from MODEL
    (a segmentation run) or a ready `predict_fn` (a TF Serving client, whose export standardises
    scenes itself when it says so); `model` is MODEL already loaded, if the caller has it. Returns its path."""
    from geolabel.predict import keras_predict_fn
    from geolabel.predict.resample import model_resampling, predict_resampled
    from geolabel.predict.run_inputs import RunInputs

    out = Path(out_dir) / "predict"
    if predict_fn is not None:
        return predict_resampled(predict_fn, image_path, out, factor=1.0, window=window, overlap=overlap, preview=False,
                                 scene_norm=getattr(predict_fn, "standardizes_scenes", False)).probabilities
    expects = RunInputs.of(model_path)
    factor, tags = model_resampling(expects.card, image_path, True)
    predict_fn = keras_predict_fn(model or load_model(model_path), precision=precision)
    return predict_resampled(predict_fn, image_path, out, factor=factor, window=window, overlap=overlap, preview=False,
                             scene_norm=expects.scene_norm, scene_contrast=expects.scene_contrast,
                             scaling=expects.scaling, tags=tags).probabilities


def to_map_frame(changes: list[Change], scene: Scene, aligned: np.ndarray | None) -> list[Change]:
    """Changes found against `aligned` (or the scene's polygons), their source ids being row
    numbers, in the map's own frame with the scene's ids.

    An existing building keeps its own geometry (a shifted one moved by its residual shift
    only); with an alignment, a new building is moved by the median alignment of its 5
    nearest map buildings, so it sits where the map's (misregistered) frame puts it.
    """
    moves = centres = None
    if aligned is not None and len(aligned):
        before, after = shapely.get_coordinates(scene.geoms), shapely.get_coordinates(aligned)
        owner = np.repeat(np.arange(len(aligned)), shapely.get_num_coordinates(aligned))
        vertices = np.maximum(np.bincount(owner, minlength=len(aligned)), 1)[:, None]
        moves = np.stack([np.bincount(owner, (before - after)[:, k], len(aligned)) for k in (0, 1)], 1) / vertices
        centres = shapely.get_coordinates(shapely.centroid(aligned))
    out = []
    for c in changes:
        if c.status == "new":
            geometry = c.geometry
            if moves is not None:
                x, y = shapely.get_coordinates(shapely.centroid(c.geometry))[0]
                near = np.argsort(np.hypot(centres[:, 0] - x, centres[:, 1] - y))[:5]
                move = np.median(moves[near], axis=0)
                geometry = shapely.transform(geometry, lambda pts, d=move: pts + d)
            out.append(Change("new", geometry, c.confidence, None))
            continue
        i = int(c.source_id)
        original = scene.geoms[i]
        geometry = original
        if c.status == "shifted":
            geometry = shapely.transform(original, lambda pts, d=c.shift: pts + np.array(d))
        out.append(Change(c.status, geometry, c.confidence, scene.ids[i], c.shift, original, c.extra))
    return out


def moved_nodes(building: OsmBuilding, shift: tuple[float, float], scene: Scene) -> list[OsmNode]:
    """`building`'s nodes moved by `shift` (pixels of the scene grid), ids, versions and tags kept."""
    from pyproj import Transformer

    forward = Transformer.from_crs("EPSG:4326", scene.crs, always_xy=True)
    back = Transformer.from_crs(scene.crs, "EPSG:4326", always_xy=True)
    t = scene.transform
    dx, dy = t.a * shift[0] + t.b * shift[1], t.d * shift[0] + t.e * shift[1]
    lon = np.array([n.lon for n in building.nodes])
    lat = np.array([n.lat for n in building.nodes])
    x, y = forward.transform(lon, lat)
    lon2, lat2 = back.transform(np.asarray(x) + dx, np.asarray(y) + dy)
    return [OsmNode(n.id, n.version, float(a), float(b), n.tags) for n, a, b in zip(building.nodes, lon2, lat2)]


def not_uploadable(building: OsmBuilding | None) -> str | None:
    """Why a shift of `building` cannot go to the .osc as a modify of its nodes (None: it can)."""
    if building is None:
        return "no OSM nodes in the map file (give OSM XML with versions)"
    if not building.nodes or any(n.version is None or n.id <= 0 for n in building.nodes):
        return "node ids or versions unknown (give OSM XML with versions, e.g. from JOSM or Overpass out meta)"
    if building.shared:
        return "a node is shared with another way"
    return None


def _shifts_m(changes: list[Change], scene: Scene) -> np.ndarray:
    """(N, 2) east and north ground metres of each change's shift (0 when it has none)."""
    from pyproj import Geod

    out = np.zeros((len(changes), 2))
    moved = [i for i, c in enumerate(changes) if c.shift != (0.0, 0.0)]
    if moved:
        pairs = np.array([[changes[i].original, changes[i].geometry] for i in moved], dtype=object)
        lonlat = gpd.GeoSeries(to_crs(pairs.ravel(), scene.transform), crs=scene.crs).to_crs("EPSG:4326")
        centres = shapely.centroid(lonlat.values).reshape(-1, 2)
        before, after = centres[:, 0], centres[:, 1]
        azimuth, _, dist = Geod(ellps="WGS84").inv(shapely.get_x(before), shapely.get_y(before),
                                                   shapely.get_x(after), shapely.get_y(after))
        out[moved] = np.stack([dist * np.sin(np.radians(azimuth)), dist * np.cos(np.radians(azimuth))], 1)
    return out


def preview(scene: Scene, changes: list[Change], path: str | os.PathLike, max_side: int = 1600) -> None:
    """PNG of the image, cropped to where it has data, with each change outlined in its status
    colour inside a black halo (a shifted building's original thin white) and a legend."""
    from geolabel.preview import HALO, data_extent, with_legend

    rows, cols = data_extent(scene.image.any(axis=-1), margin=8)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    scale = min(1.0, max_side / max(h, w))
    img = Image.fromarray(scene.image[rows, cols]).convert("RGB")
    if scale < 1:
        img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))))
    draw = ImageDraw.Draw(img)

    def line(ring, fill, width: int) -> None:
        draw.line([((x - cols.start) * scale, (y - rows.start) * scale) for x, y in ring], fill=fill, width=width)

    for c in changes:
        if c.status == "shifted" and c.original is not None:
            for ring in _exteriors(c.original):
                line(ring, (255, 255, 255), 1)
        for ring in _exteriors(c.geometry):
            line(ring, HALO, 4)
            line(ring, STATUS_COLORS[c.status], 2)
    entries = [*STATUS_COLORS.items(), ("before the shift", (255, 255, 255))]
    with atomic_path(path) as tmp:
        with_legend(img, entries, title="change").save(tmp, format="PNG")


def _exteriors(geom) -> list:
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    return [list(p.exterior.coords) for p in polys if not p.is_empty]


def write_outputs(
    scene: Scene,
    changes: list[Change],
    out_dir: str | os.PathLike,
    source: str = "geolabel",
    buildings: dict[object, OsmBuilding] | None = None,
    min_confidence: float = DiffParams.min_confidence,
    seen: list[Change] | None = None,
    extra: dict | None = None,
    vector_formats: Sequence[str] = ("geojson",),
    pmtiles: bool = False,
    attribution: Sequence[str] = (),
) -> dict:
    """Write changes.geojson (and/or .gpkg, .parquet: `vector_formats`; with `pmtiles` also
    changes.pmtiles), changes.osc, changes.osm (when needed), summary.json and preview.png;
    returns the summary.

    Args:
        changes: in the map's frame (pixel coordinates of the scene grid).
        buildings: the map's OSM objects by id (from OSM XML), for node modifies.
        seen: the changes as drawn over the image (default `changes`; differs after alignment).
        extra: more entries for the summary.
        attribution: the imagery's credit lines, for changes.pmtiles (OpenStreetMap's is added).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buildings = buildings or {}
    frame = gpd.GeoDataFrame(geometry=list(to_crs(np.array([c.geometry for c in changes], dtype=object),
                                                  scene.transform)), crs=scene.crs).to_crs("EPSG:4326")
    new, moved, review = [], [], []
    outputs, notes = [], []
    for c, geom in zip(changes, frame.geometry):
        output, note = "none", ""
        if c.status in ("new", "shifted") and c.confidence < min_confidence:
            output = REVIEW
        elif c.status == "new":
            output = OSC
            new.append(geom)
        elif c.status == "shifted":
            note = not_uploadable(buildings.get(c.source_id)) or ""
            if note:
                output = JOSM
                review.append((geom, {"geolabel:status": "shifted", "geolabel:ref": str(c.source_id),
                                      "geolabel:confidence": f"{c.confidence:.3f}",
                                      "note": f"corrected position of {c.source_id}; not uploadable: {note}"}))
            else:
                output = OSC
                moved += moved_nodes(buildings[c.source_id], c.shift, scene)
        elif c.status == "missing":
            output = REVIEW
        outputs.append(output)
        notes.append(note)
    shifts = _shifts_m(changes, scene)
    frame.insert(0, "status", [c.status for c in changes])
    frame.insert(1, "confidence", [round(float(c.confidence), 4) for c in changes])
    frame.insert(2, "osm_id", [None if c.source_id is None or c.source_id != c.source_id else str(c.source_id)
                               for c in changes])
    frame.insert(3, "shift_east_m", np.round(shifts[:, 0], 3))
    frame.insert(4, "shift_north_m", np.round(shifts[:, 1], 3))
    frame.insert(5, "output", outputs)
    frame.insert(6, "note", notes)
    files = [p.name for p in write_vectors(frame, out, "changes", vector_formats, pmtiles=pmtiles,
                                           attribution=[*attribution, OSM_ATTRIBUTION]).values()]
    write_osc(out / OSC, build_osc(new, moved, source=source))
    files.append(OSC)
    if review:
        write_osc(out / JOSM, build_review_osm(review))
        files.append(JOSM)
    else:
        (out / JOSM).unlink(missing_ok=True)  # not one left from an earlier run into this folder
    preview(scene, seen if seen is not None else changes, out / "preview.png")
    files += ["summary.json", "preview.png"]

    def tally(status: str, output: str) -> int:
        return sum(c.status == status and o == output for c, o in zip(changes, outputs))

    summary = {
        "counts": counts(changes),
        "min_confidence": min_confidence,
        "osc": {"new": tally("new", OSC), "shifted": tally("shifted", OSC), "nodes_moved": len(moved)},
        "held_back_for_review": {"new": tally("new", REVIEW), "shifted": tally("shifted", REVIEW),
                                 "missing": tally("missing", REVIEW)},
        "shifted_not_uploadable": {n: notes.count(n) for n in sorted(set(notes) - {""})},
        "source": source,
        "files": files,
        **(extra or {}),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def map_update(
    scene: Scene,
    prob: np.ndarray,
    out_dir: str | os.PathLike,
    params: DiffParams | None = None,
    source: str = "geolabel",
    buildings: dict[object, OsmBuilding] | None = None,
    valid: np.ndarray | None = None,
    aligned: np.ndarray | None = None,
    vector_formats: Sequence[str] = ("geojson",),
    pmtiles: bool = False,
    attribution: Sequence[str] = (),
) -> tuple[list[Change], dict]:
    """Compare `prob` (on the scene's grid) with the scene's polygons and write all outputs.

    Args:
        buildings: the map's OSM objects by scene id (see `load_map_scene`).
        valid: (H, W) True where there is imagery (default: pixels not 0 on every band).
        aligned: the scene's polygons aligned to the image (`align_geometries`): statuses are
            judged against them, so a misregistration of the whole map is not a change.
        vector_formats, pmtiles, attribution: the changes files to write (`write_outputs`).
    Returns the changes in the map's frame and the summary.
    """
    params = params or DiffParams()
    valid = scene.image.any(axis=-1) if valid is None else valid
    judged = scene.geoms if aligned is None else aligned
    keep = np.flatnonzero([g is not None and not shapely.is_empty(g) for g in judged])
    seen = compare(prob, judged[keep], keep, params, valid=valid)
    changes = to_map_frame(seen, scene, aligned)
    extra = {"aligned": aligned is not None}
    return changes, write_outputs(scene, changes, out_dir, source, buildings, params.min_confidence, seen, extra,
                                  vector_formats, pmtiles, attribution)


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
    align_path: str | os.PathLike | None = None,
    vector_formats: Sequence[str] = ("geojson",),
    pmtiles: bool = False,
    attribution: Sequence[str] = (),
) -> dict:
    """Run the whole map update from files: read the map (checking it lies on the image),
    optionally align it (`align_path`: a MultiscaleAligner / AlignUpdateNet .keras), predict
    (or read) probabilities, compare, write (`vector_formats`, `pmtiles`, `attribution`: see
    `write_outputs`)."""
    if (model_path is None) == (probabilities_path is None):
        raise InputError("--model/--probabilities", "give exactly one of them")
    scene, buildings = load_map_scene(image_path, osm_path, downsample)
    valid = imagery_mask(image_path, scene.shape, scene.image)
    aligned = None
    if align_path is not None:
        from geolabel.align.apply import align_geometries, load_alignment_model

        aligned, _ = align_geometries(load_alignment_model(align_path), scene.image, scene.geoms, tile=tile)
    model = load_model(model_path) if model_path is not None else None
    if model is not None and _takes_the_map(model):  # an AlignUpdateNet also sees the map
        geoms = scene.geoms if aligned is None else aligned
        prob = building_probability(model, scene.image, geoms, tile=tile)
    else:
        if model is not None:
            probabilities_path = predict_probabilities(image_path, out_dir, model_path, model=model)
        prob = read_probability(probabilities_path, scene.shape)
    _, summary = map_update(scene, prob, out_dir, params, source, buildings, valid, aligned, vector_formats,
                            pmtiles, attribution)
    return summary
