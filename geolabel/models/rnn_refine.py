"""Recurrent refinement of classification maps as a learned PDE (Maggiori et al., TGRS 2017c).

u_0 = log of a segmentation model's probabilities; then T times, with shared weights,
u_{t+1} = u_t + f(M * u_t, N * I): 32 kernels M on the heat maps, 32 kernels N on the
image (computed once), and per class k an MLP f_k with one hidden layer of 32 units.
Output: softmax(u_T). Kernel size 5x5 [open]. Only `keras` and `keras.ops`.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="geolabel")
class ClassMLP(layers.Layer):
    """Per-pixel, class-specific MLPs: features (.., F) -> one output per class (.., K).

    Class k has its own hidden layer of `hidden` units (ReLU) and its own output unit.
    """

    def __init__(self, num_classes: int, hidden: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.hidden = int(num_classes), int(hidden)

    def build(self, input_shape) -> None:
        features = int(input_shape[-1])
        k, h = self.num_classes, self.hidden
        self.w1 = self.add_weight(shape=(features, k * h), initializer="glorot_uniform", name="w1")
        self.b1 = self.add_weight(shape=(k * h,), initializer="zeros", name="b1")
        self.w2 = self.add_weight(shape=(k, h), initializer="zeros", name="w2")
        self.b2 = self.add_weight(shape=(k,), initializer="zeros", name="b2")

    def call(self, x):
        hidden = ops.relu(ops.matmul(x, self.w1) + self.b1)
        shape = ops.shape(hidden)
        hidden = ops.reshape(hidden, (shape[0], shape[1], shape[2], self.num_classes, self.hidden))
        return ops.sum(hidden * self.w2, axis=-1) + self.b2

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "hidden": self.hidden}


@keras.saving.register_keras_serializable(package="geolabel")
class RNNRefine(keras.Model):
    """The unrolled learned PDE; inputs `[image (0-255), probabilities (B, H, W, K)]`.

    Returns refined probabilities (B, H, W, K). Weights start so that f = 0 (identity).

    Args:
        num_classes: K.
        steps: unrolled iterations T (paper: 5).
        map_kernels, image_kernels: kernels M and N (paper: 32 each).
        hidden: hidden units of each class MLP (paper: 32).
        kernel_size: spatial size of M and N.
    """

    def __init__(
        self,
        num_classes: int,
        steps: int = 5,
        map_kernels: int = 32,
        image_kernels: int = 32,
        hidden: int = 32,
        kernel_size: int = 5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes, self.steps = int(num_classes), int(steps)
        self.map_kernels, self.image_kernels = int(map_kernels), int(image_kernels)
        self.hidden, self.kernel_size = int(hidden), int(kernel_size)
        self.m_conv = layers.Conv2D(self.map_kernels, self.kernel_size, padding="same", name="M")
        self.n_conv = layers.Conv2D(self.image_kernels, self.kernel_size, padding="same", name="N")
        self.mlp = ClassMLP(self.num_classes, self.hidden, name="f")

    def call(self, inputs):
        image, probs = inputs
        image = ops.cast(image, "float32") / 127.5 - 1.0
        u = ops.log(ops.clip(ops.cast(probs, "float32"), 1e-4, 1.0))
        image_features = self.n_conv(image)
        for _ in range(self.steps):
            u = u + self.mlp(ops.concatenate([self.m_conv(u), image_features], axis=-1))
        return ops.softmax(u, axis=-1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "steps": self.steps,
            "map_kernels": self.map_kernels,
            "image_kernels": self.image_kernels,
            "hidden": self.hidden,
            "kernel_size": self.kernel_size,
        }


def refined_model(base: keras.Model, refine: RNNRefine, trainable_base: bool = False) -> keras.Model:
    """A segmentation model (image in, probabilities out) = `base` followed by `refine`.

    Satisfies the segmentation-model contract, so prediction tiles it like any other.
    """
    base.trainable = trainable_base
    channels = base.inputs[0].shape[-1] if getattr(base, "inputs", None) else 3
    image = keras.Input((None, None, channels), name="image")
    probs = base(image)
    return keras.Model(image, refine([image, probs]), name=f"{base.name}_rnn_refine")
