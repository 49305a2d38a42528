"""Training data for alignment: real imagery + real polygons + synthetic exact misregistration.

A `Scene` is an image with its polygons in pixel coordinates. `make_batch` cuts random
crops, misregisters the crop's real polygons with a random smooth field (so the true
field is known exactly), optionally drops polygons from the input map, and rasterises
the map as (fill, edge, vertex) channels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import Resampling

from geolabel.align.fields import displace, random_smooth_field, to_pixels
from geolabel.errors import InputError


@dataclass
class Scene:
    """An image and its map polygons in the image's pixel coordinates.

    Args:
        image: (H, W, 3) uint8 pixels.
        transform: pixel -> CRS affine of the image grid.
        crs: CRS of the image.
        geoms: shapely polygons in pixel coordinates (x right, y down).
        ids: one identifier per polygon (e.g. the OSM id, or the row number).
    """

    image: np.ndarray
    transform: Affine
    crs: object
    geoms: np.ndarray
    ids: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def read_image(path: str | os.PathLike, downsample: int = 1) -> tuple[np.ndarray, Affine, object]:
    """Read the first 3 bands of a georeferenced raster as (H, W, 3) uint8, averaged down by `downsample`."""
    from geolabel.data.raster import open_raster

    with open_raster(path, georeferenced=True) as src:
        if src.count < 3:
            raise InputError(path, f"needs 3 bands (RGB), has {src.count}")
        h, w = src.height // downsample, src.width // downsample
        if h < 1 or w < 1:
            raise InputError(path, f"too small ({src.width}x{src.height}) to downsample by {downsample}")
        array = src.read([1, 2, 3], out_shape=(3, h, w), resampling=Resampling.average)
        transform = src.transform * Affine.scale(src.width / w, src.height / h)
        crs = src.crs
    return np.ascontiguousarray(np.moveaxis(array, 0, -1)).astype(np.uint8), transform, crs


def read_polygons(path: str | os.PathLike, crs) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """Read polygon labels (any vector format), reprojected to `crs`, multi-parts exploded.

    Returns the frame (one row per polygon, index reset) and its geometry array.
    """
    try:
        frame = gpd.read_file(path)
    except Exception as err:  # fiona/pyogrio raise many types for unreadable files
        raise InputError(path, f"not a readable vector file ({str(err).splitlines()[0]})") from err
    if frame.crs is None:
        raise InputError(path, "has no CRS")
    frame = frame[frame.geometry.notna() & frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    frame = frame.to_crs(crs).explode(index_parts=False).reset_index(drop=True)
    return frame, np.asarray(frame.geometry.values, dtype=object)


def load_scene(image_path: str | os.PathLike, labels_path: str | os.PathLike, downsample: int = 1) -> Scene:
    """An image raster and its polygon labels as a Scene (polygons clipped to nothing: all kept)."""
    image, transform, crs = read_image(image_path, downsample)
    frame, geoms = read_polygons(labels_path, crs)
    ids = frame["osm_id"].to_numpy() if "osm_id" in frame else np.arange(len(frame))
    return Scene(image, transform, crs, to_pixels(geoms, transform), ids)


def rasterize_map(geoms: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise polygons (pixel coordinates) as (H, W, 3) float32 channels fill, edge, vertex."""
    out = np.zeros((height, width, 3), np.float32)
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return out
    ident = Affine.identity()
    out[..., 0] = rasterio.features.rasterize(geoms, (height, width), transform=ident, dtype="uint8")
    edges = [g.boundary for g in geoms]
    out[..., 1] = rasterio.features.rasterize(edges, (height, width), transform=ident, all_touched=True, dtype="uint8")
    pts = np.floor(shapely.get_coordinates(np.asarray(geoms, dtype=object))).astype(int)
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
    out[pts[keep, 1], pts[keep, 0], 2] = 1.0
    return out


def segmentation_target(geoms: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 4) float32 targets background, fill, edge, vertex of polygons (pixel coordinates)."""
    m = rasterize_map(geoms, height, width)
    background = 1.0 - np.maximum(m[..., 0], m[..., 1])
    return np.concatenate([background[..., None], m], axis=-1)


def _shift(geoms: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return shapely.transform(geoms, lambda pts: pts + np.array([dx, dy]))


def make_batch(
    scene: Scene,
    batch: int,
    size: int,
    max_amplitude: float,
    rng: np.random.Generator,
    keep_fraction: float = 1.0,
    n_gaussians: int = 30,
) -> dict[str, np.ndarray]:
    """Random training crops with exact ground truth.

    Returns arrays: `image` (B, S, S, 3) float32 0-255, `map` (B, S, S, 3) misregistered
    kept polygons, `displacement` (B, S, S, 2) true aligning field, `segmentation`
    (B, S, S, 4) targets of ALL true polygons, `dropped` (B, S, S) fill of the true
    polygons left out of the input map.
    """
    h, w = scene.shape
    if h < size or w < size:
        raise InputError("scene", f"image {w}x{h} is smaller than the crop size {size}")
    tree = shapely.STRtree(scene.geoms)
    centres = shapely.get_coordinates(shapely.centroid(scene.geoms)) if len(scene.geoms) else None
    out = {
        "image": np.zeros((batch, size, size, 3), np.float32),
        "map": np.zeros((batch, size, size, 3), np.float32),
        "displacement": np.zeros((batch, size, size, 2), np.float32),
        "segmentation": np.zeros((batch, size, size, 4), np.float32),
        "dropped": np.zeros((batch, size, size), np.float32),
    }
    for b in range(batch):
        if centres is not None and rng.random() < 0.9:
            cx, cy = centres[rng.integers(len(centres))] + rng.uniform(-size / 3, size / 3, 2)
            c0 = int(np.clip(cx - size / 2, 0, w - size))
            r0 = int(np.clip(cy - size / 2, 0, h - size))
        else:
            c0, r0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        hits = tree.query(shapely.box(c0, r0, c0 + size, r0 + size))
        true = _shift(scene.geoms[np.sort(hits)], -c0, -r0)
        field = random_smooth_field(size, size, max_amplitude, rng, n_gaussians)
        keep = rng.random(len(true)) < keep_fraction
        moved = displace(true[keep], field) if keep.any() else true[:0]
        out["image"][b] = scene.image[r0 : r0 + size, c0 : c0 + size]
        out["map"][b] = rasterize_map(moved, size, size)
        out["displacement"][b] = field
        out["segmentation"][b] = segmentation_target(true, size, size)
        out["dropped"][b] = rasterize_map(true[~keep], size, size)[..., 0] if (~keep).any() else 0.0
    return out


def within_image(scene: Scene, margin: float = 0.0) -> Scene:
    """The scene with only the polygons lying wholly inside the image (less `margin` pixels)
    and over valid imagery (at most 5% all-zero pixels, as outside a mosaic's tiles)."""
    h, w = scene.shape
    inside = shapely.within(scene.geoms, shapely.box(margin, margin, w - margin, h - margin))
    empty = (scene.image == 0).all(axis=-1)
    for i in np.flatnonzero(inside):
        minx, miny, maxx, maxy = scene.geoms[i].bounds
        c0, r0 = int(minx), int(miny)
        c1, r1 = min(int(np.ceil(maxx)) + 1, w), min(int(np.ceil(maxy)) + 1, h)
        t = Affine.translation(c0, r0)
        mask = rasterio.features.geometry_mask([scene.geoms[i]], (r1 - r0, c1 - c0), t, invert=True)
        if not mask.any() or empty[r0:r1, c0:c1][mask].mean() > 0.05:
            inside[i] = False
    return Scene(scene.image, scene.transform, scene.crs, scene.geoms[inside], scene.ids[inside])
