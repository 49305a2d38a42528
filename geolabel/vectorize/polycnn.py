"""PolyCNN data, training and inference (the model itself is `geolabel.models.polycnn`).

- An unlimited artificial set of random quadrilaterals rasterised to images (decoder pre-training).
- A real set: buildings whose outline is a quadrilateral after light simplification, cropped
  around the object with jitter from XYZ tile imagery, one city per split.
- The staged schedule: decoder frozen for the first steps, feature extractor for longer.
- Inference: connected components of a segmentation -> square crops -> regressed
  georeferenced quadrilaterals with the attributes of the mask-based polygons (class, area,
  confidence).

Vertices are (x, y) in crop units ([0, 1], x to the right, y down, pixel corners at integers
divided by the crop size), ordered clockwise on screen (positive shoelace area with y down);
the loss is invariant to which vertex comes first but not to the orientation.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.classes import building_class
from geolabel.errors import InputError
from geolabel.progress import logger, progress

PATCH = 67
TILE = 256

# ----------------------------------------------------------------------------- geometry


def signed_area(vertices: np.ndarray) -> float:
    """Shoelace area of a (n, 2) ring (positive = clockwise on screen, with y pointing down)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def orient(vertices: np.ndarray) -> np.ndarray:
    """The ring with positive signed area (clockwise on screen), same starting vertex."""
    vertices = np.asarray(vertices, dtype="float64")
    if signed_area(vertices) < 0:
        return np.concatenate([vertices[:1], vertices[:0:-1]])
    return vertices


def quad_from_polygon(polygon, tolerance: float, min_iou: float = 0.85) -> np.ndarray | None:
    """The polygon's outline as a (4, 2) ring if it is a quadrilateral after Douglas-Peucker at `tolerance`.

    Polygons with holes, multi-part ones and those whose simplified quadrilateral differs
    from the original by more than `min_iou` are rejected (None).
    """
    from shapely.geometry import Polygon

    if polygon is None or polygon.is_empty or polygon.geom_type != "Polygon" or len(polygon.interiors) > 0:
        return None
    simple = polygon.simplify(tolerance, preserve_topology=True)
    if simple.geom_type != "Polygon":
        return None
    ring = np.asarray(simple.exterior.coords)[:-1]
    if len(ring) != 4:
        return None
    quad = Polygon(ring)
    if not quad.is_valid or quad.area <= 0 or polygon_iou(quad, polygon) < min_iou:
        return None
    return ring


def quad_polygon(ring: np.ndarray):
    """A valid shapely polygon from a regressed ring: a self-intersecting one becomes its convex hull."""
    from shapely.geometry import Polygon

    poly = Polygon(np.asarray(ring, dtype="float64").reshape(-1, 2))
    return poly if poly.is_valid else poly.convex_hull


def polygon_iou(a, b) -> float:
    """Intersection over union of two shapely polygons (0 when either is empty or invalid)."""
    if a.is_empty or b.is_empty:
        return 0.0
    if not a.is_valid:
        a = a.buffer(0)
    if not b.is_valid:
        b = b.buffer(0)
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union > 0 else 0.0


def vertex_distances(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each true vertex, the distance to the nearest predicted vertex (same units as inputs)."""
    true = np.asarray(true, dtype="float64").reshape(-1, 2)
    pred = np.asarray(pred, dtype="float64").reshape(-1, 2)
    return np.sqrt(((true[:, None, :] - pred[None, :, :]) ** 2).sum(-1)).min(axis=1)


# ----------------------------------------------------------------------------- artificial set


def random_quadrilateral(rng: np.random.Generator, max_tries: int = 100) -> np.ndarray:
    """A random building-like quadrilateral (4, 2) inside [0, 1]^2, valid and clockwise on screen.

    A rotated rectangle of random aspect whose corners are perturbed, placed the way the
    real crops place their object: filling 45-90 % of the frame, centre jittered.
    """
    from shapely.geometry import Polygon

    for _ in range(max_tries):
        angle = rng.uniform(0, math.pi)
        aspect = rng.uniform(1.0, 3.0)
        half = np.array([1.0, 1.0 / aspect]) / 2
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype="float64") * half
        corners += rng.normal(0, 0.06, corners.shape)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        corners = corners @ rot.T
        extent = (corners.max(0) - corners.min(0)).max()
        corners *= rng.uniform(0.45, 0.9) / extent
        lo, hi = corners.min(0), corners.max(0)
        room = 1.0 - (hi - lo)
        corners += -lo + rng.uniform(0.1, 0.9, 2) * room
        quad = orient(corners)
        poly = Polygon(quad)
        if poly.is_valid and poly.area > 0.05 and quad.min() >= 0.0 and quad.max() <= 1.0:
            return quad
    raise RuntimeError("could not draw a valid quadrilateral")  # pragma: no cover (probability ~0)


def render_quadrilateral(vertices: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterise a (4, 2) quadrilateral in crop units to a (patch, patch, 3) float32 image in [0, 255].

    Anti-aliased (4x supersampling), random roof and ground colours, a shadow-like dark edge
    on one side, random distractor blobs, blur and sensor noise.
    """
    from PIL import Image, ImageDraw, ImageFilter

    scale = 4
    size = patch * scale
    ground = rng.uniform(40, 200, 3)
    roof = np.clip(ground + rng.choice([-1, 1]) * rng.uniform(30, 110) + rng.normal(0, 20, 3), 0, 255)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in ground))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):  # neighbouring structures, vegetation
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.3) * size
        colour = tuple(int(c) for c in np.clip(ground + rng.normal(0, 45, 3), 0, 255))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    pts = [(float(x * size), float(y * size)) for x, y in vertices]
    shadow = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)]) * 0.04 * size
    draw.polygon([(x + shadow[0], y + shadow[1]) for x, y in pts], fill=tuple(int(c * 0.4) for c in ground))
    draw.polygon(pts, fill=tuple(int(c) for c in roof))
    img = img.resize((patch, patch), Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    arr = np.asarray(img, dtype="float32")
    arr = arr + rng.normal(0, rng.uniform(2, 12), arr.shape)
    return np.clip(arr, 0, 255).astype("float32")


def artificial_batches(
    batch_size: int, patch: int = PATCH, seed: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Unlimited batches (images (B, patch, patch, 3) in [0, 255], vertices (B, 8) in [0, 1])."""
    rng = np.random.default_rng(seed)
    while True:
        quads = [random_quadrilateral(rng) for _ in range(batch_size)]
        images = np.stack([render_quadrilateral(q, patch, rng) for q in quads])
        yield images, np.stack(quads).reshape(batch_size, 8).astype("float32")


# ----------------------------------------------------------------------------- imagery


def mosaic_local_tiles(tiles_dir: str | os.PathLike, zoom: int):
    """Mosaic a local `{zoom}/{x}/{y}.jpg|png` XYZ tree into one in-memory EPSG:3857 GeoBlock.

    Uses the fetch layer's tile geometry (`geolabel.data.tiles`). Returns the GeoBlock
    (3, H, W) uint8 and a (H, W) boolean `covered` mask: pixels of missing tiles are 0 and
    not covered, so callers can check that a crop lies on imagery.
    """
    from geolabel.data.raster import GeoBlock
    from geolabel.data.tiles import decode_tile, local_tile_range

    root = Path(tiles_dir)
    trange = local_tile_range(root, zoom)
    array = np.zeros((3, trange.rows * TILE, trange.columns * TILE), dtype="uint8")
    covered = np.zeros(array.shape[1:], dtype=bool)
    for path in sorted((root / str(zoom)).glob("*/*.*")):
        x, y = path.parent.name, path.name.split(".")[0]
        if path.suffix not in (".jpg", ".jpeg", ".png", ".webp") or not (x.isdigit() and y.isdigit()):
            continue
        r, c = (int(y) - trange.y0) * TILE, (int(x) - trange.x0) * TILE
        array[:, r : r + TILE, c : c + TILE] = decode_tile(path.read_bytes(), TILE, str(path))
        covered[r : r + TILE, c : c + TILE] = True
    return GeoBlock(array=array, transform=trange.transform(TILE), crs="EPSG:3857", nodata=0), covered


# ----------------------------------------------------------------------------- crops


@dataclasses.dataclass
class Crop:
    """A square crop: image (patch, patch, 3), its origin and side in source pixels."""

    image: np.ndarray
    x0: float
    y0: float
    side: float

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        """Source pixel coordinates -> crop units."""
        return (np.asarray(xy, dtype="float64") - [self.x0, self.y0]) / self.side

    def to_source(self, uv: np.ndarray) -> np.ndarray:
        """Crop units -> source pixel coordinates."""
        return np.asarray(uv, dtype="float64").reshape(-1, 2) * self.side + [self.x0, self.y0]


def crop_window(
    bbox: tuple[float, float, float, float],
    margin: float = 0.25,
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, float]:
    """Square window (x0, y0, side) around a pixel bbox (xmin, ymin, xmax, ymax).

    side = max(w, h) * (1 + margin); with `jitter` in [0, 1] the margin varies by +-50 %
    x jitter and the centre moves by up to `jitter` of the room left, never cutting the object.
    """
    xmin, ymin, xmax, ymax = bbox
    w, h = xmax - xmin, ymax - ymin
    m = margin
    if jitter > 0 and rng is not None:
        m = margin * (1 + rng.uniform(-0.5, 0.5) * jitter)
    side = max(w, h, 1.0) * (1 + m)
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    if jitter > 0 and rng is not None:
        cx += rng.uniform(-1, 1) * jitter * (side - w) / 2
        cy += rng.uniform(-1, 1) * jitter * (side - h) / 2
    return cx - side / 2, cy - side / 2, side


def sample_crop(image: np.ndarray, window: tuple[float, float, float], patch: int = PATCH) -> Crop:
    """Resample the (H, W, C) or (C, H, W)-as-(H, W, C) `image` over `window` to (patch, patch, C)."""
    from scipy.ndimage import map_coordinates

    x0, y0, side = window
    step = side / patch
    centres = (np.arange(patch) + 0.5) * step
    rows = (y0 + centres - 0.5)[:, None].repeat(patch, 1)
    cols = (x0 + centres - 0.5)[None, :].repeat(patch, 0)
    # read only the source pixels the crop touches (clamped to the image, as mode="nearest")
    h, w = image.shape[:2]
    r0 = int(np.clip(math.floor(rows.min()), 0, h - 1))
    r1 = int(np.clip(math.ceil(rows.max()) + 1, r0 + 1, h))
    c0 = int(np.clip(math.floor(cols.min()), 0, w - 1))
    c1 = int(np.clip(math.ceil(cols.max()) + 1, c0 + 1, w))
    window = np.asarray(image[r0:r1, c0:c1], dtype="float32")
    rows = np.clip(rows, 0, h - 1) - r0
    cols = np.clip(cols, 0, w - 1) - c0
    out = np.stack(
        [map_coordinates(window[..., c], [rows, cols], order=1, mode="nearest") for c in range(image.shape[-1])],
        axis=-1,
    )
    return Crop(out.astype("float32"), x0, y0, side)


def dihedral(image: np.ndarray, vertices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the k-th of the 8 dihedral transforms to a crop and its (4, 2) vertices (crop units)."""
    v = np.asarray(vertices, dtype="float64").reshape(-1, 2).copy()
    if k & 1:  # horizontal flip
        image = image[:, ::-1]
        v[:, 0] = 1 - v[:, 0]
    if k & 2:  # vertical flip
        image = image[::-1]
        v[:, 1] = 1 - v[:, 1]
    if k & 4:  # transpose
        image = image.transpose(1, 0, 2)
        v = v[:, ::-1]
    return np.ascontiguousarray(image), orient(v)


# ----------------------------------------------------------------------------- real set


@dataclasses.dataclass
class CityQuads:
    """One city's imagery (H, W, 3) uint8 in EPSG:3857 and its quadrilateral buildings in pixels."""

    name: str
    image: np.ndarray
    transform: Any
    quads: list[np.ndarray]  # (4, 2) source pixel coordinates, clockwise on screen
    osm_ids: list[Any]
    buildings: int  # buildings inside the imagery, quadrilateral or not


def load_city(
    city_dir: str | os.PathLike, zoom: int = 20, tolerance_m: float = 0.5, min_iou: float = 0.85
) -> CityQuads:
    """Read `city_dir/tiles/{zoom}` and `city_dir/osm-buildings.geojson`; keep quadrilateral buildings.

    A building is kept when it lies fully inside imagery, has no holes and is a
    quadrilateral after Douglas-Peucker at `tolerance_m` metres with IoU >= `min_iou`
    to the original outline.
    """
    import geopandas as gpd
    from shapely import affinity

    city_dir = Path(city_dir)
    labels = city_dir / "osm-buildings.geojson"
    if not labels.is_file():
        raise InputError(labels, "building labels not found")
    block, covered = mosaic_local_tiles(city_dir / "tiles", zoom)
    try:
        frame = gpd.read_file(labels)
    except Exception as err:  # noqa: BLE001 (pyogrio raises several types)
        raise InputError(labels, f"cannot read buildings ({err})") from err
    if frame.crs is None:
        frame = frame.set_crs("EPSG:4326")
    frame = frame.to_crs("EPSG:3857")
    inv = ~block.transform
    res = block.transform.a
    height, width = covered.shape
    quads, ids, inside = [], [], 0
    for idx, geom in zip(frame.get("osm_id", frame.index), frame.geometry, strict=False):
        if geom is None or geom.is_empty:
            continue
        if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
            geom = geom.geoms[0]
        pix = affinity.affine_transform(geom, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])
        xmin, ymin, xmax, ymax = pix.bounds
        if xmin < 0 or ymin < 0 or xmax >= width or ymax >= height:
            continue
        if not covered[int(ymin) : int(math.ceil(ymax)) + 1, int(xmin) : int(math.ceil(xmax)) + 1].all():
            continue
        inside += 1
        quad = quad_from_polygon(pix, tolerance_m / res, min_iou)
        if quad is not None:
            quads.append(orient(quad))
            ids.append(idx)
    return CityQuads(city_dir.name, block.array.transpose(1, 2, 0), block.transform, quads, ids, inside)


def city_examples(
    city: CityQuads,
    copies: int = 1,
    patch: int = PATCH,
    margin: float = 0.25,
    jitter: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`copies` jittered crops per quadrilateral: images (N, patch, patch, 3), vertices (N, 8)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for quad in city.quads:
        bbox = (*quad.min(0), *quad.max(0))
        for _ in range(copies):
            crop = sample_crop(city.image, crop_window(bbox, margin, jitter, rng), patch)
            images.append(crop.image)
            targets.append(np.clip(crop.to_crop(quad), 0, 1).reshape(8))
    if not images:
        return np.zeros((0, patch, patch, 3), "float32"), np.zeros((0, 8), "float32")
    return np.stack(images).astype("float32"), np.stack(targets).astype("float32")


def augmented_batches(
    images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Unlimited random batches of the examples, each under a random dihedral transform."""
    if len(images) == 0:
        raise InputError("training set", "no quadrilateral buildings to train on")
    rng = np.random.default_rng(seed)
    while True:
        pick = rng.integers(0, len(images), batch_size)
        xs, ys = [], []
        for i in pick:
            x, v = dihedral(images[i], targets[i], int(rng.integers(0, 8)))
            xs.append(x)
            ys.append(v.reshape(8))
        yield np.stack(xs).astype("float32"), np.stack(ys).astype("float32")


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class PolyCNNConfig:
    """Options of `geolabel polycnn-train` (YAML keys = field names)."""

    data_root: str = "../shared/data/oam-osm"
    train_cities: list[str] = dataclasses.field(default_factory=lambda: ["zanzibar-tz", "kampala-ug"])
    val_city: str = "virac-ph"
    zoom: int = 20
    tolerance_m: float = 0.5
    patch: int = PATCH
    width: int = 32
    margin: float = 0.25
    jitter: float = 0.5
    copies: int = 4
    batch_size: int = 32
    pretrain_steps: int = 600
    steps: int = 600
    decoder_frozen_steps: int = 100
    extractor_frozen_steps: int = 200
    learning_rate: float = 1e-3
    transfer: str = "all"  # what the artificial pre-training passes on: "decoder" (paper) or "all"
    feature_weights: str | None = None
    seed: int = 0


def _fit_steps(model, batches: Iterator, steps: int, learning_rate: float, stage: str, history: list[dict]) -> None:
    """Compile with the current trainable flags and run `steps` optimiser steps, logging the loss."""
    import keras

    from geolabel.models.polycnn import CyclicVertexDistance, CyclicVertexLoss

    if steps <= 0:
        return
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=CyclicVertexLoss(), metrics=[CyclicVertexDistance()]
    )
    done = int(history[-1]["step"]) if history else 0
    chunk = max(1, min(50, steps))
    for start in progress(range(0, steps, chunk), desc=f"polycnn {stage}", total=math.ceil(steps / chunk)):
        n = min(chunk, steps - start)
        model.reset_metrics()
        t0 = time.perf_counter()
        losses = [float(model.train_on_batch(*next(batches), return_dict=True)["loss"]) for _ in range(n)]
        history.append(
            {
                "stage": stage,
                "step": done + start + n,
                "loss": float(np.mean(losses)),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        logger.info("polycnn %s step %d loss %.4f", stage, done + start + n, history[-1]["loss"])
    history[-1]["stage_end"] = True


def _set_trainable(model, extractor: bool, encoder: bool, decoder: bool) -> None:
    model.get_layer("feature_extractor").trainable = extractor
    model.get_layer("encoder").trainable = encoder
    model.get_layer("decoder").trainable = decoder


def pretrain_artificial(
    model, steps: int, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0
) -> list[dict]:
    """Train the whole model on the artificial quadrilaterals for `steps` steps (history rows)."""
    history: list[dict] = []
    _set_trainable(model, True, True, True)
    patch = int(model.input_shape[1])
    _fit_steps(model, artificial_batches(batch_size, patch, seed), steps, learning_rate, "artificial", history)
    return history


def train_staged(
    model,
    batches: Iterator,
    steps: int,
    decoder_frozen_steps: int,
    extractor_frozen_steps: int,
    learning_rate: float = 1e-3,
) -> list[dict]:
    """PolyCNN's schedule: decoder frozen for the first steps, feature extractor for longer, then all.

    Stage 1 (steps < decoder_frozen_steps): only the encoder learns; stage 2 (until
    extractor_frozen_steps): encoder and decoder; stage 3: everything.
    """
    if not 0 <= decoder_frozen_steps <= extractor_frozen_steps:
        raise InputError("decoder_frozen_steps", "must be >= 0 and <= extractor_frozen_steps")
    history: list[dict] = []
    bounds = [min(decoder_frozen_steps, steps), min(extractor_frozen_steps, steps), steps]
    stages = [
        ("encoder-only", (False, True, False)),
        ("extractor-frozen", (False, True, True)),
        ("all", (True, True, True)),
    ]
    previous = 0
    for end, (name, flags) in zip(bounds, stages, strict=True):
        _set_trainable(model, *flags)
        _fit_steps(model, batches, end - previous, learning_rate, name, history)
        previous = end
    _set_trainable(model, True, True, True)
    return history


@dataclasses.dataclass
class QuadScores:
    """Per-example polygon IoU and vertex distances (pixels of the source imagery)."""

    iou: np.ndarray
    vertex_px: np.ndarray  # (N * 4,) distance of every true vertex to its nearest predicted vertex

    def summary(self, thresholds: Sequence[float] = (1, 2, 4, 8, 16)) -> dict[str, Any]:
        return {
            "count": int(len(self.iou)),
            "mean_iou": float(np.mean(self.iou)) if len(self.iou) else float("nan"),
            "median_vertex_px": float(np.median(self.vertex_px)) if len(self.vertex_px) else float("nan"),
            "vertex_curve": {str(t): float(np.mean(self.vertex_px <= t)) for t in thresholds},
        }


def score_quads(true: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> QuadScores:
    """Polygon IoU and vertex distances between paired rings in the same pixel coordinates."""
    from shapely.geometry import Polygon

    ious, dists = [], []
    for t, p in zip(true, pred, strict=True):
        p = np.asarray(p, dtype="float64").reshape(-1, 2)
        ious.append(polygon_iou(Polygon(t), quad_polygon(p)) if len(p) >= 3 else 0.0)
        dists.append(vertex_distances(t, p) if len(p) else np.full(len(t), np.inf))
    return QuadScores(np.asarray(ious), np.concatenate(dists) if dists else np.zeros(0))


def regress_city(model, city: CityQuads, margin: float = 0.25, batch_size: int = 64) -> list[np.ndarray]:
    """PolyCNN quadrilaterals (source pixels) for every building of `city`, from un-jittered crops."""
    patch = int(model.input_shape[1])
    crops = [sample_crop(city.image, crop_window((*q.min(0), *q.max(0)), margin), patch) for q in city.quads]
    return _regress(model, crops, batch_size)


def _regress(model, crops: Sequence[Crop], batch_size: int = 64) -> list[np.ndarray]:
    if not crops:
        return []
    images = np.stack([c.image for c in crops]).astype("float32")
    out = np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).reshape(-1, 4, 2)
    return [orient(c.to_source(v)) for c, v in zip(crops, out, strict=True)]


def train_polycnn(config: PolyCNNConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the whole recipe and write a run folder: config.yaml, model.keras, history.csv, metrics.json.

    Artificial pre-training, then the staged schedule on the train cities' quadrilateral
    buildings, then the held-out city's mean polygon IoU and vertex-distance curve.
    """
    import keras

    from geolabel.config import dump_config
    from geolabel.models.polycnn import CyclicVertexLoss, build_polycnn

    if config.transfer not in ("decoder", "all"):
        raise InputError("transfer", f"must be 'decoder' or 'all', not {config.transfer!r}")
    root = Path(config.data_root)
    for name in [*config.train_cities, config.val_city]:
        if not (root / name).is_dir():
            raise InputError(root / name, "city folder not found (expected tiles/ and osm-buildings.geojson)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", dump_config(config))
    keras.utils.set_random_seed(config.seed)

    t0 = time.perf_counter()
    train = [load_city(root / c, config.zoom, config.tolerance_m) for c in config.train_cities]
    val = load_city(root / config.val_city, config.zoom, config.tolerance_m)
    parts = [
        city_examples(c, config.copies, config.patch, config.margin, config.jitter, config.seed + i)
        for i, c in enumerate(train)
    ]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    data_s = time.perf_counter() - t0

    history: list[dict] = []
    model = build_polycnn(config.patch, width=config.width, feature_weights=config.feature_weights)
    if config.pretrain_steps > 0:
        pre = build_polycnn(config.patch, width=config.width, feature_weights=config.feature_weights)
        history += pretrain_artificial(pre, config.pretrain_steps, config.batch_size, config.learning_rate, config.seed)
        if config.transfer == "all":
            model.set_weights(pre.get_weights())
        else:
            model.get_layer("decoder").set_weights(pre.get_layer("decoder").get_weights())
    history += train_staged(
        model,
        augmented_batches(x_train, y_train, config.batch_size, config.seed),
        config.steps,
        config.decoder_frozen_steps,
        config.extractor_frozen_steps,
        config.learning_rate,
    )
    train_s = time.perf_counter() - t0 - data_s

    scores = score_quads(val.quads, regress_city(model, val, config.margin))
    metrics = {
        "val_city": val.name,
        "train_cities": [c.name for c in train],
        "train_quadrilaterals": int(sum(len(c.quads) for c in train)),
        "train_buildings": int(sum(c.buildings for c in train)),
        "val_buildings": val.buildings,
        "train_examples": int(len(x_train)),
        "data_seconds": round(data_s, 1),
        "train_seconds": round(train_s, 1),
        "val": scores.summary(),
    }
    model.compile(loss=CyclicVertexLoss())
    with atomic_path(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["stage", "step", "loss", "seconds"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(out / "history.csv", buf.getvalue())
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------- inference


def load_polycnn(model: Any):
    """A PolyCNN from a keras.Model, a `model.keras` file or a run folder holding one."""
    import keras

    from geolabel.models import load_model

    return model if isinstance(model, keras.Model) else load_model(model)


def regress_components(
    classes: np.ndarray,
    image: np.ndarray,
    model,
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
    labels, count = ndimage.label(classes == class_id)
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
    rings = _regress(model, crops, batch_size)
    return [(ring, pixels, conf) for ring, (pixels, conf) in zip(rings, meta, strict=True)]


MODEL_ENV = "GEOLABEL_POLYCNN_MODEL"


def _image_array(image: Any, shape: tuple[int, int], transform) -> np.ndarray:
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
    transform,
    crs=None,
    probabilities: np.ndarray | None = None,
    *,
    class_map=None,
    min_area: float = 0.0,
    image: Any = None,
    model: Any = None,
    class_ids: Sequence[int] | None = None,
    min_pixels: int = 16,
    margin: float = 0.25,
    batch_size: int = 64,
):
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


def _ground_areas(frame) -> np.ndarray:
    """Areas in square ground metres (through the local UTM zone when the CRS is not metric-true)."""
    if len(frame) == 0:
        return np.zeros(0)
    if frame.crs is None:
        return frame.geometry.area.to_numpy(dtype=float)
    return frame.geometry.to_crs(frame.estimate_utm_crs()).area.to_numpy(dtype=float)
