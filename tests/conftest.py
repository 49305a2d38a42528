"""Shared fixtures; every test runs behind a guard that allows loopback connections only."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _is_loopback(address) -> bool:
    if isinstance(address, tuple):
        host = address[0]
    else:  # AF_UNIX paths are local by definition
        return True
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkAccessError(RuntimeError):
    """A test tried to open a connection outside the loopback range."""


def _guarded(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise NetworkAccessError(f"test tried to connect to non-loopback address {address!r}")
        return real(self, address)

    return connect


@pytest.fixture(autouse=True, scope="session")
def loopback_only():
    socket.socket.connect = _guarded(_real_connect)
    socket.socket.connect_ex = _guarded(_real_connect_ex)
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real imagery and OSM labels in ../shared/data."""
    if not SHARED_DATA.is_dir():
        raise RuntimeError(f"{SHARED_DATA}: the shared real-data folder is missing (tests need it beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def austin_scene(shared_data, tmp_path_factory) -> dict[str, Path]:
    """A 256 px crop of the real Inria Austin scene as every kind of command input: `image` (RGB GeoTIFF),
    `classes` (its clean building mask as a class raster), `labels` (the mask's buildings as GeoJSON),
    `model` (a per-pixel segmentation model, .keras), `aligner` (an untrained MultiscaleAligner, .keras),
    and two faulty copies of the image: `truncated` (cut in half) and `no_crs`."""
    import geopandas as gpd
    import keras
    import numpy as np
    import rasterio
    import shapely.geometry
    from rasterio.features import shapes
    from rasterio.windows import Window

    from geolabel.models.alignment import MultiscaleAligner

    root = tmp_path_factory.mktemp("austin-scene")
    window = Window(300, 250, 256, 256)
    with rasterio.open(shared_data / "inria-austin" / "image.tif") as src:
        image, transform, crs = src.read(window=window), src.window_transform(window), src.crs
    with rasterio.open(shared_data / "inria-austin" / "buildings-mask.tif") as src:
        mask = (src.read(1, window=window) > 127).astype("uint8")
    profile = dict(driver="GTiff", width=256, height=256, transform=transform, tiled=True, blockxsize=128, blockysize=128)
    paths = {name: root / f"{name}.tif" for name in ("image", "classes", "no_crs")}
    for name, array, georef in (("image", image, {"crs": crs}), ("classes", mask[None], {"crs": crs}), ("no_crs", image, {})):
        with rasterio.open(paths[name], "w", count=len(array), dtype="uint8", **profile, **georef) as dst:
            dst.write(array)
    data = paths["image"].read_bytes()
    paths["truncated"] = root / "truncated.tif"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    polygons = [shapely.geometry.shape(g) for g, v in shapes(mask, mask=mask == 1, transform=transform) if v == 1]
    paths["labels"] = root / "labels.geojson"
    gpd.GeoDataFrame({"class": ["building"] * len(polygons)}, geometry=polygons, crs=crs).to_file(paths["labels"])
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Softmax()(keras.layers.Conv2D(2, 1)(keras.layers.Rescaling(1 / 255.0)(inputs)))
    paths["model"] = root / "model.keras"
    keras.Model(inputs, outputs).save(paths["model"])
    aligner = MultiscaleAligner(scales=(4, 2, 1), filters=(4, 4, 8))
    aligner([np.zeros((1, 32, 32, 3), "float32"), np.zeros((1, 32, 32, 3), "float32")])
    paths["aligner"] = root / "aligner.keras"
    aligner.save(paths["aligner"])
    return paths
