"""Checks shared by the model tests (`*_test.py` beside each model), on real bundled imagery."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from geolabel.models import stride_of

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "inria-austin"


def real_batch(size: int = 64, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`count` real image/mask crops of `size` px from the bundled Inria Austin sample (mask 0/1)."""
    import rasterio

    with rasterio.open(SAMPLE / "image.tif") as src:
        image = src.read().transpose(1, 2, 0)
    with rasterio.open(SAMPLE / "buildings-mask.tif") as src:
        mask = (src.read(1) > 127).astype("uint8")
    # windows chosen on a regular grid over the sample; all hold buildings and background
    corners = [(r, c) for r in range(100, image.shape[0] - size, 211) for c in range(60, image.shape[1] - size, 173)]
    picked = [(r, c) for r, c in corners if 0.1 < mask[r : r + size, c : c + size].mean() < 0.9][:count]
    x = np.stack([image[r : r + size, c : c + size] for r, c in picked]).astype("float32")
    y = np.stack([mask[r : r + size, c : c + size] for r, c in picked])
    return x, y


def check_output_shapes(model: keras.Model, multiples: tuple[int, ...] = (2, 3), num_classes: int = 2) -> None:
    """Output is (B, H, W, num_classes) probabilities for several input sizes, incl. non-square."""
    stride = stride_of(model)
    for a in multiples:
        for b in (a, a + 1):
            x = np.random.default_rng(a).uniform(0, 255, (2, a * stride, b * stride, 3)).astype("float32")
            y = np.asarray(model(x, training=False))
            assert y.shape == (2, a * stride, b * stride, num_classes)
            assert np.allclose(y.sum(-1), 1.0, atol=1e-4)


def check_trains(model: keras.Model, size: int = 64, steps: int = 8, lr: float = 3e-3) -> tuple[float, float]:
    """A few Adam steps on real chips lower the loss on them; returns (first, last) step losses.

    Losses are the training steps' own (batch statistics): after so few steps BatchNorm's moving
    averages are still mostly their initial values, so an inference-mode loss says little.
    """
    from geolabel.losses import CrossEntropyJaccard

    x, y = real_batch(size)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=CrossEntropyJaccard())
    losses = model.fit(x, y, batch_size=len(x), epochs=steps, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    return losses[0], losses[-1]


def check_round_trip(model: keras.Model, folder: Path, size: int = 64) -> None:
    """save/load (.keras) and from_config give a model with the same outputs / structure."""
    stride = stride_of(model)
    size = max(2 * stride, size // stride * stride)
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    path = folder / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    assert stride_of(loaded) == stride
    clone = model.__class__.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert tuple(clone(x).shape) == tuple(model(x).shape)
