"""U-Net (Ronneberger et al. 2015) with configurable depth, width and normalisation."""

from __future__ import annotations

import keras

from geolabel.models.layers import Normalize, conv_bn_relu, downsample_input, encoder, softmax_output, upsample_output


def build_unet(
    num_classes: int,
    channels: int = 3,
    depth: int = 4,
    width: int = 32,
    max_width: int = 512,
    norm: str = "group",
    upsample: str = "bilinear",
    dropout: float = 0.0,
    downsample: int = 1,
    name: str = "unet",
) -> keras.Model:
    """U-Net: `depth` max-pool stages, two 3x3 conv+norm+ReLU per stage, skip concatenations.

    Args:
        num_classes: output classes (softmax over the last axis).
        channels: input bands.
        depth: number of 2x downsamplings; the stride is `downsample * 2**depth`.
        width: filters at full resolution, doubled per stage up to `max_width`.
        max_width: cap on the filters of any stage.
        norm: "group" (default), "batch", "layer" or "none". Group normalisation behaves the
            same in training and inference; in leave-one-city-out tests on the OAM cities
            (benchmarks/results/generalisation.md) a BatchNorm U-Net trained for a few hundred
            steps collapsed on the unseen city while the GroupNorm one did not.
        upsample: "bilinear" (resize + conv) or "transpose" (learned 2x2 transposed conv).
        dropout: spatial dropout rate at the bottleneck.
        downsample: average-pool the input by this factor first and upsample the logits back,
            to work at a coarser ground resolution (cheaper, larger receptive field in metres).
        name: model name.

    Example:
        >>> model = build_unet(2, depth=3, width=8)
        >>> model(np.zeros((1, 64, 64, 3), "float32")).shape
        (1, 64, 64, 2)
    """
    if depth < 1 or width < 1 or downsample < 1:
        raise ValueError("depth, width and downsample must be >= 1")
    inputs = keras.Input((None, None, channels), name="pixels")
    x = Normalize(127.5, 1 / 127.5, name="normalize")(inputs)
    x = downsample_input(x, downsample)

    def contracting_path(x):
        skips = []
        for level in range(depth):
            filters = min(width * 2**level, max_width)
            x = conv_bn_relu(x, filters, 3, f"enc{level}a", norm)
            x = conv_bn_relu(x, filters, 3, f"enc{level}b", norm)
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
        filters = min(width * 2**depth, max_width)
        x = conv_bn_relu(x, filters, 3, "mid_a", norm)
        if dropout > 0:
            x = keras.layers.SpatialDropout2D(dropout, name="mid_dropout")(x)
        return [*skips, conv_bn_relu(x, filters, 3, "mid_b", norm)]

    *skips, x = encoder(x, contracting_path)
    for level in reversed(range(depth)):
        filters = min(width * 2**level, max_width)
        if upsample == "bilinear":
            x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}")(x)
            x = conv_bn_relu(x, filters, 1, f"up{level}_proj", norm)
        elif upsample == "transpose":
            x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        else:
            raise ValueError(f"unknown upsample {upsample!r}; use bilinear or transpose")
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_bn_relu(x, filters, 3, f"dec{level}a", norm)
        x = conv_bn_relu(x, filters, 3, f"dec{level}b", norm)
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    logits = upsample_output(logits, downsample)
    return keras.Model(inputs, softmax_output(logits, 2**depth * downsample), name=name)
