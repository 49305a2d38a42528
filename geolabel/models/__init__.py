"""Segmentation models: a registry of builders by name.

Every model takes float32 pixels in [0, 255] shaped (B, H, W, C), normalises inside,
and returns per-pixel softmax probabilities (B, H, W, num_classes) with the input's
H and W; H and W must be multiples of `stride_of(model)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras

from geolabel.models import layers as _layers  # noqa: F401  (registers custom objects)
from geolabel.models.fcn import build_fcn
from geolabel.models.layers import ENCODER, all_layers
from geolabel.models.loading import load_model
from geolabel.models.mlp import build_mlp
from geolabel.models.ternaus import build_ternaus
from geolabel.models.unet import build_unet

MODELS: dict[str, Callable[..., keras.Model]] = {
    "fcn": build_fcn,
    "mlp": build_mlp,
    "unet": build_unet,
    "ternaus": build_ternaus,
}


def build_model(name: str, num_classes: int, **config: Any) -> keras.Model:
    """Build the registered model `name` for `num_classes` classes with builder options `config`."""
    from geolabel.errors import InputError

    if name not in MODELS:
        raise InputError("--model", f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](num_classes, **config)
    except TypeError as err:
        raise InputError("model config", f"{name}: {err}") from err


_STRIDED = (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def stride_of(model: keras.Model) -> int:
    """The factor the input H and W must be a multiple of: the stride the model declares (the
    alignment networks' attribute; the segmentation builders record it in the output layer),
    else, for models saved before strides were recorded, the product of their layers' strides."""
    declared = getattr(model, "stride", None)
    if declared is None and getattr(model, "layers", None):
        declared = getattr(model.layers[-1], "stride", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    stride = 1
    for layer in all_layers(model):
        if isinstance(layer, _STRIDED) and not isinstance(layer, keras.layers.Conv2DTranspose):
            s = layer.strides if isinstance(layer.strides, (tuple, list)) else (layer.strides,)
            stride *= int(max(s))
    return math.lcm(stride, 1)


def encoder_of(model: keras.Model) -> keras.Model | None:
    """`model`'s encoder: the nested sub-model every registered family builds under the name
    `ENCODER` (keras-hub's backbone); None for models without one (runs saved before it)."""
    try:
        layer = model.get_layer(ENCODER)
    except ValueError:
        return None
    return layer if isinstance(layer, keras.Model) else None
