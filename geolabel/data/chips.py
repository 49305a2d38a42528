"""Training chips as `tf.train.Example` records in sharded, compressed TFRecord files.

One record = one chip: PNG-encoded image (uint8, 1-4 bands) and class mask (uint8,
255 = ignore), its georeferenced bounds and CRS, and where it came from. Every writer
(fetch, the TFX FetchExamples component) and reader (training) goes through here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from geolabel.atomic import atomic_path

IGNORE = 255
COMPRESSION = "GZIP"
FEATURES = ("image", "mask", "height", "width", "channels", "bounds", "crs", "source")


@dataclass
class Chip:
    """One training chip.

    Args:
        image: (height, width, channels) uint8.
        mask: (height, width) uint8 class ids, 255 where unknown.
        bounds: (left, bottom, right, top) in `crs` units.
        crs: CRS as text (e.g. "EPSG:3857" or WKT).
        source: name of the dataset/city it came from.
    """

    image: np.ndarray
    mask: np.ndarray
    bounds: tuple[float, float, float, float]
    crs: str
    source: str = ""


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_chip(chip: Chip) -> bytes:
    """Serialize a chip as a tf.train.Example."""
    import tensorflow as tf

    image = chip.image if chip.image.ndim == 3 else chip.image[..., None]
    if image.dtype != np.uint8 or chip.mask.dtype != np.uint8:
        raise ValueError("chips hold uint8 image and mask")
    png_image = image[..., 0] if image.shape[-1] == 1 else image
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(png_image)])),
        "mask": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(chip.mask)])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[0]])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[1]])),
        "channels": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[2]])),
        # float64 bytes: a FloatList (float32) loses ~0.5 m at Web-Mercator magnitudes
        "bounds": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.asarray(chip.bounds, "<f8").tobytes()])),
        "crs": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chip.crs.encode()])),
        "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chip.source.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def decode_chip(record: bytes) -> Chip:
    """Inverse of `encode_chip`, in numpy (for tools and tests; training uses `parse_chip`)."""
    import tensorflow as tf

    f = tf.train.Example.FromString(record).features.feature
    image = np.asarray(Image.open(io.BytesIO(f["image"].bytes_list.value[0])))
    if image.ndim == 2:
        image = image[..., None]
    mask = np.asarray(Image.open(io.BytesIO(f["mask"].bytes_list.value[0])))
    return Chip(
        image=image,
        mask=mask,
        bounds=tuple(np.frombuffer(f["bounds"].bytes_list.value[0], "<f8").tolist()),
        crs=f["crs"].bytes_list.value[0].decode(),
        source=f["source"].bytes_list.value[0].decode(),
    )


def parse_chip(record, channels: int = 3):
    """tf.data map function: serialized Example -> (image uint8 HxWxC, mask uint8 HxW)."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
    }
    parsed = tf.io.parse_single_example(record, spec)
    image = tf.io.decode_png(parsed["image"], channels=channels)
    mask = tf.io.decode_png(parsed["mask"], channels=1)[..., 0]
    return image, mask


def write_shards(chips: Iterable[Chip], folder: str | os.PathLike, prefix: str, chips_per_shard: int = 256) -> list[Path]:
    """Write chips to `folder/prefix-00000-of-NNNNN.tfrecord.gz` shards, each atomically."""
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    batches: list[list[bytes]] = [[]]
    for chip in chips:
        if len(batches[-1]) == chips_per_shard:
            batches.append([])
        batches[-1].append(encode_chip(chip))
    if not batches[-1]:
        batches.pop()
    paths = []
    for i, batch in enumerate(batches):
        path = folder / f"{prefix}-{i:05d}-of-{len(batches):05d}.tfrecord.gz"
        with atomic_path(path) as tmp:
            with tf.io.TFRecordWriter(str(tmp), options=COMPRESSION) as writer:
                for record in batch:
                    writer.write(record)
        paths.append(path)
    return paths


def shard_paths(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """The shards of one split, sorted."""
    return sorted(Path(folder).glob(f"{prefix}-*.tfrecord.gz"))


def read_chips(paths: Iterable[str | os.PathLike]) -> Iterator[Chip]:
    """Iterate decoded chips from shards (numpy side)."""
    import tensorflow as tf

    for path in paths:
        for record in tf.data.TFRecordDataset(str(path), compression_type=COMPRESSION).as_numpy_iterator():
            yield decode_chip(record)
