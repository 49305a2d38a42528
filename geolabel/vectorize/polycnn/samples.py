"""Real PolyCNN samples: scenes (imagery + building outlines) -> quadrilateral buildings -> crops.

A building trains PolyCNN when its outline is a quadrilateral after light simplification;
each one gives square crops around the object (jittered for training) and its four
vertices in crop units.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geolabel.errors import InputError
from geolabel.models.polycnn import PATCH
from geolabel.vectorize.polycnn.geometry import orient, quad_from_polygon

TILE = 256


@dataclasses.dataclass(frozen=True)
class Scene:
    """One place to learn from: imagery and the building outlines over it.

    Args:
        imagery: an 8-bit RGB raster (a `geolabel fetch` dataset's `imagery.tif`) or a local
            XYZ tile folder (`{z}/{x}/{y}.jpg|png`).
        labels: a vector file of building outlines (a `geolabel fetch` dataset's `labels.gpkg`);
            when it has a `class` column, only the rows of class "building" are used.
    """

    imagery: str
    labels: str

    @classmethod
    def parse(cls, value: Scene | Mapping[str, str], option: str) -> Scene:
        """A Scene from itself or a YAML mapping {imagery, labels}; InputError naming `option` otherwise."""
        if isinstance(value, Scene):
            return value
        if not isinstance(value, Mapping) or set(value) != {"imagery", "labels"}:
            raise InputError(option, f"each scene is a mapping with keys imagery and labels, not {value!r}")
        return cls(os.fspath(value["imagery"]), os.fspath(value["labels"]))

    def check(self) -> None:
        """InputError naming the first input that does not exist (before any slow reading)."""
        if not Path(self.imagery).exists():
            raise InputError(self.imagery, "imagery not found (a raster file or an XYZ tile folder)")
        if not Path(self.labels).is_file():
            raise InputError(self.labels, "building outlines not found (a vector file)")


def mosaic_local_tiles(tiles_dir: str | os.PathLike, zoom: int | None = None) -> tuple[Any, np.ndarray]:
    """Mosaic a local `{zoom}/{x}/{y}.jpg|png` XYZ tree into one in-memory EPSG:3857 GeoBlock.

    `zoom` may be omitted when the folder holds one zoom level. Uses the fetch layer's tile
    geometry (`geolabel.data.tiles`). Returns the GeoBlock (3, H, W) uint8 and a (H, W)
    boolean `covered` mask: pixels of missing tiles are 0 and not covered.
    """
    from geolabel.data.raster import GeoBlock
    from geolabel.data.tiles import TileFolder, local_tile_range, read_tiles

    root = Path(tiles_dir)
    if zoom is None:
        levels = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if len(levels) != 1:
            found = ", ".join(map(str, levels)) or "none"
            raise InputError(root, f"give the zoom level of this tile folder (--zoom; levels found: {found})")
        zoom = levels[0]
    trange = local_tile_range(root, zoom)
    array, present = read_tiles(TileFolder(root), trange, TILE, str(root))
    covered = np.repeat(np.repeat(present, TILE, axis=0), TILE, axis=1)
    return GeoBlock(array=array, transform=trange.transform(TILE), crs="EPSG:3857", nodata=0), covered


def read_imagery(imagery: str | os.PathLike, zoom: int | None = None) -> tuple[Any, np.ndarray]:
    """The scene's imagery as a GeoBlock (3, H, W) and its (H, W) `covered` mask.

    A folder is read as an XYZ tile tree at `zoom`; a file as a raster (its first three
    bands; covered where any band differs from nodata).
    """
    from geolabel.data.raster import GeoBlock, read_raster

    if Path(imagery).is_dir():
        return mosaic_local_tiles(imagery, zoom)
    block = read_raster(imagery)
    if block.array.shape[0] < 3:
        raise InputError(imagery, f"PolyCNN needs RGB imagery, this raster has {block.array.shape[0]} band(s)")
    covered = block.valid_mask()
    return GeoBlock(block.array[:3], block.transform, block.crs, block.nodata), covered


def read_buildings(labels: str | os.PathLike, crs: Any) -> Any:
    """Building outlines of a vector file in `crs` (WGS84 assumed without a CRS; "building" rows of a `class` column)."""
    from geolabel.data.vectors import read_vectors

    frame = read_vectors(labels)
    if "class" in frame.columns:
        frame = frame[frame["class"] == "building"]
    if frame.crs is None:
        frame = frame.set_crs("EPSG:4326")
    return frame.to_crs(crs)


@dataclasses.dataclass
class SceneQuads:
    """One scene's imagery (H, W, 3) uint8 and its quadrilateral buildings in pixels."""

    name: str
    image: np.ndarray
    transform: Any
    crs: Any
    quads: list[np.ndarray]  # (4, 2) source pixel coordinates, clockwise on screen
    osm_ids: list[Any]
    buildings: int  # buildings inside the imagery, quadrilateral or not


def load_scene(scene: Scene, zoom: int | None = None, tolerance_m: float = 0.5, min_iou: float = 0.85) -> SceneQuads:
    """Read a scene's imagery and buildings; keep the quadrilateral buildings.

    A building is kept when it lies fully inside imagery, has no holes and is a
    quadrilateral after Douglas-Peucker at `tolerance_m` ground metres with IoU >= `min_iou`
    to the original outline. `zoom` is the level read from a tile-folder imagery.
    """
    from shapely import affinity

    from geolabel.data.raster import ground_pixel_size

    block, covered = read_imagery(scene.imagery, zoom)
    frame = read_buildings(scene.labels, block.crs)
    inv = ~block.transform
    height, width = covered.shape
    res = float(np.mean(ground_pixel_size(block.transform, block.crs, width, height)))
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
    image = block.array.transpose(1, 2, 0)
    return SceneQuads(os.fspath(scene.imagery), image, block.transform, block.crs, quads, ids, inside)


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
    """Resample the (H, W, C) `image` over the square `window` (x0, y0, side) to (patch, patch, C)."""
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
    source = np.asarray(image[r0:r1, c0:c1], dtype="float32")
    rows = np.clip(rows, 0, h - 1) - r0
    cols = np.clip(cols, 0, w - 1) - c0
    out = np.stack(
        [map_coordinates(source[..., c], [rows, cols], order=1, mode="nearest") for c in range(image.shape[-1])],
        axis=-1,
    )
    return Crop(out.astype("float32"), x0, y0, side)


def quad_crop(image: np.ndarray, quad: np.ndarray, margin: float = 0.25, patch: int = PATCH) -> Crop:
    """The un-jittered crop around a (4, 2) quadrilateral in source pixels (what inference sees)."""
    return sample_crop(image, crop_window((*quad.min(0), *quad.max(0)), margin), patch)


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


def scene_examples(
    scene: SceneQuads,
    copies: int = 1,
    patch: int = PATCH,
    margin: float = 0.25,
    jitter: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`copies` jittered crops per quadrilateral: images (N, patch, patch, 3), vertices (N, 8)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for quad in scene.quads:
        bbox = (*quad.min(0), *quad.max(0))
        for _ in range(copies):
            crop = sample_crop(scene.image, crop_window(bbox, margin, jitter, rng), patch)
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
