"""Reusable Keras 3 layers and initialisers of geolabel's segmentation models.

Only `keras` and `keras.ops` are used, so the models run on any Keras backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="geolabel")
class Normalize(keras.layers.Layer):
    """Map raw pixel values to network inputs: `(x - offset) * scale`, per channel or global.

    Args:
        offset: value (or one per band) subtracted from the pixels.
        scale: factor (or one per band) applied after the offset.
    """

    def __init__(self, offset: float | list[float] = 127.5, scale: float | list[float] = 1 / 127.5, **kwargs: Any):
        super().__init__(**kwargs)
        self.offset = offset
        self.scale = scale

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        offset = ops.convert_to_tensor(np.asarray(self.offset, dtype="float32"), dtype=self.compute_dtype)
        scale = ops.convert_to_tensor(np.asarray(self.scale, dtype="float32"), dtype=self.compute_dtype)
        return (x - offset) * scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "offset": self.offset, "scale": self.scale}


@keras.saving.register_keras_serializable(package="geolabel")
class ReflectPad2D(keras.layers.Layer):
    """Pad the two spatial axes of (B, H, W, C) by `pad` pixels on every side, mirroring the edge.

    Args:
        pad: pixels added on each side (needs H, W > pad).
        mode: "reflect" (edge pixel not repeated) or "symmetric".
    """

    def __init__(self, pad: int, mode: str = "reflect", **kwargs: Any):
        super().__init__(**kwargs)
        self.pad = int(pad)
        self.mode = mode

    def call(self, inputs):
        p = self.pad
        return ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode=self.mode)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        grow = lambda n: None if n is None else n + 2 * self.pad  # noqa: E731
        return (b, grow(h), grow(w), c)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad, "mode": self.mode}


@keras.saving.register_keras_serializable(package="geolabel")
class RowSumConv2D(keras.layers.Conv2D):
    """A valid, stride-1 `Conv2D` run as one 1 x kw convolution into kh x filters channels
    followed by kh shifted row sums.

    Same weights and result as `Conv2D` (up to float rounding); for a tall kernel with few
    output filters (the FCN's 9x9 classifier: 80 -> 2) oneDNN's direct convolution runs
    far below the machine's conv rate, and this form is about 3.5x faster on CPU.
    """

    def __init__(self, filters: int, kernel_size: int | tuple[int, int], **kwargs: Any):
        for key, plain in (("strides", 1), ("dilation_rate", 1), ("padding", "valid"), ("groups", 1),
                           ("data_format", "channels_last")):
            value = kwargs.get(key, plain)
            if value not in (plain, (plain, plain), [plain, plain], None):
                raise ValueError(f"RowSumConv2D supports {key}={plain!r} only, got {value!r}")
        super().__init__(filters, kernel_size, **kwargs)

    def convolution_op(self, inputs, kernel):
        kh, kw, cin, filters = kernel.shape
        rows = ops.reshape(ops.transpose(kernel, (1, 2, 0, 3)), (1, kw, cin, kh * filters))
        partial = ops.conv(inputs, rows, strides=1, padding="valid")
        height = ops.shape(partial)[1] - (kh - 1)
        # output row r = sum over kernel rows i of (row i's 1 x kw conv) at input row r + i
        out = partial[:, :height, :, :filters]
        for i in range(1, kh):
            out = out + partial[:, i : i + height, :, i * filters : (i + 1) * filters]
        return out


@keras.saving.register_keras_serializable(package="geolabel")
class BilinearUpsampleInit(keras.initializers.Initializer):
    """Initialise a (k, k, out, in) transposed-conv kernel as a per-channel bilinear upsampler.

    Caffe's "bilinear" filler: channel i maps to channel i, other pairs start at zero.
    """

    def __call__(self, shape, dtype=None):
        k, _, n_out, n_in = shape
        factor = (k + 1) // 2
        center = factor - 1 if k % 2 == 1 else factor - 0.5
        og = np.arange(k, dtype="float64")
        filt1d = 1 - np.abs(og - center) / factor
        filt = np.outer(filt1d, filt1d)
        kernel = np.zeros((k, k, n_out, n_in), dtype="float32")
        for i in range(min(n_out, n_in)):
            kernel[:, :, i, i] = filt
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self) -> dict[str, Any]:
        return {}


@keras.saving.register_keras_serializable(package="geolabel")
class ResizeBilinear(keras.layers.Layer):
    """Resize (B, h, w, C) to the spatial size of a reference tensor, bilinearly.

    Call as `layer([x, reference])`; used to bring every stage of a network to one grid.
    """

    def call(self, inputs):
        x, reference = inputs
        size = ops.shape(reference)[1:3]
        return ops.image.resize(x, size, interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


@keras.saving.register_keras_serializable(package="geolabel")
class GroupNorm(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization` over channels-last images, from per-channel moments.

    Same weights, config and outputs. Keras reduces a 5-D (B, H, W, groups, C/groups) view,
    which on CPU costs ~3x more than reducing each channel over the pixels and averaging the
    channels of a group afterwards; at full resolution that difference was half of a
    U-Net's inference time.
    """

    def call(self, inputs):
        if self.axis not in (-1, len(inputs.shape) - 1):
            return super().call(inputs)
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        pixels = ops.reshape(inputs, (shape[0], -1, channels))
        # statistics in float32 even under mixed precision (as Keras does)
        stats_input = ops.cast(pixels, "float32")
        channel_mean = ops.mean(stats_input, axis=1, keepdims=True)
        # centred per channel first: E[x^2] - E[x]^2 loses the variance of offset channels
        channel_variance = ops.mean(ops.square(stats_input - channel_mean), axis=1)
        mean, variance = group_moments(channel_mean[:, 0], channel_variance, self.groups)
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.cast(self.gamma, "float32")
        shift = -mean * scale
        if self.center:
            shift = shift + ops.cast(self.beta, "float32")
        scale = ops.cast(scale, self.compute_dtype)[:, None, :]
        shift = ops.cast(shift, self.compute_dtype)[:, None, :]
        return ops.reshape(ops.cast(pixels, self.compute_dtype) * scale + shift, shape)


def group_moments(channel_mean, channel_variance, groups: int):
    """Per-channel moments (..., C) -> each channel's group mean and variance (..., C)."""
    channels = channel_mean.shape[-1]
    per_group = channels // groups

    def group_average(values):
        grouped = ops.mean(ops.reshape(values, (-1, groups, per_group)), axis=-1)
        return ops.reshape(ops.repeat(grouped, per_group, axis=-1), ops.shape(values))

    mean = group_average(channel_mean)
    return mean, group_average(channel_variance + ops.square(channel_mean - mean))


def norm_layer(kind: str, name: str, groups: int = 8) -> keras.layers.Layer | None:
    """A normalisation layer by name: "batch", "group", "layer" or "none" (returns None)."""
    if kind == "batch":
        # momentum 0.9 (Keras default 0.99): the moving statistics must settle within short trainings
        return keras.layers.BatchNormalization(momentum=0.9, name=name)
    if kind == "group":
        return GroupNorm(groups=groups, name=name)
    if kind == "layer":
        return keras.layers.LayerNormalization(name=name)
    if kind == "none":
        return None
    raise ValueError(f"unknown normalisation {kind!r}; use batch, group, layer or none")


def conv_bn_relu(x, filters: int, kernel: int, name: str, norm: str = "batch", strides: int = 1, padding: str = "same"):
    """Conv (no bias when normalised) -> optional norm -> ReLU."""
    layer_norm = norm_layer(norm, f"{name}_norm", groups=min(8, filters))
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, use_bias=layer_norm is None, name=f"{name}_conv"
    )(x)
    if layer_norm is not None:
        x = layer_norm(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="geolabel")
class ClassSoftmax(keras.layers.Layer):
    """Softmax over the last (class) axis; with two classes computed as a sigmoid of the logit
    difference: the same probabilities, at about half the cost on CPU, where the full-resolution
    softmax is a tenth of a small model's inference time. Carries the model's `stride` (what H
    and W must be a multiple of), recorded by its builder and saved with the model."""

    def __init__(self, stride: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.stride = stride

    def get_config(self) -> dict:
        return {**super().get_config(), "stride": self.stride}

    def call(self, logits):
        if logits.shape[-1] == 2:
            second = ops.sigmoid(logits[..., 1:] - logits[..., :1])
            return ops.concatenate([1.0 - second, second], axis=-1)
        return ops.softmax(logits, axis=-1)


def softmax_output(logits, stride: int):
    """Per-pixel class probabilities, computed in float32 (safe under mixed precision); `stride`
    is the model's input multiple, kept with the model (`geolabel.models.stride_of`)."""
    return ClassSoftmax(stride, dtype="float32", name="probabilities")(logits)


def downsample_input(x, factor: int):
    """Average-pool the input by `factor` (train and predict at a coarser ground resolution)."""
    if factor == 1:
        return x
    return keras.layers.AveragePooling2D(factor, name="input_downsample")(x)


def upsample_output(x, factor: int, name: str = "output_upsample"):
    """Bilinear upsampling of logits back to the input grid (undoes `downsample_input`)."""
    if factor == 1:
        return x
    return keras.layers.UpSampling2D(factor, interpolation="bilinear", name=name)(x)


ENCODER = "encoder"
"""Name of the nested sub-model that is a model's encoder (keras-hub's backbone): what a
fine-tuning freeze schedule holds still."""


def encoder(x, build: Callable[[Any], Any]):
    """Run `build` (symbolic tensor -> tensor or list of tensors) as a nested functional model
    named `ENCODER`, called on `x`; returns its outputs."""
    inputs = keras.Input(tuple(x.shape[1:]), name="encoder_input")
    return keras.Model(inputs, build(inputs), name=ENCODER)(x)


def all_layers(model: Any) -> Iterator[keras.layers.Layer]:
    """Every layer of `model`, those of nested sub-models (the encoder) included."""
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
