"""Tests of the shared layers: the fast forms equal the plain Keras layers they replace."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.models.layers import ClassSoftmax, RowSumConv2D
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
