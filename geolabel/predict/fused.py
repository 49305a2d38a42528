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
