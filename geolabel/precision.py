"""Compute precision: which floating-point type a machine runs convolutions fastest in.

bfloat16 on CPUs with bf16 units (AMX or AVX512-BF16: ~6x the float32 conv rate measured on
Sapphire Rapids), float16 on GPUs, float32 elsewhere. Weights stay float32 in every case, and
softmax, losses and blending run in float32 (the models' output layer is float32).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "bfloat16", "float16", "float32")
"""Spellings accepted by `TrainConfig.precision`, `geolabel predict --precision`."""

EXPORT_PRECISIONS = ("float32", "bfloat16", "float16")
"""What `geolabel export --precision` takes: "auto" would mean the exporting machine, not the server."""

_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "float32": "float32"}
_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


@functools.cache
def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bfloat16 matrix or vector units (Linux `/proc/cpuinfo` flags)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & _BF16_FLAGS)


def resolve_precision(precision: str = "auto", on_gpu: bool | None = None) -> str:
    """The concrete precision ("bfloat16", "float16" or "float32") that `precision` means here."""
    from geolabel.errors import InputError

    if precision not in PRECISIONS:
        raise InputError("--precision", f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if on_gpu is None:
        import tensorflow as tf

        on_gpu = bool(tf.config.list_logical_devices("GPU"))
    if on_gpu:
        return "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy of a concrete precision."""
    return _POLICIES[precision]


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[str]:
    """Build layers under `precision`'s Keras policy; the previous global policy comes back after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy(precision))
    try:
        yield precision
    finally:
        keras.config.set_dtype_policy(previous)


def with_precision(model: Any, precision: str) -> Any:
    """A copy of functional `model` computing in `precision` (same weights, float32 output layer);
    `model` itself for float32 or a model that cannot be cloned layer by layer."""
    import keras

    from geolabel.models.layers import ClassSoftmax

    if precision == "float32" or not hasattr(model, "layers"):
        return model
    policy = dtype_policy(precision)

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, (keras.layers.InputLayer, ClassSoftmax)):
            return layer
        config = {**layer.get_config(), "dtype": policy}
        copy = layer.__class__.from_config(config)
        if layer.weights:  # layers with weights take one input
            copy.build(layer.input.shape)
            copy.set_weights(layer.get_weights())
        return copy

    try:
        return keras.models.clone_model(model, clone_function=clone, recursive=True)
    except (ValueError, TypeError, NotImplementedError):  # subclassed or foreign models keep their precision
        return model
