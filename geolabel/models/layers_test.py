"""Tests of the shared layers: the fast forms equal the plain Keras layers they replace."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.models.layers import ClassSoftmax, GroupNorm, RowSumConv2D
from geolabel.models.testing import real_batch


@pytest.mark.parametrize("kernel", [(9, 9), (3, 5), (1, 4)])
def test_row_sum_conv_equals_conv2d_with_the_same_weights(kernel):
    x, _ = real_batch(40, 2)
    plain = keras.layers.Conv2D(3, kernel, padding="valid")
    fast = RowSumConv2D(3, kernel)
    expected = np.asarray(plain(x / 255.0))
    fast.build(x.shape)
    fast.set_weights(plain.get_weights())
    got = np.asarray(fast(x / 255.0))
    assert got.shape == expected.shape == (2, 41 - kernel[0], 41 - kernel[1], 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_row_sum_conv_round_trips_and_refuses_what_it_cannot_compute():
    layer = RowSumConv2D(2, 9, name="conv4")
    assert RowSumConv2D.from_config(layer.get_config()).kernel_size == (9, 9)
    for bad in ({"strides": 2}, {"padding": "same"}, {"dilation_rate": 2}):
        with pytest.raises(ValueError, match="RowSumConv2D supports"):
            RowSumConv2D(2, 9, **bad)


@pytest.mark.parametrize("classes", [2, 3])
def test_class_softmax_equals_softmax(classes):
    logits = np.random.default_rng(0).normal(0, 8, (2, 16, 16, classes)).astype("float32")
    expected = np.asarray(keras.ops.softmax(logits, axis=-1))
    got = np.asarray(ClassSoftmax()(logits))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


def _features(channels: int, offset: float = 0.0) -> np.ndarray:
    """Conv features of real imagery (not centred: a conv output feeds the norm in the models)."""
    x, _ = real_batch(48, 2)
    conv = keras.layers.Conv2D(channels, 3, kernel_initializer=keras.initializers.HeNormal(seed=1))
    return np.asarray(conv(x / 127.5 - 1.0)) + offset


def _pair(channels: int, groups: int) -> tuple[keras.layers.Layer, GroupNorm]:
    plain = keras.layers.GroupNormalization(groups=groups)
    fast = GroupNorm(groups=groups)
    for layer in (plain, fast):
        layer.build((None, None, None, channels))
    rng = np.random.default_rng(2)
    weights = [rng.normal(1, 0.3, channels).astype("float32"), rng.normal(0, 0.3, channels).astype("float32")]
    plain.set_weights(weights)
    fast.set_weights(weights)
    return plain, fast


@pytest.mark.parametrize("images", [2, 1])
@pytest.mark.parametrize("channels,groups,offset", [(16, 8, 0.0), (32, 8, 0.0), (12, 3, 0.0), (16, 8, 50.0)])
def test_group_norm_equals_keras_group_normalization(channels, groups, offset, images):
    features = _features(channels, offset)[:images]
    plain, fast = _pair(channels, groups)
    got = np.asarray(fast(features))
    np.testing.assert_allclose(got, _group_norm_float64(features, fast), atol=1e-4)
    if not offset:  # Keras' own layer is off by ~2e-4 on one image with channels 50 std from zero
        np.testing.assert_allclose(got, np.asarray(plain(features)), atol=1e-4)


def _group_norm_float64(features: np.ndarray, layer: GroupNorm) -> np.ndarray:
    """The exact group normalisation of (B, H, W, C) `features` with `layer`'s weights."""
    gamma, beta = (w.astype(np.float64) for w in layer.get_weights())
    x = features.astype(np.float64).reshape(len(features), -1, layer.groups, features.shape[-1] // layer.groups)
    mean, variance = x.mean(axis=(1, 3), keepdims=True), x.var(axis=(1, 3), keepdims=True)
    return ((x - mean) / np.sqrt(variance + layer.epsilon)).reshape(features.shape) * gamma + beta


@pytest.mark.parametrize("images", [2, 1])
def test_group_norm_gradients_equal_keras_group_normalization(images):
    import tensorflow as tf

    features = tf.constant(_features(16)[:images])
    plain, fast = _pair(16, 8)
    weights = tf.constant(np.random.default_rng(3).normal(size=features.shape).astype("float32"))
    grads = []
    for layer in (plain, fast):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(layer(features) * weights)
        grads.append(tape.gradient(loss, [features, *layer.trainable_variables]))
    for expected, got in zip(*grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-3, atol=1e-4)


def test_group_norm_round_trips_and_keeps_float32_statistics_under_bfloat16():
    layer = GroupNorm(groups=4, epsilon=1e-5, name="norm")
    restored = GroupNorm.from_config(layer.get_config())
    assert (restored.groups, restored.epsilon, restored.name) == (4, 1e-5, "norm")
    features = _features(16)
    _, fast = _pair(16, 8)
    half = GroupNorm(groups=8, dtype="mixed_bfloat16")
    half.build(features.shape)
    half.set_weights(fast.get_weights())
    got = np.asarray(keras.ops.cast(half(features), "float32"))
    np.testing.assert_allclose(got, np.asarray(fast(features)), atol=0.1)


def test_group_norm_traces_in_a_compiled_function():
    import tensorflow as tf

    features = _features(16)
    plain, fast = _pair(16, 8)
    compiled = tf.function(lambda x: fast(x))
    for images in (1, 2):
        np.testing.assert_allclose(np.asarray(compiled(features[:images])), np.asarray(plain(features[:images])),
                                   atol=1e-4)
