"""TensorFlow inference kernels for layers of geolabel's models (the models stay pure Keras).

`with_fused_group_norm(model)` returns a copy of a functional model whose `GroupNorm` layers
normalise one image at a time with two fused batch-norm kernels (the channel moments, then the
per-channel affine): ~2x faster than the generic `keras.ops` form on a full-resolution
activation on CPU, with the same weights and outputs (to ~1e-4). The copy is for inference.
"""

from __future__ import annotations

from typing import Any

import keras

from geolabel.models.layers import GroupNorm, group_moments


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
    if not any(type(layer) is GroupNorm for layer in getattr(model, "layers", [])):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if type(layer) is not GroupNorm:
            return layer
        fused = FusedGroupNorm.from_config(layer.get_config())
        fused.build(layer.input.shape)
        fused.set_weights(layer.get_weights())
        return fused

    try:
        return keras.models.clone_model(model, clone_function=clone)
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
        return keras.models.clone_model(model, clone_function=clone, call_function=call)
    except ValueError:  # subclassed models cannot be cloned layer by layer
        return model
