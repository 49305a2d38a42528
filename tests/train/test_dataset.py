"""tf.data pipeline over real chip shards."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from geolabel.errors import InputError
from geolabel.train.dataset import dataset_shards, dihedral, downsample_chip, make_dataset


def first_batches(ds, n=2):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_batches_have_crop_shape_and_valid_values(austin_dataset):
    ds = make_dataset(dataset_shards(austin_dataset, "train"), crop=64, batch_size=4, seed=1)
    x, y = first_batches(ds, 1)[0]
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.float32
    assert y.shape == (4, 64, 64) and y.dtype == np.uint8
    assert 0 <= x.min() and x.max() <= 255
    assert set(np.unique(y)) <= {0, 1}


def test_same_seed_same_batches_other_seed_differs(austin_dataset):
    shards = dataset_shards(austin_dataset, "train")
    a = first_batches(make_dataset(shards, 64, 4, seed=3))
    b = first_batches(make_dataset(shards, 64, 4, seed=3))
    c = first_batches(make_dataset(shards, 64, 4, seed=4))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_eight_dihedral_transforms_are_distinct_and_keep_pairs_aligned(austin_arrays):
    image, mask = austin_arrays
    img = tf.constant(image[:32, :48].astype("float32"))
    msk = tf.constant(mask[:32, :48])
    outs = [dihedral(img, msk, tf.constant(k)) for k in range(8)]
    assert len({o[0].numpy().tobytes() for o in outs}) == 8
    # an image that *is* its mask stays equal to the transformed mask under every transform
    as_image = tf.constant(np.repeat(mask[:32, :48, None], 3, -1).astype("float32"))
    for k in range(8):
        x, y = dihedral(as_image, msk, tf.constant(k))
        np.testing.assert_array_equal(x.numpy()[..., 0], y.numpy())
        assert x.shape[:2] == ((32, 48) if k in (0, 2, 5, 7) else (48, 32))


def test_validation_is_one_deterministic_pass_of_central_crops(austin_dataset):
    shards = dataset_shards(austin_dataset, "val")
    ds = make_dataset(shards, crop=64, batch_size=5, training=False)
    batches = first_batches(ds, 100)
    total = sum(len(x) for x, _ in batches)
    assert total == 2 * 10  # 240 val rows / 96 -> 2 chip rows x 10 chip columns
    again = first_batches(make_dataset(shards, crop=64, batch_size=5, training=False), 1)
    np.testing.assert_array_equal(batches[0][0], again[0][0])


def test_small_chips_are_padded_with_ignore(austin_dataset):
    ds = make_dataset(dataset_shards(austin_dataset, "val"), crop=128, batch_size=2, training=False)
    _, y = first_batches(ds, 1)[0]
    assert (y[:, 96:, :] == 255).all() and (y[:, :96, :96] != 255).all()


def test_downsample_majority_and_ignore():
    image = tf.constant(np.arange(16, dtype="uint8").reshape(4, 4, 1).repeat(3, -1))
    mask = tf.constant(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [255, 255, 1, 1], [255, 0, 1, 1]], "uint8"))
    small, labels = downsample_chip(image, mask, 2, 2)
    np.testing.assert_array_equal(labels.numpy(), [[1, 0], [255, 1]])
    assert small.numpy()[0, 0, 0] == pytest.approx(np.round((0 + 1 + 4 + 5) / 4))


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        dataset_shards(tmp_path, "train")


def test_zoom_keeps_image_and_labels_aligned(austin_arrays, tmp_path):
    from tests.train.conftest import write_austin_dataset

    _, mask = austin_arrays
    # red channel encodes the label, so after a zoom the two must still agree pixel by pixel
    image = np.repeat((mask * 200 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    shards = dataset_shards(write_austin_dataset(tmp_path, image, mask, rows=(0, 480)), "train")
    ds = make_dataset(shards, crop=48, batch_size=16, seed=5, zoom=2.0, jitter=0)
    x, y = first_batches(ds, 1)[0]
    assert x.shape == (16, 48, 48, 3) and y.shape == (16, 48, 48)
    assert set(np.unique(y)) <= {0, 1}
    assert np.mean((x[..., 0] > 120) == (y == 1)) > 0.95
    plain = first_batches(make_dataset(shards, crop=48, batch_size=16, seed=5, jitter=0), 1)[0][0]
    assert not np.array_equal(x, plain)
    again = first_batches(make_dataset(shards, crop=48, batch_size=16, seed=5, zoom=2.0, jitter=0), 1)[0][0]
    np.testing.assert_array_equal(x, again)


def test_zoom_below_one_is_refused(austin_dataset):
    with pytest.raises(InputError, match="zoom"):
        make_dataset(dataset_shards(austin_dataset, "train"), 64, 4, zoom=0.5)


def test_grayscale_and_any_hue(austin_dataset):
    shards = dataset_shards(austin_dataset, "train")
    x, _ = first_batches(make_dataset(shards, 64, 8, seed=2, jitter=0, grayscale=1.0), 1)[0]
    np.testing.assert_allclose(x[..., 0], x[..., 1], atol=1e-3)
    np.testing.assert_allclose(x[..., 1], x[..., 2], atol=1e-3)
    plain = first_batches(make_dataset(shards, 64, 8, seed=2, jitter=0), 1)[0][0]
    hued = first_batches(make_dataset(shards, 64, 8, seed=2, jitter=0, hue=0.5), 1)[0][0]
    assert not np.allclose(plain, hued, atol=1.0)
    # a hue rotation keeps each pixel's max - min channel spread (HSV chroma)
    np.testing.assert_allclose(np.ptp(hued, axis=-1), np.ptp(plain, axis=-1), atol=2.0)
    with pytest.raises(InputError, match="hue"):
        make_dataset(shards, 64, 4, hue=0.7)


def test_scene_norm_maps_each_dataset_to_the_reference(austin_dataset, austin_arrays):
    from geolabel.data.standardize import REFERENCE_MEAN, REFERENCE_STD, band_stats, chips_band_stats

    shards = dataset_shards(austin_dataset, "val")
    stats = chips_band_stats(shards)
    image, _ = austin_arrays
    # chips sampled 1 px in 4 agree with the statistics of the image they were cut from
    np.testing.assert_allclose(stats.mean, band_stats(image[240:432, :960]).mean, rtol=0.03)
    x = np.concatenate([b[0] for b in first_batches(make_dataset(shards, 96, 10, training=False, band_stats=[stats]), 2)])
    np.testing.assert_allclose(x.reshape(-1, 3).mean(0), REFERENCE_MEAN, atol=4)
    np.testing.assert_allclose(x.reshape(-1, 3).std(0), REFERENCE_STD, rtol=0.1)
    with pytest.raises(InputError, match="band_stats"):
        make_dataset(shards, 96, 10, training=False, band_stats=[stats, stats])
