"""TensorFlow inference rewrites of geolabel's models: same weights, same outputs, less time.

The models stay pure Keras; the predictor and the SavedModel exports run copies:
- `with_fused_group_norm`: `GroupNorm` normalises one image at a time with two fused batch-norm
  kernels (the channel moments, then the per-channel affine): ~2x faster on a full-resolution
  activation on CPU (outputs equal to ~1e-4).
- `with_subpixel_deconv`: a transposed convolution whose kernel is twice its stride becomes a 2x2
  convolution + `depth_to_space` (TensorFlow's transposed-convolution kernel is up to 10x slower
  on some input sizes).
- `with_coarse_ends`: models trained at a coarser resolution pool their input before normalising
  it and upsample only the two-class logit difference, so less work runs at full resolution.
`with_portable_rewrites` applies the last two, which use plain TensorFlow ops: the predictor and
the SavedModel exports (TF Serving) both run them.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from geolabel.models.layers import GroupNorm, all_layers, group_moments


class FusedGroupNorm(GroupNorm):
    """`GroupNorm` whose single-image calls run TensorFlow's fused batch-norm kernels."""

    def call(self, inputs):
        import tensorflow as tf

        if self.axis not in (-1, 3) or len(inputs.shape) != 4 or self.compute_dtype != "float32":
            return GroupNorm.call(self, inputs)
        channels = inputs.shape[-1]
        ones, zeros = tf.ones(channels), tf.zeros(channels)
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else ones
        beta = tf.cast(self.beta, tf.float32) if self.center else zeros

        def single_image(x):
            _, channel_mean, channel_variance = tf.compat.v1.nn.fused_batch_norm(x, ones, zeros, is_training=True)[:3]
            count = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
            channel_variance = channel_variance * (count - 1) / count  # the kernel returns the unbiased variance
            mean, variance = group_moments(channel_mean, channel_variance, self.groups)
            return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=mean, variance=variance,
                                                    epsilon=self.epsilon, is_training=False)[0]

        # batches: splitting them into single images costs more than the fused kernels save
        if inputs.shape[0] is not None:  # a static batch (the predictor traces one shape) needs no cond
            return single_image(inputs) if inputs.shape[0] == 1 else GroupNorm.call(self, inputs)
        return tf.cond(tf.shape(inputs)[0] == 1, lambda: single_image(inputs), lambda: GroupNorm.call(self, inputs))


def with_fused_group_norm(model: Any) -> Any:
    """A copy of `model` sharing its layers except `GroupNorm`, replaced by `FusedGroupNorm` with
    the same weights; `model` itself when it has none or is not a functional model."""
    if not any(type(layer) is GroupNorm for layer in all_layers(model)):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if type(layer) is not GroupNorm:
            return layer
        fused = FusedGroupNorm.from_config(layer.get_config())
        fused.build(layer.input.shape)
        fused.set_weights(layer.get_weights())
        return fused

    try:
        return keras.models.clone_model(model, clone_function=clone, recursive=True)
    except ValueError:  # subclassed models cannot be cloned layer by layer
        return model


class UpsampledTwoClassSoftmax(keras.layers.Layer):
    """`ClassSoftmax(UpSampling2D(logits))` for two classes, upsampling only the logit difference:
    bilinear interpolation is linear, so the probabilities are the same while the full-resolution
    work (interpolation, cast, sigmoid) covers one plane instead of two. Computes in float32."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bilinear", **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.size, self.interpolation = tuple(size), interpolation
        self.upsample = keras.layers.UpSampling2D(self.size, interpolation=interpolation, dtype="float32")

    def call(self, logits):
        from keras import ops

        second = ops.sigmoid(self.upsample(logits[..., 1:] - logits[..., :1]))
        return ops.concatenate([1.0 - second, second], axis=-1)

    def build(self, input_shape: tuple) -> None:
        self.upsample.build(input_shape[:-1] + (1,))
        self.built = True

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.upsample.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "interpolation": self.interpolation}


def with_coarse_ends(model: Any) -> Any:
    """A copy of `model` that computes the same probabilities with less full-resolution work, for
    the models trained at a coarser resolution (`downsample_input` ... `upsample_output`):
    `Normalize` then average pooling runs as pooling (float32) then `Normalize`, and a two-class
    `ClassSoftmax` of bilinearly upsampled logits as `UpsampledTwoClassSoftmax` (both rewrites
    exact: pooling, interpolation and the logit difference are linear). Otherwise `model`."""
    from geolabel.models.layers import ClassSoftmax, Normalize

    nodes = [n for depth in getattr(model, "_nodes_by_depth", {}).values() for n in depth]
    consumers: dict[int, list] = {}
    for node in nodes:
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node.operation)

    def only_consumer(tensor) -> Any:
        ops = consumers.get(id(tensor), [])
        return ops[0] if len(ops) == 1 else None

    normalize = pool = upsample = softmax = None
    for node in nodes:
        layer = node.operation
        if type(layer) is Normalize and len(node.output_tensors) == 1:
            after = only_consumer(node.output_tensors[0])
            if type(after) is keras.layers.AveragePooling2D and after.pool_size == after.strides and after.padding == "valid":
                normalize, pool = layer, after
        if type(layer) is keras.layers.UpSampling2D and layer.interpolation == "bilinear" and \
                node.output_tensors[0].shape[-1] == 2:
            after = only_consumer(node.output_tensors[0])
            if type(after) is ClassSoftmax:
                upsample, softmax = layer, after
    if pool is None and softmax is None:
        return model
    fused = None if softmax is None else UpsampledTwoClassSoftmax(upsample.size, name=softmax.name)
    pool32 = None if pool is None else keras.layers.AveragePooling2D.from_config({**pool.get_config(), "dtype": "float32"})

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return fused if layer is softmax and fused is not None else layer

    def call(layer: keras.layers.Layer, *args, **kwargs):
        if layer is upsample or layer is normalize:
            return args[0]  # done by the softmax / after the pooling
        if layer is pool:
            return normalize(pool32(args[0]))
        return layer(*args, **kwargs)

    try:
        return keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
    except ValueError:  # subclassed models cannot be cloned layer by layer
        return model


class SubpixelConv2DTranspose(keras.layers.Layer):
    """A `Conv2DTranspose` whose kernel is twice its stride s ('valid' padding) computed as a 2x2
    convolution to s x s phases of the output, then `depth_to_space`: the same output, while
    TensorFlow's transposed-convolution kernel is up to 10x slower on some input sizes (66 x 66
    coarse cells, i.e. 1024 px windows of the FCN, take 6.5 ms instead of 0.6)."""

    def __init__(self, filters: int, stride: int, use_bias: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride, self.use_bias = filters, stride, use_bias

    def build(self, input_shape: tuple) -> None:
        phases = self.stride * self.stride * self.filters
        self.kernel = self.add_weight(shape=(2, 2, input_shape[-1], phases), initializer="zeros",
                                      trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", trainable=False,
                                    name="bias") if self.use_bias else None

    def call(self, inputs):
        import tensorflow as tf

        padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
        phases = tf.nn.conv2d(padded, tf.cast(self.kernel, padded.dtype), 1, "VALID")
        outputs = tf.nn.depth_to_space(phases, self.stride)
        return outputs if self.bias is None else outputs + tf.cast(self.bias, outputs.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        grow = [None if n is None else (n + 1) * self.stride for n in input_shape[1:3]]
        return (input_shape[0], *grow, self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "stride": self.stride, "use_bias": self.use_bias}

    @staticmethod
    def phase_kernel(transposed: np.ndarray, stride: int) -> np.ndarray:
        """The (2, 2, in, s*s*out) kernel of the 2x2 convolution from a (2s, 2s, out, in)
        transposed-convolution kernel: output row s*q + r sums input rows q (tap r) and q - 1
        (tap r + s), i.e. rows q - 1, q of the input padded by one."""
        s = stride
        out = transposed.shape[2]
        kernel = np.zeros((2, 2, transposed.shape[3], s * s * out), transposed.dtype)
        for ty in range(2):
            for tx in range(2):
                for ry in range(s):
                    for rx in range(s):
                        phase = (ry * s + rx) * out
                        kernel[ty, tx, :, phase:phase + out] = transposed[ry + s * (1 - ty), rx + s * (1 - tx)].T
        return kernel


def with_subpixel_deconv(model: Any) -> Any:
    """A copy of `model` with each `Conv2DTranspose` whose kernel is twice its stride ('valid'
    padding, no dilation, channels last) replaced by `SubpixelConv2DTranspose` with the same
    weights (same outputs); `model` itself when it has none or is not a functional model."""

    def eligible(layer: keras.layers.Layer) -> bool:
        return (type(layer) is keras.layers.Conv2DTranspose and layer.padding == "valid"
                and layer.strides[0] == layer.strides[1] and tuple(layer.kernel_size) == (2 * layer.strides[0],) * 2
                and tuple(layer.dilation_rate) == (1, 1) and layer.data_format == "channels_last"
                and layer.activation is keras.activations.linear and getattr(layer, "output_padding", None) is None)

    if not any(eligible(layer) for layer in all_layers(model)):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if not eligible(layer):
            return layer
        fast = SubpixelConv2DTranspose(layer.filters, layer.strides[0], layer.use_bias, dtype=layer.dtype_policy,
                                       name=layer.name)
        fast.build(layer.input.shape)
        weights = [SubpixelConv2DTranspose.phase_kernel(layer.get_weights()[0], layer.strides[0])]
        fast.set_weights(weights + layer.get_weights()[1:])
        return fast

    try:
        return keras.models.clone_model(model, clone_function=clone, recursive=True)
    except ValueError:  # subclassed models cannot be cloned layer by layer
        return model


def with_portable_rewrites(model: Any) -> Any:
    """`model` with every exact rewrite made of plain TensorFlow ops (`with_subpixel_deconv`, then
    `with_coarse_ends`): the one chain the predictor and the SavedModel exports share."""
    return with_coarse_ends(with_subpixel_deconv(model))
