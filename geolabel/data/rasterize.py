"""Label vectors -> a uint8 class raster on exactly an imagery grid, block by block.

Lines (roads) are buffered by half their width in metres (in a local UTM CRS) before
they are burnt; areas are burnt as they are. Classes are painted in a fixed order so
the more precise ones win where they overlap (landuse < water < road < building).
A pixel is labelled by its centre (GDAL's rule); 255 marks pixels where the imagery
is nodata.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geolabel.classes import IGNORE, ClassMap
from geolabel.data.raster import RasterWriter, iter_windows, open_raster, read_block
from geolabel.progress import progress

PAINT_ORDER = ("landuse", "vegetation", "water", "road", "building")


def paint_rank(name: str) -> int:
    """Order in which a class is painted (later wins)."""
    return PAINT_ORDER.index(name) if name in PAINT_ORDER else -1


def label_shapes(labels, crs) -> tuple[np.ndarray, np.ndarray]:
    """Burnable areas of a label GeoDataFrame (see geolabel.data.osm) in `crs`, in paint order.

    Returns:
        (geometries, class ids) as arrays, lines already buffered to polygons.
    """
    if len(labels) == 0:
        return np.array([], dtype=object), np.array([], dtype=np.uint8)
    frame = labels[["class", "class_id", "width", "geometry"]].copy()
    is_line = frame.geom_type.isin(["LineString", "MultiLineString", "LinearRing"]) & frame["width"].notna()
    if is_line.any():
        lines = frame[is_line]
        utm = lines.estimate_utm_crs()  # metres on the ground (EPSG:3857 units are not, away from the equator)
        metric = lines.to_crs(utm)
        buffered = shapely.buffer(metric.geometry.values, metric["width"].to_numpy() / 2.0, cap_style="flat", join_style="round")
        frame.loc[is_line, "geometry"] = metric.set_geometry(buffered, crs=utm).to_crs(frame.crs).geometry.values
    frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon", "GeometryCollection"])].to_crs(crs)
    frame = frame.assign(_rank=[paint_rank(c) for c in frame["class"]])
    frame = frame.sort_values(["_rank", "class_id"], kind="stable")
    return frame.geometry.values, frame["class_id"].to_numpy(np.uint8)


def burn(geometries: np.ndarray, class_ids: np.ndarray, transform: Affine, width: int, height: int, tree: shapely.STRtree | None = None) -> np.ndarray:
    """Class ids of the shapes on a (height, width) grid; background 0."""
    out = np.zeros((height, width), np.uint8)
    if len(geometries) == 0:
        return out
    left, top = transform.c, transform.f
    right, bottom = transform * (width, height)
    window_box = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    index = tree.query(window_box) if tree is not None else np.arange(len(geometries))
    if len(index) == 0:
        return out
    index = np.sort(index)  # keep paint order
    shapes = [(g, int(v)) for g, v in zip(geometries[index], class_ids[index]) if g is not None and not g.is_empty]
    if not shapes:
        return out
    return rasterize(shapes, out_shape=(height, width), transform=transform, fill=0, dtype="uint8")


def rasterize_labels(
    labels,
    imagery_path: str | os.PathLike,
    out_path: str | os.PathLike,
    classes: ClassMap,
    block: int = 2048,
) -> dict[str, int]:
    """Write `labels` as a uint8 class COG on the grid of `imagery_path` (255 where imagery is nodata).

    Returns:
        pixel counts per class name (and "nodata").
    """
    counts = np.zeros(256, np.int64)
    with open_raster(imagery_path) as src:
        geometries, class_ids = label_shapes(labels, src.crs)
        tree = shapely.STRtree(geometries) if len(geometries) else None
        with RasterWriter(
            out_path, width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs, transform=src.transform,
            nodata=IGNORE, blocksize=512, compress="deflate", colormap=classes.colormap(), band_descriptions=["class"],
            tags={"classes": ",".join(classes.names)},
        ) as writer:
            windows = list(iter_windows(src.width, src.height, block))
            for window in progress(windows, desc="rasterise", unit="block"):
                h, w = int(window.height), int(window.width)
                mask = burn(geometries, class_ids, window_transform(window, src.transform), w, h, tree)
                mask[~read_block(src, window).valid_mask()] = IGNORE
                counts += np.bincount(mask.ravel(), minlength=256)
                writer.write(mask, window)
    result = {name: int(counts[i]) for i, name in enumerate(classes.names)}
    result["nodata"] = int(counts[IGNORE])
    return result


def grid_window(transform: Affine, width: int, height: int, bounds: tuple[float, float, float, float]) -> Window:
    """Whole-pixel window of a grid that covers `bounds` (left, bottom, right, top), clipped to the grid."""
    inverse = ~transform
    xs, ys = zip(*(inverse * (x, y) for x in (bounds[0], bounds[2]) for y in (bounds[1], bounds[3])))
    c0, c1 = max(0, math.floor(min(xs) + 1e-9)), min(width, math.ceil(max(xs) - 1e-9))
    r0, r1 = max(0, math.floor(min(ys) + 1e-9)), min(height, math.ceil(max(ys) - 1e-9))
    return Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))


def mask_to_vectors(mask_path: str | os.PathLike, out_path: str | os.PathLike, class_name: str = "building") -> Path:
    """Polygons of a one-class mask raster (non-zero, valid pixels) as GeoJSON in the mask's CRS.

    The inverse of rasterising, for clean masks (e.g. Inria's 0/255) that fetch should read
    as vector labels; every polygon gets `class_name` in a `class` column.
    """
    import geopandas as gpd
    import rasterio.features
    import shapely.geometry

    from geolabel.atomic import atomic_path
    from geolabel.data.raster import read_raster

    block = read_raster(mask_path)
    inside = ((block.array[0] != 0) & block.valid_mask()).astype("uint8")
    shapes = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(inside, mask=inside == 1, transform=block.transform) if v == 1]
    frame = gpd.GeoDataFrame({"class": [class_name] * len(shapes)}, geometry=shapes, crs=block.crs)
    with atomic_path(out_path, suffix=".tmp.geojson") as tmp:
        tmp.unlink()
        frame.to_file(tmp, driver="GeoJSON")
    return Path(out_path)
