"""Tests of the learned-PDE recurrent refinement."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from geolabel.models.rnn_refine import ClassMLP, RNNRefine, refined_model

RNG = np.random.default_rng(2)


def _probs(n=2, size=16, k=3):
    p = RNG.random((n, size, size, k)).astype("float32") + 0.05
    return p / p.sum(-1, keepdims=True)


def test_starts_as_identity_and_keeps_shapes():
    model = RNNRefine(3, map_kernels=4, image_kernels=4, hidden=4)
    image = RNG.random((2, 16, 16, 3)).astype("float32") * 255
    p = _probs()
    out = ops.convert_to_numpy(model([image, p]))
    assert out.shape == p.shape
    assert np.allclose(out, p, atol=1e-5)
    assert np.allclose(out.sum(-1), 1.0, atol=1e-5)


def test_paper_sizes_and_shared_weights():
    model = RNNRefine(2)
    model([np.zeros((1, 8, 8, 3), "float32"), _probs(1, 8, 2)])
    assert model.steps == 5
    assert model.m_conv.kernel.shape == (5, 5, 2, 32)
    assert model.n_conv.kernel.shape == (5, 5, 3, 32)
    assert model.mlp.w2.shape == (2, 32)
    # unrolling shares weights: the count does not depend on T
    short = RNNRefine(2, steps=1)
    short([np.zeros((1, 8, 8, 3), "float32"), _probs(1, 8, 2)])
    assert model.count_params() == short.count_params()


def test_class_mlp_is_class_specific():
    layer = ClassMLP(2, hidden=3)
    x = RNG.random((1, 2, 2, 5)).astype("float32")
    layer(x)
    w2 = np.zeros((2, 3), "float32")
    w2[1] = 1.0  # only class 1 has an output weight
    layer.w2.assign(w2)
    out = ops.convert_to_numpy(layer(x))
    assert np.allclose(out[..., 0], 0.0) and (out[..., 1] >= 0).all()


def test_learns_to_clean_noise_and_round_trips(tmp_path):
    labels = np.zeros((4, 16, 16), "int32")
    labels[:, 4:12, 4:12] = 1
    image = np.repeat((labels[..., None] * 200 + 20).astype("float32"), 3, -1)
    noisy = np.where(RNG.random(labels.shape) < 0.3, 1 - labels, labels)
    p = np.stack([1 - noisy, noisy], -1).astype("float32") * 0.6 + 0.2
    model = RNNRefine(2, map_kernels=8, image_kernels=8, hidden=8, steps=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    hist = model.fit([image, p], labels, epochs=15, verbose=0).history["loss"]
    assert hist[-1] < hist[0] * 0.8
    model.save(tmp_path / "r.keras")
    loaded = keras.models.load_model(tmp_path / "r.keras")
    assert np.allclose(ops.convert_to_numpy(loaded([image, p])), ops.convert_to_numpy(model([image, p])), atol=1e-5)


def test_refined_model_follows_segmentation_contract():
    inp = keras.Input((None, None, 3))
    base = keras.Model(inp, keras.layers.Conv2D(2, 1, activation="softmax")(inp / 255.0), name="base")
    full = refined_model(base, RNNRefine(2, map_kernels=4, image_kernels=4, hidden=4))
    out = ops.convert_to_numpy(full(RNG.random((1, 16, 24, 3)).astype("float32") * 255))
    assert out.shape == (1, 16, 24, 2) and np.allclose(out.sum(-1), 1, atol=1e-5)
    assert not base.trainable
