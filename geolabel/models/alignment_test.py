"""Tests of the differentiable warp, field composition and the multiscale alignment chain."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from geolabel.models.alignment import (
    MultiscaleAligner,
    compose,
    displacement_loss,
    downsample_field,
    upsample_field,
    warp,
)

RNG = np.random.default_rng(0)
IMAGES = RNG.random((2, 24, 20, 3)).astype("float32")


def np_(x):
    return ops.convert_to_numpy(x)


def test_identity_field_is_identity():
    out = np_(warp(IMAGES, np.zeros((2, 24, 20, 2), "float32")))
    assert np.array_equal(out, IMAGES)


@pytest.mark.parametrize("dx,dy", [(2, -1), (-3, 4), (0, 5)])
def test_constant_integer_field_shifts_exactly(dx, dy):
    field = np.zeros((2, 24, 20, 2), "float32")
    field[..., 0], field[..., 1] = dx, dy
    out = np_(warp(IMAGES, field))
    # aligned(p) = map(p + f): row r, col c takes IMAGES[r + dy, c + dx] wherever that exists
    rows = slice(max(0, -dy), 24 - max(0, dy))
    cols = slice(max(0, -dx), 20 - max(0, dx))
    src_rows = slice(rows.start + dy, rows.stop + dy)
    src_cols = slice(cols.start + dx, cols.stop + dx)
    assert np.array_equal(out[:, rows, cols], IMAGES[:, src_rows, src_cols])


def test_half_pixel_field_interpolates_linearly():
    ramp = np.tile(np.arange(20, dtype="float32"), (1, 24, 1))[..., None]
    field = np.zeros((1, 24, 20, 2), "float32")
    field[..., 0] = 0.5
    out = np_(warp(ramp, field))[0, :, :-1, 0]
    assert np.allclose(out, ramp[0, :, :-1, 0] + 0.5)


def test_warp_is_differentiable_in_the_field():
    ramp = np.tile(np.arange(20, dtype="float32"), (1, 24, 1))[..., None]
    field = tf.Variable(np.full((1, 24, 20, 2), 0.3, "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(warp(ramp, field))
    grad = tape.gradient(loss, field).numpy()
    # d(sum)/d(dx) = slope of the ramp (1) inside the image; no dependence on dy
    assert np.allclose(grad[0, :, :-2, 0], 1.0)
    assert np.allclose(grad[..., 1], 0.0)


def test_composition_of_constant_fields_adds():
    a = np.zeros((1, 16, 16, 2), "float32")
    a[..., 0] = 1.0
    b = np.zeros((1, 16, 16, 2), "float32")
    b[..., 1] = 2.0
    assert np.allclose(np_(compose(a, b)), a + b)
    # warping twice = warping once with the composed field (inside the image)
    twice = np_(warp(warp(IMAGES[:1, :16, :16], a), b))
    once = np_(warp(IMAGES[:1, :16, :16], compose(a, b)))
    assert np.allclose(twice[:, :12, :12], once[:, :12, :12], atol=1e-5)


def test_field_resampling_keeps_units():
    field = np.full((1, 8, 8, 2), 1.5, "float32")
    assert np.allclose(np_(upsample_field(field, 4)), 6.0)
    assert np.allclose(np_(downsample_field(np.full((1, 8, 8, 2), 6.0, "float32"), 4)), 1.5)


def test_displacement_loss():
    t = np.zeros((1, 4, 4, 2), "float32")
    p = np.zeros((1, 4, 4, 2), "float32")
    assert float(displacement_loss(t, p)) == 0.0
    p[..., 0], p[..., 1] = 3.0, 4.0
    assert float(displacement_loss(t, p)) == pytest.approx(25.0)
    w = np.zeros((1, 4, 4), "float32")
    w[0, 0, 0] = 1.0
    p[0, 0, 0] = 0.0
    assert float(displacement_loss(t, p, w)) == pytest.approx(0.0, abs=1e-4)


def test_chain_shapes_and_starts_at_zero():
    model = MultiscaleAligner(filters=(4, 4, 8))
    assert model.stride == 32
    x = [RNG.random((2, 64, 64, 3)).astype("float32") * 255, RNG.random((2, 64, 64, 3)).astype("float32")]
    out = model(x)
    assert tuple(out["displacement"].shape) == (2, 64, 64, 2)
    for k, s in enumerate((8, 4, 2, 1)):
        assert tuple(out[f"level_{k}"].shape) == (2, 64 // s, 64 // s, 2)
    assert np.allclose(np_(out["displacement"]), 0.0)  # zero-initialised heads


def test_chain_trains():
    model = MultiscaleAligner(scales=(2, 1), filters=(4, 4, 4))
    x = [RNG.random((2, 32, 32, 3)).astype("float32") * 255, RNG.random((2, 32, 32, 3)).astype("float32")]
    target = np.ones((2, 32, 32, 2), "float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    history = model.fit(x, target, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]


def test_chain_save_load_round_trip(tmp_path):
    model = MultiscaleAligner(scales=(4, 2, 1), filters=(4, 4, 8))
    x = [RNG.random((1, 32, 32, 3)).astype("float32") * 255, RNG.random((1, 32, 32, 3)).astype("float32")]
    model(x)
    model.blocks[0].head.kernel.assign(RNG.normal(size=model.blocks[0].head.kernel.shape).astype("float32"))
    model.save(tmp_path / "a.keras")
    loaded = keras.models.load_model(tmp_path / "a.keras")
    assert loaded.get_config()["scales"] == [4, 2, 1]
    assert np.allclose(np_(loaded(x)["displacement"]), np_(model(x)["displacement"]), atol=1e-5)


def test_bad_scales_rejected():
    with pytest.raises(ValueError):
        MultiscaleAligner(scales=(8, 3, 1))


def test_focus_weights_pixels_near_the_map():
    model = MultiscaleAligner(scales=(1,), filters=(4, 4, 8), focus=9.0, focus_radius=1)
    amap = np.zeros((1, 8, 8, 3), "float32")
    amap[0, 0, 0, 0] = 1.0
    y = np.zeros((1, 8, 8, 2), "float32")
    pred = {"level_0": np.zeros((1, 8, 8, 2), "float32")}
    pred["level_0"][0, 7, 7] = 1.0  # error far from the map: weight 1/10 of a near pixel
    far = float(model.compute_loss(x=(None, amap), y=y, y_pred=pred))
    pred["level_0"][0, 7, 7], pred["level_0"][0, 0, 0] = 0.0, 1.0
    near = float(model.compute_loss(x=(None, amap), y=y, y_pred=pred))
    assert near == pytest.approx(10 * far, rel=1e-4)


def test_every_step_loss_is_in_input_pixels():
    """A 4 px error everywhere costs 16 px^2 at every step: in each step's own pixels the
    1/4 step counted 16x less than the full-resolution one and barely trained."""
    model = MultiscaleAligner(scales=(4, 2, 1), filters=(4, 4, 8))
    y = np.full((1, 16, 16, 2), 4.0 / np.sqrt(2), "float32")
    pred = {f"level_{k}": np.zeros((1, 16 // s, 16 // s, 2), "float32") for k, s in enumerate((4, 2, 1))}
    assert float(model.compute_loss(x=None, y=y, y_pred=pred)) == pytest.approx(3 * 16.0, rel=1e-4)
