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

# Layer-name prefixes of each family's encoder (what a fine-tuning freeze schedule holds still).
ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "fcn": ("conv1", "conv2", "conv3"),
    "mlp": ("s1", "s2", "s3", "s4"),
    "unet": ("enc", "mid"),
    "ternaus": ("vgg_",),
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
    """The factor the input H and W must be a multiple of: the model's own `stride` when it
    declares one (the alignment networks), else the product of its downsampling strides."""
    declared = getattr(model, "stride", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    stride = 1
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _STRIDED) and not isinstance(layer, keras.layers.Conv2DTranspose):
            s = layer.strides if isinstance(layer.strides, (tuple, list)) else (layer.strides,)
            stride *= int(max(s))
    return math.lcm(stride, 1)


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model`'s encoder, by its family's name prefixes (empty for unknown families)."""
    prefixes = next((p for family, p in ENCODER_PREFIXES.items() if model.name.startswith(family)), ())
    return [layer for layer in model.layers if prefixes and layer.name.startswith(prefixes)]
