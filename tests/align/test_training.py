"""Tests of the alignment training loops."""

from __future__ import annotations

import keras
import numpy as np

from geolabel.align.training import train_rnn_refine
from geolabel.models.rnn_refine import RNNRefine


def test_refinement_falls_back_to_identity_when_it_does_not_help():
    """Trained to contradict a base that the held-back chips confirm, the refinement must
    end as the identity instead of making the base worse (it lowered IoU in a benchmark)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((8, 16, 16, 3)).astype("float32") * 255

    def base_predict(x: np.ndarray) -> np.ndarray:
        return np.where((x[..., :1] > 127.5) == np.arange(2), 0.9, 0.1).astype("float32")

    base_classes = (images[..., 0] > 127.5).astype("int32")
    probs = base_predict(images)
    labels = np.concatenate([1 - base_classes[:6], base_classes[6:]])  # last quarter held back
    refine = RNNRefine(2, map_kernels=4, image_kernels=4, hidden=4, steps=2)
    train_rnn_refine(refine, base_predict, images, labels, epochs=3, batch=2, lr=1e-2)
    out = keras.ops.convert_to_numpy(refine([images, probs]))
    assert np.allclose(out, probs, atol=1e-5)
