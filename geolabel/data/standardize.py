"""Per-scene colour standardisation: map each scene's band statistics onto one reference.

Cities differ in sensor, sun and roof colours; a model trained on two of them reads colour
as evidence that does not transfer to a third. Mapping every scene (each training city and
the raster to predict) to the same per-band mean and standard deviation removes the
scene-wide part of that shift while keeping pixel values in [0, 255], so any model's own
input normalisation still applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geolabel.errors import InputError

if TYPE_CHECKING:
    from geolabel.data.imagery import InputScaling

REFERENCE_MEAN = 128.0
REFERENCE_STD = 48.0
SAMPLE_PIXELS = 4_000_000  # pixels read for a raster's statistics (a decimated read)


@dataclass(frozen=True)
class BandStats:
    """Per-band mean and standard deviation of a scene's valid pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def means_only(self) -> BandStats:
        """These statistics with the reference spread: standardising then shifts each band's
        mean and keeps the scene's contrast."""
        return BandStats(self.mean, (REFERENCE_STD,) * len(self.mean))

    def with_contrast(self, contrast: bool) -> BandStats:
        """These statistics if `contrast` (standardising maps the spread too), else `means_only()`."""
        return self if contrast else self.means_only()

    @classmethod
    def from_dict(cls, data: dict) -> BandStats:
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))


def band_stats(image: np.ndarray, valid: np.ndarray | None = None) -> BandStats:
    """Statistics of an (H, W, C) image over the pixels where `valid` (H, W) is true.

    Large images are sampled on a regular pixel stride (about 4 Mpx), enough for a mean and std.
    """
    step = max(1, image.shape[0] * image.shape[1] // SAMPLE_PIXELS)
    pixels = image.reshape(-1, image.shape[-1])[::step]
    if valid is not None:
        pixels = pixels[valid.reshape(-1)[::step]]
    if len(pixels) == 0:
        raise InputError("image", "has no valid pixels to compute band statistics from")
    pixels = pixels.astype(np.float64)
    return BandStats(tuple(pixels.mean(0).tolist()), tuple(np.maximum(pixels.std(0), 1.0).tolist()))


def raster_band_stats(path: str | Path, bands: list[int] | None = None, scaling: InputScaling | None = None) -> BandStats:
    """Statistics of a raster's valid pixels from a decimated read (about 4 Mpx, any raster size),
    after `scaling` (`bands` then are its bands) when given."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        factor = max(1.0, np.sqrt(src.width * src.height / SAMPLE_PIXELS))
        shape = (max(1, int(src.height / factor)), max(1, int(src.width / factor)))
        indexes = bands or list(range(1, src.count + 1))
        image = src.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.nearest)
        image = scaling.apply(image) if scaling else image
        valid = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
    return band_stats(image.transpose(1, 2, 0), valid)


def chips_band_stats(shards: Sequence[str | Path], channels: int = 3, max_chips: int = 64) -> BandStats:
    """Statistics of a chip dataset from up to `max_chips` chips spread over its shards.

    Pixels whose label is unknown (no imagery) are left out, as nodata is for a raster.
    """
    import tensorflow as tf

    from geolabel.classes import IGNORE
    from geolabel.data.chips import COMPRESSION, parse_chip

    if not shards:
        raise InputError("chips", "no shards to compute band statistics from")
    picked = [str(s) for s in list(shards)[:: max(1, len(shards) // max_chips)]]
    per_shard = max(1, -(-max_chips // len(picked)))
    chips = tf.data.Dataset.from_tensor_slices(picked).interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=COMPRESSION).take(per_shard),
        cycle_length=1).map(lambda record: parse_chip(record, channels))
    pixels, masks = [], []
    for image, mask in chips.as_numpy_iterator():
        pixels.append(image[::4, ::4].reshape(-1, channels))
        masks.append(mask[::4, ::4].reshape(-1) != IGNORE)
    return band_stats(np.concatenate(pixels)[:, None], np.concatenate(masks)[:, None])


def standardize(image: np.ndarray, stats: BandStats, dtype: type = np.float32) -> np.ndarray:
    """`image` (..., C) with each band mapped from `stats` to the reference mean/std, in [0, 255].

    8-bit images go through a per-band lookup table, so a whole city raster needs no float copy.
    """
    mean = np.asarray(stats.mean, np.float32)
    gain = REFERENCE_STD / np.asarray(stats.std, np.float32)
    if image.shape[-1] != len(mean):
        raise InputError("image", f"has {image.shape[-1]} bands but the statistics describe {len(mean)}")
    integer = np.issubdtype(np.dtype(dtype), np.integer)

    def mapped(values: np.ndarray) -> np.ndarray:  # (..., C) -> dtype
        scaled = np.clip((values.astype(np.float32) - mean) * gain + REFERENCE_MEAN, 0.0, 255.0)
        return (np.round(scaled) if integer else scaled).astype(dtype)

    if image.dtype != np.uint8:
        return mapped(image)
    table = mapped(np.repeat(np.arange(256, dtype=np.float32)[:, None], len(mean), 1))  # (256, C)
    out = np.empty(image.shape, dtype)
    for band in range(len(mean)):
        out[..., band] = table[:, band][image[..., band]]
    return out
