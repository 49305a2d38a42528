"""Tests of the Maggiori et al. 2017 FCN."""

from __future__ import annotations

import numpy as np
import pytest

from geolabel.models import build_model, stride_of
from geolabel.models.layers import all_layers
from geolabel.models.testing import check_output_shapes, check_round_trip, check_trains


def test_output_shapes_for_several_sizes():
    model = build_model("fcn", 2, widths=(8, 8, 8))
    assert stride_of(model) == 4
    check_output_shapes(model, (10, 13, 20))


def test_paper_widths_and_parameter_count():
    model = build_model("fcn", 2)
    # conv1 64@12x12x3, conv2 112@4x4x64, conv3 80@3x3x112, conv4 2@9x9x80, deconv 8x8x2x2 (no bias)
    expected = (12 * 12 * 3 + 1) * 64 + (4 * 4 * 64 + 1) * 112 + (9 * 112 + 1) * 80 + (81 * 80 + 1) * 2 + 64 * 4
    assert model.count_params() == expected


def test_output_is_aligned_with_input():
    """Translating the input by the stride translates the output by the same amount (away from borders)."""
    model = build_model("fcn", 2, widths=(8, 8, 8))
    x = np.random.default_rng(1).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    shifted = np.roll(x, 4, axis=1)
    y, ys = np.asarray(model(x)), np.asarray(model(shifted))
    np.testing.assert_allclose(ys[0, 52:76, 40:90], y[0, 48:72, 40:90], atol=1e-5)


def test_trains_on_real_chips():
    check_trains(build_model("fcn", 2, widths=(16, 16, 16)), size=80, lr=3e-3)


def test_save_load_and_config_round_trip(tmp_path):
    check_round_trip(build_model("fcn", 2, widths=(8, 8, 8), norm="batch", downsample=2), tmp_path, size=96)


def test_receptive_field_is_centred_on_its_output_pixel():
    """With symmetric (constant) kernels, the input-gradient centroid of output (r, c) is (r, c):
    the internal padding and the deconvolution crop align output pixels with input pixels."""
    import keras
    import tensorflow as tf

    model = build_model("fcn", 2, widths=(4, 4, 4))
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose):
            layer.set_weights([np.full_like(w, 0.01) for w in layer.get_weights()])
    logits = keras.Model(model.inputs[0], model.get_layer("crop").output)
    x = tf.Variable(np.full((1, 160, 160, 3), 128.0, "float32"))
    rows, cols = np.indices((160, 160))
    for r, c in [(80, 80), (81, 83), (78, 79)]:
        with tf.GradientTape() as tape:
            out = logits(x)[0, r, c, 0]
        g = np.abs(tape.gradient(out, x).numpy()[0].sum(-1))
        assert (g * rows).sum() / g.sum() == pytest.approx(r, abs=1e-3)
        assert (g * cols).sum() / g.sum() == pytest.approx(c, abs=1e-3)
