"""Real chip shards for the training tests, cut from ../shared/data/inria-austin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def austin_arrays(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """Inria Austin crop: image (H, W, 3) uint8 and building mask (H, W) in {0, 1}."""
    import rasterio

    with rasterio.open(shared_data / "inria-austin" / "image.tif") as src:
        image = src.read().transpose(1, 2, 0)
    with rasterio.open(shared_data / "inria-austin" / "buildings-mask.tif") as src:
        mask = (src.read(1) > 127).astype(np.uint8)
    return image, mask


def write_austin_dataset(folder: Path, image: np.ndarray, mask: np.ndarray, size: int = 96, rows: tuple = (0, 1000)) -> Path:
    """A dataset folder with train (top half of `rows`) and val (bottom half) chips of `size` px."""
    from geolabel.data.chips import Chip, write_shards

    r0, r1 = rows
    mid = (r0 + r1) // 2

    def chips(a: int, b: int):
        for r in range(a, b - size + 1, size):
            for c in range(0, image.shape[1] - size + 1, size):
                yield Chip(image[r : r + size, c : c + size].copy(), mask[r : r + size, c : c + size].copy(),
                           (c, r, c + size, r + size), "pixel", "inria-austin")

    write_shards(chips(r0, mid), folder / "chips", "train", chips_per_shard=12)
    write_shards(chips(mid, r1), folder / "chips", "val", chips_per_shard=12)
    return folder


@pytest.fixture(scope="session")
def austin_dataset(tmp_path_factory, austin_arrays) -> Path:
    """Dataset folder (chips/train-*, chips/val-*) of 96 px real chips of Inria Austin's top 480 rows."""
    image, mask = austin_arrays
    return write_austin_dataset(tmp_path_factory.mktemp("austin"), image, mask, rows=(0, 480))
