"""Align and update a map in one multi-task U-Net (Girard et al., ACCV 2018).

Inputs: image (B, H, W, 3) in [0, 255] and the misaligned map rasterised as 3 channels
(fill, edge, vertex) in [0, 1]. Outputs (dict): `displacement` (B, H, W, 2), the field
that aligns the map (same convention as `geolabel.models.alignment.warp`), bounded by
tanh x `max_displacement` pixels; `segmentation` (B, H, W, 4) sigmoid maps of
(background, fill, edge, vertex) of the *true* buildings, including the ones the map
misses; and the same two at 1/2 and 1/4 resolution (`displacement_1`, `segmentation_1`,
`displacement_2`, `segmentation_2`) for the intermediate losses, whose weights a
`SteppedLevelWeights` callback moves from (0.5, 0.35, 0.15) to (1, 0, 0).

Port notes: "same" padding instead of the paper's valid convolutions (so any input
size that is a multiple of 2**(depth-1) works); conv block = 2 x (3x3 conv + ELU).
Only `keras` and `keras.ops`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import keras
from keras import layers, ops

from geolabel.models.alignment import displacement_loss, downsample

SEG_CLASS_WEIGHTS = (0.05, 0.1, 1.0, 10.0)  # background, fill, edge, vertex
DISP_MAP_WEIGHTS = (0.0, 0.1, 1.0, 10.0)  # per-pixel displacement loss weight by true map class
LEVEL_WEIGHTS_START = (0.5, 0.35, 0.15)
LEVEL_WEIGHTS_END = (1.0, 0.0, 0.0)


def _block(filters: int, name: str) -> list[layers.Layer]:
    return [
        layers.Conv2D(filters, 3, padding="same", activation="elu", name=f"{name}a"),
        layers.Conv2D(filters, 3, padding="same", activation="elu", name=f"{name}b"),
    ]


def _run(block: list[layers.Layer], x):
    for layer in block:
        x = layer(x)
    return x


def segmentation_loss(y_true, y_pred, class_weights: Sequence[float] = SEG_CLASS_WEIGHTS):
    """Class-weighted binary cross-entropy of the 4 sigmoid maps (mean over pixels)."""
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), 1e-6, 1.0 - 1e-6)
    ce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(ce * ops.convert_to_tensor(class_weights, "float32"))


def weighted_displacement_loss(y_true, y_pred, true_map, map_weights: Sequence[float] = DISP_MAP_WEIGHTS):
    """Displacement L2 weighted per pixel by the true map: background/fill/edge/vertex weights.

    `true_map` is (B, H, W, 4) (background, fill, edge, vertex); a pixel takes the weight
    of its highest-weighted class present.
    """
    w = ops.max(ops.cast(true_map, "float32") * ops.convert_to_tensor(map_weights, "float32"), axis=-1)
    return displacement_loss(y_true, y_pred, w)


@keras.saving.register_keras_serializable(package="geolabel")
class AlignUpdateNet(keras.Model):
    """Multi-task U-Net: image + map in, displacement + segmentation out (see module doc).

    Args:
        image_base: filters of the image branch's first level (paper: 32).
        map_base: filters of the map branch's first level (paper: 16).
        depth: levels (paper: 4); H and W must be multiples of 2**(depth-1).
        max_displacement: bound of the predicted field, in pixels.
        disp_weight, seg_weight: loss multipliers (paper: 100 and 50).
    """

    def __init__(
        self,
        image_base: int = 32,
        map_base: int = 16,
        depth: int = 4,
        max_displacement: float = 8.0,
        disp_weight: float = 100.0,
        seg_weight: float = 50.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth < 3:
            raise ValueError("depth must be at least 3 (intermediate outputs at 1/2 and 1/4)")
        self.image_base, self.map_base, self.depth = int(image_base), int(map_base), int(depth)
        self.max_displacement = float(max_displacement)
        self.disp_weight, self.seg_weight = float(disp_weight), float(seg_weight)
        self.img_enc = [_block(self.image_base * 2**i, f"img{i}") for i in range(self.depth)]
        self.map_enc = [_block(self.map_base * 2**i, f"map{i}") for i in range(self.depth)]
        width = lambda i: (self.image_base + self.map_base) * 2**i // 2  # noqa: E731
        self.disp_dec = [_block(width(i), f"ddec{i}") for i in range(self.depth - 1)]
        self.seg_dec = [_block(width(i), f"sdec{i}") for i in range(self.depth - 1)]
        self.disp_heads = [layers.Conv2D(2, 1, activation="tanh", name=f"disp_head{i}") for i in range(3)]
        self.seg_heads = [layers.Conv2D(4, 1, activation="sigmoid", name=f"seg_head{i}") for i in range(3)]
        self.level_weights = keras.Variable(
            list(LEVEL_WEIGHTS_START), trainable=False, dtype="float32", name="level_weights"
        )

    @property
    def stride(self) -> int:
        return 2 ** (self.depth - 1)

    def _decode(self, blocks, skips):
        x, outs = skips[-1], {self.depth - 1: skips[-1]}
        for level in reversed(range(self.depth - 1)):
            shape = ops.shape(skips[level])
            x = ops.image.resize(x, (shape[1], shape[2]), interpolation="bilinear")
            x = _run(blocks[level], ops.concatenate([x, skips[level]], axis=-1))
            if level < 3:
                outs[level] = x
        return outs

    def call(self, inputs):
        image, amap = inputs
        x_img = ops.cast(image, "float32") / 127.5 - 1.0
        x_map = ops.cast(amap, "float32") * 2.0 - 1.0
        skips = []
        for level in range(self.depth):
            if level:
                x_img, x_map = ops.max_pool(x_img, 2, 2), ops.max_pool(x_map, 2, 2)
            x_img, x_map = _run(self.img_enc[level], x_img), _run(self.map_enc[level], x_map)
            skips.append(ops.concatenate([x_img, x_map], axis=-1))
        disp, seg = self._decode(self.disp_dec, skips), self._decode(self.seg_dec, skips)
        out = {}
        for level in range(3):
            suffix = f"_{level}" if level else ""
            out["displacement" + suffix] = self.disp_heads[level](disp[level]) * self.max_displacement
            out["segmentation" + suffix] = self.seg_heads[level](seg[level])
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """100 x weighted displacement L2 + 50 x weighted segmentation CE, summed over levels.

        The displacement L2 is in units of `max_displacement` (the paper's normalised
        field): in pixels^2 it outweighed the segmentation term ~40:1 and the
        segmentation outputs learned nothing.

        `y` is a dict: `displacement` (B, H, W, 2) true field in input pixels and
        `segmentation` (B, H, W, 4) true (background, fill, edge, vertex) maps.
        Coarse-level predictions are in input pixels and compared to average-pooled truth.
        """
        total = 0.0
        for level in range(3):
            suffix = f"_{level}" if level else ""
            factor = 2**level
            true_field = downsample(ops.cast(y["displacement"], "float32"), factor)
            true_seg = downsample(ops.cast(y["segmentation"], "float32"), factor)
            if level:
                true_seg = ops.cast(true_seg > 0.0, "float32") * ops.cast(
                    ops.arange(4) > 0, "float32"
                ) + true_seg * ops.cast(ops.arange(4) == 0, "float32")
            d = weighted_displacement_loss(true_field, y_pred["displacement" + suffix], true_seg)
            d = d / self.max_displacement**2
            s = segmentation_loss(true_seg, y_pred["segmentation" + suffix])
            total = total + self.level_weights[level] * (self.disp_weight * d + self.seg_weight * s)
        return total

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "image_base": self.image_base,
            "map_base": self.map_base,
            "depth": self.depth,
            "max_displacement": self.max_displacement,
            "disp_weight": self.disp_weight,
            "seg_weight": self.seg_weight,
        }


class SteppedLevelWeights(keras.callbacks.Callback):
    """Moves a model's `level_weights` from `start` to `end` in `steps` equal steps over training.

    Args:
        total_epochs: length of training; the weights reach `end` at its last epoch.
        steps: number of distinct weight settings (>= 2).
        time_budget_s: when training is cut by time instead, also advance with the
            elapsed share of this budget (whichever is further along).
    """

    def __init__(
        self,
        total_epochs: int,
        steps: int = 4,
        start: Sequence[float] = LEVEL_WEIGHTS_START,
        end: Sequence[float] = LEVEL_WEIGHTS_END,
        time_budget_s: float | None = None,
    ):
        super().__init__()
        self.total_epochs, self.steps = max(1, int(total_epochs)), max(2, int(steps))
        self.start, self.end = tuple(start), tuple(end)
        self.time_budget_s = time_budget_s
        self._t0 = None

    def weights_at(self, epoch: int, elapsed_fraction: float = 0.0) -> list[float]:
        """Weights for `epoch` (0-based): a staircase from start to end."""
        fraction = max(epoch / self.total_epochs, elapsed_fraction)
        stage = min(self.steps - 1, int(fraction * self.steps))
        t = stage / (self.steps - 1)
        return [a + (b - a) * t for a, b in zip(self.start, self.end)]

    def on_train_begin(self, logs=None) -> None:
        self._t0 = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        elapsed = 0.0
        if self.time_budget_s and self._t0 is not None:
            elapsed = (time.monotonic() - self._t0) / self.time_budget_s
        self.model.level_weights.assign(self.weights_at(epoch, elapsed))
