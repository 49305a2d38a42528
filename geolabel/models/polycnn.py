"""PolyCNN (Girard & Tarabalka, IGARSS 2018): regress a quadrilateral outline from an object crop.

A conv feature extractor (a small one here: no pretrained Inception weights can be
downloaded; a local weights file can be loaded) -> encoder (1x1 conv 512, 1x1 conv 128,
flatten, dense 128 = the shape code) -> decoder (dense 256, dense 8 sigmoid = 4 vertices
(x, y) in [0, 1] of the crop, x to the right, y down). The three parts are nested models
named "feature_extractor", "encoder" and "decoder" so that training can freeze each one.

Only `keras` and `keras.ops` are used.
"""

from __future__ import annotations

import os
from typing import Any

import keras
from keras import ops

from geolabel.models.layers import Normalize

PATCH = 67  # input size of the paper
NUM_VERTICES = 4


def _conv_bn(x, filters: int, strides: int = 1, padding: str = "same", name: str = ""):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def build_feature_extractor(
    patch: int = PATCH, bands: int = 3, width: int = 32, weights: str | os.PathLike | None = None
) -> keras.Model:
    """Small conv feature extractor: (B, patch, patch, bands) pixels in [0, 255] -> (B, h, w, 4*width).

    Three stages (stride-2 entry conv, then max pooling twice): a 67x67 patch gives 8x8 features.
    `weights`, a local `.weights.h5` file saved from an extractor of the same shape, is loaded.
    """
    inputs = keras.Input((patch, patch, bands), name="pixels")
    x = Normalize(name="normalize")(inputs)
    x = _conv_bn(x, width, strides=2, padding="valid", name="stem")
    x = _conv_bn(x, width, name="block1a")
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = _conv_bn(x, 2 * width, name="block2a")
    x = _conv_bn(x, 2 * width, name="block2b")
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = _conv_bn(x, 4 * width, name="block3a")
    x = _conv_bn(x, 4 * width, name="block3b")
    model = keras.Model(inputs, x, name="feature_extractor")
    if weights is not None:
        load_feature_weights(model, weights)
    return model


def load_feature_weights(extractor: keras.Model, path: str | os.PathLike) -> None:
    """Load a local weights file (`.weights.h5` or a whole `.keras` model's extractor) into `extractor`."""
    from geolabel.errors import InputError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "feature-extractor weights file not found")
    try:
        if path.endswith(".keras"):
            from geolabel.models.loading import load_model

            source = load_model(path)
            if source.name != "feature_extractor":
                source = source.get_layer("feature_extractor")
            extractor.set_weights(source.get_weights())
        else:
            extractor.load_weights(path)
    except (ValueError, OSError, KeyError) as err:
        raise InputError(path, f"cannot load feature-extractor weights ({err})") from err


def build_encoder(feature_shape: tuple[int, int, int], code: int = 128, hidden: int = 512) -> keras.Model:
    """Encoder: 1x1 conv `hidden`, 1x1 conv 128, flatten, dense `code` (the shape code)."""
    inputs = keras.Input(feature_shape, name="features")
    x = keras.layers.Conv2D(hidden, 1, activation="relu", name="conv512")(inputs)
    x = keras.layers.Conv2D(128, 1, activation="relu", name="conv128")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(code, activation="relu", name="code")(x)
    return keras.Model(inputs, x, name="encoder")


def build_decoder(code: int = 128, hidden: int = 256) -> keras.Model:
    """Decoder: dense `hidden`, dense 8 sigmoid = 4 vertices (x0, y0, ..., x3, y3) in [0, 1]."""
    inputs = keras.Input((code,), name="code")
    x = keras.layers.Dense(hidden, activation="relu", name="dense256")(inputs)
    x = keras.layers.Dense(2 * NUM_VERTICES, activation="sigmoid", name="vertices")(x)
    return keras.Model(inputs, x, name="decoder")


def build_polycnn(
    patch: int = PATCH,
    bands: int = 3,
    width: int = 32,
    encoder_hidden: int = 512,
    code: int = 128,
    decoder_hidden: int = 256,
    feature_weights: str | os.PathLike | None = None,
) -> keras.Model:
    """The whole PolyCNN: (B, patch, patch, bands) pixels in [0, 255] -> (B, 8) vertices in [0, 1].

    Args:
        patch: crop size (67 in the paper; the artificial set may use 64).
        bands: image bands.
        width: channels of the first extractor stage (the last has 4x as many).
        encoder_hidden: channels of the encoder's first 1x1 conv (512 in the paper).
        code: length of the shape code (128).
        decoder_hidden: units of the decoder's hidden dense layer (256).
        feature_weights: optional local weights file for the feature extractor.

    Example:
        >>> model = build_polycnn(width=8)
        >>> model(np.zeros((2, 67, 67, 3), "float32")).shape
        (2, 8)
    """
    extractor = build_feature_extractor(patch, bands, width, feature_weights)
    encoder = build_encoder(tuple(extractor.output.shape[1:]), code, encoder_hidden)
    decoder = build_decoder(code, decoder_hidden)
    inputs = keras.Input((patch, patch, bands), name="pixels")
    outputs = decoder(encoder(extractor(inputs)))
    return keras.Model(inputs, outputs, name="polycnn")


def _vertex_distances(y_true, y_pred):
    """(B, 4) mean vertex distance of `y_pred` to each of the 4 cyclic shifts of `y_true`."""
    true = ops.reshape(ops.cast(y_true, "float32"), (-1, NUM_VERTICES, 2))
    pred = ops.reshape(ops.cast(y_pred, "float32"), (-1, NUM_VERTICES, 2))
    per_shift = []
    for shift in range(NUM_VERTICES):
        rolled = ops.roll(true, shift, axis=1)
        dist = ops.sqrt(ops.sum(ops.square(pred - rolled), axis=-1) + 1e-12)
        per_shift.append(ops.mean(dist, axis=-1))
    return ops.stack(per_shift, axis=-1)


def polygon_distance(y_true, y_pred):
    """Per-sample loss: mean per-vertex Euclidean distance, minimised over the 4 cyclic shifts."""
    return ops.min(_vertex_distances(y_true, y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="geolabel")
class CyclicVertexLoss(keras.losses.Loss):
    """PolyCNN's loss on (B, 8) vertex vectors: the shift-invariant mean vertex distance."""

    def __init__(self, name: str = "cyclic_vertex_loss", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return polygon_distance(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return super().get_config()


@keras.saving.register_keras_serializable(package="geolabel")
class CyclicVertexDistance(keras.metrics.Mean):
    """Metric: mean of `polygon_distance` (same units as the vertices: fractions of the crop)."""

    def __init__(self, name: str = "vertex_distance", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(polygon_distance(y_true, y_pred), sample_weight=sample_weight)

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
