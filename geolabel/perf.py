"""Compute cost of models and this machine's convolution speed.

`flops_per_pixel(model)`: floating-point operations (2 x multiply-adds of the conv,
transposed-conv and dense layers; normalisations and activations are not counted) of
one forward pass, per input pixel. `measure_conv_peak()`: the GFLOP/s this machine
reaches on a large 3x3 convolution in TensorFlow, the reference for utilisation.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _layer_flops(layer, in_shape: tuple, out_shape: tuple) -> int:
    import keras

    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return 2 * kh * kw * int(in_shape[-1]) * layer.filters * int(np.prod(in_shape[1:3]))
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        kh, kw = layer.kernel_size
        cin = int(in_shape[-1])
        positions = int(np.prod(out_shape[1:3]))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return 2 * kh * kw * cin * layer.depth_multiplier * positions
        if isinstance(layer, keras.layers.SeparableConv2D):
            mid = cin * layer.depth_multiplier
            return 2 * positions * (kh * kw * mid + mid * layer.filters)
        return 2 * kh * kw * (cin // layer.groups) * layer.filters * positions
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(in_shape[-1]) * layer.units * int(np.prod(out_shape[1:-1]))
    return 0


def flops_per_pixel(model, size: int = 256, channels: int | None = None) -> float:
    """FLOPs of one forward pass of `model` per input pixel, measured on a `size` x `size` input.

    The layer shapes come from a real forward pass on zeros, so any model built from
    Keras conv/dense layers is counted (the size is rounded up to the model's stride).
    """
    from geolabel.models import stride_of

    stride = stride_of(model)
    size = int(np.ceil(max(size, stride) / stride) * stride)
    channels = channels or int(model.inputs[0].shape[-1])
    return _flops(model, (1, size, size, channels)) / (size * size)


def _flops(model, input_shape: tuple) -> int:
    """FLOPs of the conv / dense layers of functional `model` on an input of `input_shape`,
    nested sub-models (encoders) included, with each layer's shapes from a forward pass."""
    import keras

    counted = [layer for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D, keras.Model))]
    if not counted:
        return 0

    def ends(layer) -> tuple:  # a nested model's own `input` is its inner Input: its call's is the node's
        if isinstance(layer, keras.Model):
            called_on = layer._inbound_nodes[0].input_tensors[0]
            return called_on, called_on
        return layer.input, layer.output

    probe = keras.Model(model.inputs[0], [t for layer in counted for t in ends(layer)])
    shapes = [tuple(t.shape) for t in probe(np.zeros(input_shape, "float32"), training=False)]
    return sum(_flops(layer, shapes[2 * i]) if isinstance(layer, keras.Model) else
               _layer_flops(layer, shapes[2 * i], shapes[2 * i + 1]) for i, layer in enumerate(counted))


def measure_conv_peak(
    batch: int = 8, size: int = 96, filters: int = 128, repeats: int = 5, dtype: str = "float32"
) -> dict[str, Any]:
    """GFLOP/s of a large 3x3 `filters`->`filters` convolution in TensorFlow on this machine.

    Returns the best and median of `repeats` timed runs after one warm-up, and the FLOPs
    of one run, so callers can express their own throughput as a fraction of it.
    """
    import tensorflow as tf

    x = tf.random.normal((batch, size, size, filters), dtype=dtype)
    kernel = tf.random.normal((3, 3, filters, filters), dtype=dtype) * 0.05

    @tf.function
    def conv(x):
        return tf.reduce_sum(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"))

    flops = 2 * 3 * 3 * filters * filters * batch * size * size
    conv(x).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        conv(x).numpy()
        times.append(time.perf_counter() - start)
    best, median = min(times), float(np.median(times))
    return {
        "flops_per_run": flops,
        "best_gflops": flops / best / 1e9,
        "median_gflops": flops / median / 1e9,
        "shape": [batch, size, size, filters],
        "dtype": dtype,
        "repeats": repeats,
    }
