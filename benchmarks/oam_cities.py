"""The three shared OAM + OSM cities as arrays, for the training benchmarks.

Prefers the datasets `geolabel fetch` writes (benchmarks/data/oam/{city}/imagery.tif,
labels.tif); without them, mosaics the XYZ tiles of ../shared/data/oam-osm and
rasterises the OSM buildings on the same Web Mercator grid. Cached as .npy under
benchmarks/out/ (git-ignored).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "oam-osm"
FETCHED = ROOT / "benchmarks" / "data" / "oam"
CACHE = ROOT / "benchmarks" / "out" / "oam-cache"
CITIES = ("zanzibar-tz", "kampala-ug", "virac-ph")


def _tile_range(city: str, zoom: int):
    """The `geolabel.data.tiles.TileRange` of a city's XYZ tiles (its `transform()` is the mosaic's)."""
    from geolabel.data.tiles import local_tile_range

    return local_tile_range(SHARED / city / "tiles", zoom)


def _from_tiles(city: str, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    import geopandas as gpd
    from rasterio.features import rasterize

    from geolabel.data.tiles import TileFolder, read_tiles

    trange = _tile_range(city, zoom)
    array, present = read_tiles(TileFolder(SHARED / city / "tiles"), trange, source=city)
    image = np.ascontiguousarray(array.transpose(1, 2, 0))
    valid = np.repeat(np.repeat(present, 256, axis=0), 256, axis=1)
    buildings = gpd.read_file(SHARED / city / "osm-buildings.geojson").to_crs("EPSG:3857")
    shapes = [(g, 1) for g in buildings.geometry if g is not None and not g.is_empty]
    labels = rasterize(shapes, out_shape=valid.shape, transform=trange.transform(), fill=0, dtype="uint8")
    labels[~valid] = 255
    return image, labels


def _from_fetched(city: str) -> tuple[np.ndarray, np.ndarray] | None:
    import rasterio

    folder = FETCHED / city
    if not (folder / "imagery.tif").is_file() or not (folder / "labels.tif").is_file():
        return None
    with rasterio.open(folder / "imagery.tif") as src:
        image = src.read([1, 2, 3]).transpose(1, 2, 0)
        valid = src.dataset_mask() > 0
    with rasterio.open(folder / "labels.tif") as src:
        labels = src.read(1)
    labels = np.where(valid, labels, 255).astype(np.uint8)
    return np.ascontiguousarray(image), labels


def load_city(city: str, zoom: int = 21) -> tuple[np.ndarray, np.ndarray, str]:
    """(image HxWx3 uint8, labels HxW uint8 with 255 = no imagery, source description)."""
    fetched = _from_fetched(city) if zoom == 21 else None
    if fetched is not None:
        return (*fetched, f"geolabel fetch dataset {FETCHED / city}")
    cache = CACHE / f"{city}-z{zoom}.npz"
    if not cache.is_file():
        image, labels = _from_tiles(city, zoom)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, image=image, labels=labels)
    data = np.load(cache)
    return data["image"], data["labels"], f"XYZ tiles z{zoom} + OSM rasterised ({SHARED / city})"


def city_buildings(city: str, zoom: int = 21) -> tuple[np.ndarray, float]:
    """(OSM building ids rasterised one by one on `load_city`'s tile grid (int32, 0 = none),
    ground metres per pixel at the city's latitude)."""
    import geopandas as gpd
    from rasterio.features import rasterize

    if _from_fetched(city) is not None and zoom == 21:
        raise ValueError(f"{city}: building instances are rasterised on the tile grid, not on {FETCHED / city}")
    trange = _tile_range(city, zoom)
    width, height, transform = trange.columns * 256, trange.rows * 256, trange.transform()
    buildings = gpd.read_file(SHARED / city / "osm-buildings.geojson")
    west, south, east, north = buildings.total_bounds
    latitude = (south + north) / 2
    shapes = [(g, i + 1) for i, g in enumerate(buildings.to_crs("EPSG:3857").geometry) if g is not None and not g.is_empty]
    ids = rasterize(shapes, out_shape=(height, width), transform=transform, fill=0, dtype="int32")
    return ids, transform.a * math.cos(math.radians(latitude))


def downsample(image: np.ndarray, labels: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-average the image by `factor`; label = building where >= half the known pixels are,
    255 where fewer than half the pixels are known (matches the models' input AveragePooling)."""
    if factor == 1:
        return image, labels
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).astype(np.float32)
    small = np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
    lab = labels[:h, :w].reshape(h // factor, factor, w // factor, factor)
    known = (lab != 255).mean(axis=(1, 3))
    building = (lab == 1).sum(axis=(1, 3)) / np.maximum((lab != 255).sum(axis=(1, 3)), 1)
    out = np.where(building >= 0.5, 1, 0).astype(np.uint8)
    out[known < 0.5] = 255
    return small, out


def city_chips(image: np.ndarray, labels: np.ndarray, size: int, step: int, source: str, min_known: float = 0.3):
    """Chips of `size` every `step` px with at least `min_known` labelled pixels."""
    from geolabel.data.chips import Chip

    h, w = labels.shape
    for r in range(0, max(h - size, 0) + 1, step):
        for c in range(0, max(w - size, 0) + 1, step):
            lab = labels[r : r + size, c : c + size]
            if (lab != 255).mean() >= min_known:
                yield Chip(image[r : r + size, c : c + size].copy(), lab.copy(), (c, r, c + size, r + size), "pixel", source)
