"""Image-map alignment: a multiscale chain of small U-Nets (Zampieri et al., ECCV 2018).

A displacement field `f` (B, H, W, 2) holds, per pixel, the shift (dx, dy) in pixels
from where a pixel *should* be to where the misregistered map shows it:
`aligned(p) = map(p + f(p))`, which is what `warp(map, f)` computes. Channel 0 is the
column (x) shift, channel 1 the row (y) shift.

The chain runs at 1/8, 1/4, 1/2 and 1 of the input resolution. Each step downsamples
image and map, warps the map with the field found so far, predicts a refinement with
its own block, and composes it with the field so far. Only `keras` and `keras.ops`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops


def warp(images, field):
    """Bilinearly sample `images` (B, H, W, C) at `p + field(p)`; differentiable in both.

    Samples outside the image take the value of the nearest edge pixel. An all-zero
    field returns `images` exactly; a constant integer field shifts them exactly.
    """
    shape = ops.shape(images)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    dtype = images.dtype
    ys = ops.cast(ops.arange(h), dtype)[None, :, None]
    xs = ops.cast(ops.arange(w), dtype)[None, None, :]
    x = xs + ops.cast(field[..., 0], dtype)
    y = ys + ops.cast(field[..., 1], dtype)
    wmax = ops.cast(w - 1, dtype)
    hmax = ops.cast(h - 1, dtype)
    x = ops.clip(x, 0.0, wmax)
    y = ops.clip(y, 0.0, hmax)
    x0 = ops.floor(x)
    y0 = ops.floor(y)
    ax = x - x0  # weights carry the gradient with respect to the field
    ay = y - y0
    x1 = ops.minimum(x0 + 1.0, wmax)
    y1 = ops.minimum(y0 + 1.0, hmax)
    flat = ops.reshape(images, (-1, c))
    base = (ops.arange(b, dtype="int32") * (h * w))[:, None, None]

    def gather(yy, xx):
        index = base + ops.cast(yy, "int32") * w + ops.cast(xx, "int32")
        return ops.take(flat, ops.reshape(index, (-1,)), axis=0)

    out = (
        gather(y0, x0) * ops.reshape((1 - ax) * (1 - ay), (-1, 1))
        + gather(y0, x1) * ops.reshape(ax * (1 - ay), (-1, 1))
        + gather(y1, x0) * ops.reshape((1 - ax) * ay, (-1, 1))
        + gather(y1, x1) * ops.reshape(ax * ay, (-1, 1))
    )
    return ops.reshape(out, (b, h, w, c))


def compose(field, delta):
    """Field of `warp(warp(m, field), delta)`: `delta(p) + field(p + delta(p))`."""
    return delta + warp(field, delta)


def downsample(x, factor: int):
    """Average-pool by an integer factor (identity for 1)."""
    if factor == 1:
        return x
    return ops.average_pool(x, pool_size=factor, strides=factor, padding="valid")


def upsample_field(field, factor: int):
    """Bilinearly upsample a field by `factor` and rescale its vectors to the finer pixels."""
    if factor == 1:
        return field
    shape = ops.shape(field)
    resized = ops.image.resize(field, (shape[1] * factor, shape[2] * factor), interpolation="bilinear")
    return resized * float(factor)


def downsample_field(field, factor: int):
    """Average-pool a field and express it in the coarser grid's pixels."""
    return downsample(field, factor) / float(factor)


def displacement_loss(y_true, y_pred, weights=None):
    """Mean squared L2 norm of the displacement error (pixels^2), optionally weighted per pixel."""
    err = ops.sum(ops.square(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")), axis=-1)
    if weights is None:
        return ops.mean(err)
    weights = ops.cast(weights, "float32")
    return ops.sum(err * weights) / (ops.sum(weights) + 1e-6)


@keras.saving.register_keras_serializable(package="geolabel")
class AlignBlock(keras.Model):
    """One alignment step: image branch + map branch, 3 merged levels, U-Net decoder -> field.

    Args:
        filters: widths of the 3 levels (paper: 32, 32, 64; image branch level 1 may be 16).
        map_channels: channels of the rasterised map.
    """

    def __init__(self, filters: Sequence[int] = (32, 32, 64), map_channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.map_channels = int(map_channels)
        conv = lambda n, name: layers.Conv2D(n, 3, padding="same", activation="relu", name=name)  # noqa: E731
        self.img_convs = [[conv(f, f"img{i}a"), conv(f, f"img{i}b")] for i, f in enumerate(self.filters)]
        self.map_convs = [[conv(f, f"map{i}a"), conv(f, f"map{i}b")] for i, f in enumerate(self.filters)]
        self.dec_convs = [[conv(f, f"dec{i}a"), conv(f, f"dec{i}b")] for i, f in enumerate(self.filters[:-1])]
        self.head = layers.Conv2D(2, 3, padding="same", kernel_initializer="zeros", name="field")

    def call(self, inputs):
        image, amap = inputs
        x_img, x_map, skips = image, amap, []
        for level, (ic, mc) in enumerate(zip(self.img_convs, self.map_convs)):
            if level > 0:
                x_img = ops.max_pool(x_img, 2, 2)
                x_map = ops.max_pool(x_map, 2, 2)
            for layer in ic:
                x_img = layer(x_img)
            for layer in mc:
                x_map = layer(x_map)
            skips.append(ops.concatenate([x_img, x_map], axis=-1))
        x = skips[-1]
        for level in reversed(range(len(self.filters) - 1)):
            shape = ops.shape(skips[level])
            x = ops.image.resize(x, (shape[1], shape[2]), interpolation="bilinear")
            x = ops.concatenate([x, skips[level]], axis=-1)
            for layer in self.dec_convs[level]:
                x = layer(x)
        return self.head(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": list(self.filters), "map_channels": self.map_channels}


@keras.saving.register_keras_serializable(package="geolabel")
class MultiscaleAligner(keras.Model):
    """The chain of AlignBlocks at 1/8, 1/4, 1/2, 1; inputs `[image (0-255), map (0-1)]`.

    Returns a dict: `displacement` (B, H, W, 2) in input pixels, and `level_k` the field
    accumulated after step k in that step's own pixels (for the intermediate losses).
    H and W must be multiples of `stride` (= 4 x the coarsest factor).

    Args:
        scales: downsampling factors, coarse to fine, each dividing the previous one.
        filters: AlignBlock widths.
        map_channels: channels of the rasterised map.
        level_weights: weights of the per-step L2 losses in `compute_loss`.
        focus: extra loss weight near the map's content (0 = plain L2 as in the paper).
        focus_radius: "near" = within this many pixels of map content.
    """

    def __init__(
        self,
        scales: Sequence[int] = (8, 4, 2, 1),
        filters: Sequence[int] = (32, 32, 64),
        map_channels: int = 3,
        level_weights: Sequence[float] | None = None,
        focus: float = 0.0,
        focus_radius: int = 8,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.focus, self.focus_radius = float(focus), int(focus_radius)
        self.scales = tuple(int(s) for s in scales)
        for coarse, fine in zip(self.scales, self.scales[1:]):
            if coarse % fine:
                raise ValueError(f"scales must each divide the previous one, got {self.scales}")
        self.filters = tuple(int(f) for f in filters)
        self.map_channels = int(map_channels)
        self.level_weights = tuple(float(w) for w in (level_weights or [1.0] * len(self.scales)))
        self.blocks = [AlignBlock(self.filters, self.map_channels, name=f"block_s{s}") for s in self.scales]

    @property
    def stride(self) -> int:
        return self.scales[0] * 2 ** (len(self.filters) - 1)

    def call(self, inputs):
        image, amap = inputs
        image = ops.cast(image, "float32") / 127.5 - 1.0
        amap = ops.cast(amap, "float32")
        field, previous, out = None, None, {}
        for k, (scale, block) in enumerate(zip(self.scales, self.blocks)):
            img_s, map_s = downsample(image, scale), downsample(amap, scale)
            if field is None:
                field = ops.zeros_like(map_s[..., :2])
            else:
                field = upsample_field(field, previous // scale)
            delta = block([img_s, warp(map_s, field)])
            field = compose(field, delta)
            out[f"level_{k}"] = field
            previous = scale
        out["displacement"] = upsample_field(field, self.scales[-1])
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted sum over the chain's steps of the L2 loss against the downsampled truth.

        Every step's loss is expressed in input pixels^2 (x scale^2): in its own coarse
        pixels the 1/8 step weighed 64 times less than the full-resolution one.

        With `focus` > 0, pixels within `focus_radius` of the map's content weigh 1 and the
        rest `1 / (1 + focus)`: far from any building the field cannot be seen in the image.
        """
        pixel_weights = None
        if self.focus > 0 and x is not None:
            near = ops.max(ops.cast(x[1], "float32"), axis=-1, keepdims=True)
            size = 2 * self.focus_radius + 1
            near = ops.max_pool(near, pool_size=size, strides=1, padding="same")
            pixel_weights = (1.0 + self.focus * near) / (1.0 + self.focus)
        total = 0.0
        for k, (scale, weight) in enumerate(zip(self.scales, self.level_weights)):
            if weight:
                w = None if pixel_weights is None else downsample(pixel_weights, scale)[..., 0]
                err = displacement_loss(downsample_field(y, scale), y_pred[f"level_{k}"], w)
                total = total + weight * float(scale) ** 2 * err
        return total

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "scales": list(self.scales),
            "filters": list(self.filters),
            "map_channels": self.map_channels,
            "level_weights": list(self.level_weights),
            "focus": self.focus,
            "focus_radius": self.focus_radius,
        }
