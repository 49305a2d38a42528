"""tf.data input pipeline over chip shards: decode, random crops and zooms, D4 transforms, photometric jitter.

Deterministic for a given seed: every random choice uses stateless ops seeded by
(seed, element index), and shuffling is seeded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from geolabel.classes import IGNORE
from geolabel.data.chips import COMPRESSION, parse_chip, shard_paths
from geolabel.data.standardize import BandStats, standardize
from geolabel.errors import InputError


def dataset_shards(dataset: str | os.PathLike, split: str) -> list[Path]:
    """Shards of `split` ("train"/"val") of a dataset folder (or a folder of shards itself)."""
    root = Path(dataset)
    for folder in (root / "chips", root):
        paths = shard_paths(folder, split)
        if paths:
            return paths
    raise InputError(dataset, f"no {split}-*.tfrecord.gz chip shards in it or in its chips/ folder")


def dataset_fingerprint(dataset: str | os.PathLike) -> str:
    """A hash of a dataset's manifest and the names and sizes of its chip shards.

    A re-fetched, re-cut or edited dataset gets another one, so a resumed run can tell that
    its data changed under it (cheap: no chip is read).
    """
    root = Path(dataset)
    digest = hashlib.sha256()
    if (root / "manifest.json").is_file():
        digest.update((root / "manifest.json").read_bytes())
    for split in ("train", "val"):
        try:
            shards = dataset_shards(root, split)
        except InputError:
            continue
        for path in shards:
            digest.update(f"{split}/{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:24]


def dihedral(image: tf.Tensor, mask: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply the k-th of the 8 dihedral transforms (k in 0..7: k % 4 quarter turns, transposed if k >= 4)."""
    both = tf.concat([image, tf.cast(mask[..., None], image.dtype)], axis=-1)
    both = tf.cond(k >= 4, lambda: tf.transpose(both, [1, 0, 2]), lambda: both)
    both = tf.image.rot90(both, k % 4)
    return both[..., :-1], tf.cast(both[..., -1], mask.dtype)


def _pad_to(image: tf.Tensor, mask: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad chips smaller than `size` (image with 0, mask with IGNORE) at the bottom/right."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ph, pw = tf.maximum(size - h, 0), tf.maximum(size - w, 0)
    image = tf.pad(image, [[0, ph], [0, pw], [0, 0]])
    mask = tf.pad(mask, [[0, ph], [0, pw]], constant_values=IGNORE)
    return image, mask


def _lookup(table: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """Per-band lookup: `table` (C, 256) applied to a uint8 image (H, W, C)."""
    bands = [tf.gather(table[c], tf.cast(image[..., c], tf.int32)) for c in range(table.shape[0])]
    return tf.stack(bands, axis=-1)


def downsample_chip(image: tf.Tensor, mask: tf.Tensor, factor: int, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Area-average a chip by `factor` (cropping to a multiple of it); each coarse label is the
    majority class of its known fine pixels, IGNORE where fewer than half are known."""
    if factor == 1:
        return image, mask
    h = tf.shape(image)[0] // factor * factor
    w = tf.shape(image)[1] // factor * factor
    x = tf.nn.avg_pool2d(tf.cast(image[None, :h, :w], tf.float32), factor, factor, "VALID")[0]
    labels = tf.cast(mask[:h, :w], tf.int32)
    onehot = tf.one_hot(tf.where(labels == IGNORE, num_classes, labels), num_classes + 1)
    fractions = tf.nn.avg_pool2d(onehot[None], factor, factor, "VALID")[0]
    coarse = tf.argmax(fractions[..., :num_classes], axis=-1, output_type=tf.int32)
    coarse = tf.where(fractions[..., num_classes] > 0.5, IGNORE, coarse)
    return tf.cast(tf.round(x), image.dtype), tf.cast(coarse, tf.uint8)


def _jitter(image: tf.Tensor, seeds: tf.Tensor, strength: float, hue: float) -> tf.Tensor:
    """Brightness, contrast and saturation jitter of `strength`, hue rotation up to `hue`, on a float [0, 255] RGB(+) image."""
    x = image / 255.0
    rgb = x[..., :3]
    colour = image.shape[-1] is not None and image.shape[-1] >= 3
    if strength > 0:
        rgb = tf.image.stateless_random_brightness(rgb, 0.2 * strength, seeds[0])
        rgb = tf.image.stateless_random_contrast(rgb, 1 - 0.3 * strength, 1 + 0.3 * strength, seeds[1])
        if colour:
            rgb = tf.image.stateless_random_saturation(rgb, 1 - 0.3 * strength, 1 + 0.3 * strength, seeds[2])
    if colour and hue > 0:
        rgb = tf.image.stateless_random_hue(rgb, hue, seeds[3])
    x = tf.concat([rgb, x[..., 3:]], axis=-1)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def make_dataset(
    shards: Sequence[str | os.PathLike] | Sequence[Sequence[str | os.PathLike]],
    crop: int,
    batch_size: int,
    training: bool = True,
    seed: int = 0,
    channels: int = 3,
    jitter: float = 1.0,
    d4: bool = True,
    zoom: float = 1.0,
    hue: float | None = None,
    grayscale: float = 0.0,
    shuffle_buffer: int = 256,
    balance: bool = True,
    downsample: int = 1,
    num_classes: int = 2,
    cache: bool = False,
    band_stats: Sequence[BandStats] | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 pixels [0, 255] (B, crop, crop, C), uint8 labels (B, crop, crop)).

    Args:
        shards: shard paths, or a list of shard-path lists (one per dataset/city).
        crop: side of the square crops (random when training, central otherwise).
        batch_size: global batch size.
        training: random crops + augmentation, shuffled, repeated forever; else one
            deterministic pass.
        seed: seed of every random choice.
        channels: image bands.
        jitter: photometric jitter strength (0 = off).
        d4: apply a random dihedral transform (8 cases).
        zoom: largest random zoom factor (1 = off): each crop covers a square of side
            crop * s, s log-uniform in [1/zoom, zoom] (bounded by the chip), resized to
            `crop`, so buildings are seen at sizes other cities have.
        hue: largest random hue rotation, as a fraction of the colour circle (0-0.5;
            default 0.04 x jitter); 0.5 = any hue, so roof colours a city lacks are seen.
        grayscale: probability of turning a crop grey (RGB -> luma in all 3 bands), so
            the model also learns buildings from shape and texture alone.
        shuffle_buffer: chips held for shuffling.
        balance: with several datasets, draw from each equally often (else by size).
        downsample: area-average chips by this factor first (train at a coarser resolution);
            `crop` is then in coarse pixels.
        num_classes: classes of the labels (for the majority vote of `downsample`).
        cache: keep the decoded (and downsampled) chips in memory after the first pass:
            for datasets that fit in RAM, it removes PNG decoding from every later step.
        band_stats: one `BandStats` per dataset: map each dataset's colours to the common
            reference (per-scene standardisation; predict then standardises its raster too).
    """
    groups = [list(shards)] if shards and isinstance(shards[0], (str, os.PathLike)) else [list(g) for g in shards]
    groups = [g for g in groups if g]
    if not groups:
        raise InputError("chips", "no shards given")
    if zoom < 1.0:
        raise InputError("zoom", f"must be >= 1 (1 = off), got {zoom}")
    hue = 0.04 * jitter if hue is None else hue
    if not 0.0 <= hue <= 0.5:
        raise InputError("hue", f"must be in [0, 0.5], got {hue}")
    if not 0.0 <= grayscale <= 1.0:
        raise InputError("grayscale", f"must be a probability in [0, 1], got {grayscale}")
    if band_stats is not None and len(band_stats) != len(groups):
        raise InputError("band_stats", f"{len(band_stats)} given for {len(groups)} datasets")
    for group in groups:
        for path in group:
            if not Path(path).is_file():
                raise InputError(path, "chip shard not found")

    def records(group: list, index: int) -> tf.data.Dataset:
        files = tf.data.Dataset.from_tensor_slices([str(p) for p in group])
        if training and not cache:
            files = files.shuffle(len(group), seed=seed + index).repeat()
        ds = files.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
            cycle_length=min(len(group), 4),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if training and not cache:
            # shuffle the still-encoded records: cheap to hold, no decoding before the first batch
            ds = ds.shuffle(shuffle_buffer, seed=seed + 1000 + index)
        ds = ds.map(lambda r: parse_chip(r, channels), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if band_stats is not None:
            table = tf.constant(standardize(np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, 1),
                                            band_stats[index], np.uint8).T)
            ds = ds.map(lambda image, mask: (_lookup(table, image), mask),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if downsample > 1:
            ds = ds.map(
                lambda image, mask: downsample_chip(image, mask, downsample, num_classes),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        if cache:
            ds = ds.cache()
            if training:
                ds = ds.shuffle(shuffle_buffer, seed=seed + 1000 + index).repeat()
        return ds

    parts = [records(group, i) for i, group in enumerate(groups)]
    if len(parts) == 1:
        ds = parts[0]
    elif training:
        sizes = [float(len(g)) for g in groups]
        weights = [1.0 / len(parts)] * len(parts) if balance else [s / sum(sizes) for s in sizes]
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=weights, seed=seed, stop_on_empty_dataset=False)
    else:
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)

    def static_shape(image, mask):  # known crop sides: `fit` traces the model for them
        return tf.ensure_shape(image, [crop, crop, channels]), tf.ensure_shape(mask, [crop, crop])

    def augment(index, example):
        image, mask = example
        image, mask = _pad_to(image, mask, crop)
        seeds = tf.random.experimental.stateless_split(tf.stack([tf.cast(seed, tf.int64), index]), 8)
        both = tf.concat([tf.cast(image, tf.int32), tf.cast(mask[..., None], tf.int32)], axis=-1)
        if zoom > 1.0:
            log_s = tf.random.stateless_uniform([], seeds[6], -1.0, 1.0) * tf.math.log(zoom)
            limit = tf.minimum(tf.shape(both)[0], tf.shape(both)[1])
            side = tf.clip_by_value(tf.cast(tf.round(crop * tf.exp(log_s)), tf.int32), 8, limit)
            region = tf.image.stateless_random_crop(both, tf.stack([side, side, channels + 1]), seeds[0])
            image = tf.image.resize(tf.cast(region[..., :channels], tf.float32), [crop, crop], "bilinear", antialias=True)
            labels = tf.image.resize(region[..., channels:], [crop, crop], "nearest")[..., 0]
            image, mask = tf.clip_by_value(image, 0.0, 255.0), tf.cast(labels, tf.uint8)
        else:
            both = tf.image.stateless_random_crop(both, [crop, crop, channels + 1], seeds[0])
            image, mask = tf.cast(both[..., :channels], tf.float32), tf.cast(both[..., channels], tf.uint8)
        if d4:
            k = tf.random.stateless_uniform([], seeds[1], 0, 8, dtype=tf.int32)
            image, mask = dihedral(image, mask, k)
        if jitter > 0 or hue > 0:
            image = _jitter(image, seeds[2:6], jitter, hue)
        if grayscale > 0 and channels >= 3:
            grey = tf.image.rgb_to_grayscale(image[..., :3])
            make_grey = tf.random.stateless_uniform([], seeds[7]) < grayscale
            image = tf.where(make_grey, tf.concat([tf.repeat(grey, 3, axis=-1), image[..., 3:]], axis=-1), image)
        return static_shape(image, mask)

    def center(image, mask):
        image, mask = _pad_to(image, mask, crop)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        top, left = (h - crop) // 2, (w - crop) // 2
        return static_shape(tf.cast(image[top : top + crop, left : left + crop], tf.float32),
                            mask[top : top + crop, left : left + crop])

    if training:
        ds = ds.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(center, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    if not training:  # a known length: Keras then reads the whole pass each epoch, no "ran out of data"
        chips = sum(int(tf.data.TFRecordDataset([str(p) for p in g], compression_type=COMPRESSION)
                        .reduce(np.int64(0), lambda n, _: n + 1)) for g in groups)
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-chips // batch_size)))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
