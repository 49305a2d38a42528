"""Tests of the align-and-update multi-task U-Net, its losses and the stepped level weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from geolabel.models.align_update import (
    LEVEL_WEIGHTS_END,
    LEVEL_WEIGHTS_START,
    AlignUpdateNet,
    SteppedLevelWeights,
    segmentation_loss,
    weighted_displacement_loss,
)

RNG = np.random.default_rng(1)


def _inputs(n=2, size=32):
    return [RNG.random((n, size, size, 3)).astype("float32") * 255, (RNG.random((n, size, size, 3)) > 0.8).astype("float32")]


def test_shapes_and_bounds():
    model = AlignUpdateNet(image_base=4, map_base=4, depth=4, max_displacement=3.0)
    assert model.stride == 8
    out = model(_inputs())
    assert tuple(out["displacement"].shape) == (2, 32, 32, 2)
    assert tuple(out["segmentation"].shape) == (2, 32, 32, 4)
    assert tuple(out["displacement_1"].shape) == (2, 16, 16, 2)
    assert tuple(out["segmentation_2"].shape) == (2, 8, 8, 4)
    d = ops.convert_to_numpy(out["displacement"])
    s = ops.convert_to_numpy(out["segmentation"])
    assert np.abs(d).max() <= 3.0 and s.min() >= 0 and s.max() <= 1


def test_losses():
    seg = np.zeros((1, 4, 4, 4), "float32")
    seg[..., 0] = 1.0
    assert float(segmentation_loss(seg, seg)) == pytest.approx(0.0, abs=1e-4)
    worse = float(segmentation_loss(seg, np.full_like(seg, 0.5)))
    assert worse > 0.01
    true_map = np.zeros((1, 4, 4, 4), "float32")
    true_map[..., 0] = 1.0
    true_map[0, 0, 0] = [0, 1, 1, 1]  # one vertex pixel
    t = np.zeros((1, 4, 4, 2), "float32")
    p = np.full((1, 4, 4, 2), 1.0, "float32")
    # background weighs 0: only the vertex pixel counts, its error is 1 + 1
    assert float(weighted_displacement_loss(t, p, true_map)) == pytest.approx(2.0, rel=1e-4)
    p[0, 0, 0] = 0.0
    assert float(weighted_displacement_loss(t, p, true_map)) == pytest.approx(0.0, abs=1e-4)


def test_stepped_weights_schedule():
    cb = SteppedLevelWeights(total_epochs=8, steps=4)
    assert cb.weights_at(0) == pytest.approx(list(LEVEL_WEIGHTS_START))
    assert cb.weights_at(7) == pytest.approx(list(LEVEL_WEIGHTS_END))
    seq = [cb.weights_at(e)[0] for e in range(8)]
    assert seq == sorted(seq) and len(set(seq)) == 4


def test_fit_moves_weights_and_lowers_loss(tmp_path):
    keras.utils.set_random_seed(0)
    model = AlignUpdateNet(image_base=4, map_base=4, depth=4)
    x = _inputs()
    seg = np.zeros((2, 32, 32, 4), "float32")
    seg[..., 0] = 1.0
    seg[:, 8:20, 8:20] = [0, 1, 0, 0]
    y = {"displacement": np.full((2, 32, 32, 2), 1.0, "float32"), "segmentation": seg}
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    # The stepped schedule changes the loss's level weights between epochs: compare the
    # loss under the final weights before and after training.
    model.level_weights.assign(LEVEL_WEIGHTS_END)
    before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    model.fit(x, y, epochs=6, verbose=0, callbacks=[SteppedLevelWeights(6, 2)])
    after = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert after < before
    assert np.allclose(ops.convert_to_numpy(model.level_weights), LEVEL_WEIGHTS_END)
    model.save(tmp_path / "au.keras")
    loaded = keras.models.load_model(tmp_path / "au.keras")
    a, b = loaded(x), model(x)
    assert np.allclose(ops.convert_to_numpy(a["segmentation"]), ops.convert_to_numpy(b["segmentation"]), atol=1e-5)


def test_depth_too_small():
    with pytest.raises(ValueError):
        AlignUpdateNet(depth=2)


def test_displacement_loss_is_in_units_of_max_displacement():
    """The same pixel error costs 4x less with a 2x larger bound: in pixels^2 the field term
    outweighed the segmentation term ~40:1 and the segmentation outputs learned nothing."""
    seg = np.zeros((1, 32, 32, 4), "float32")
    seg[..., 0] = 1.0
    seg[:, 8:20, 8:20] = [0, 1, 1, 1]
    y = {"displacement": np.full((1, 32, 32, 2), 2.0, "float32"), "segmentation": seg}
    pred = {}
    for level in range(3):
        suffix, size = (f"_{level}" if level else ""), 32 // 2**level
        pred["displacement" + suffix] = np.zeros((1, size, size, 2), "float32")
        pred["segmentation" + suffix] = np.zeros((1, size, size, 4), "float32")
    losses = []
    for bound in (4.0, 8.0):
        model = AlignUpdateNet(image_base=4, map_base=4, depth=4, seg_weight=0.0, max_displacement=bound)
        losses.append(float(model.compute_loss(x=None, y=y, y_pred=pred)))
    assert losses[0] == pytest.approx(4 * losses[1], rel=1e-4)
