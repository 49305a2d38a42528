"""TernausNet (Iglovikov & Shvets 2018): a U-Net whose encoder is VGG11's convolutions.

Random initialisation by default; `weights` loads any compatible Keras weights file
(e.g. a previous run's `model.weights.h5`); nothing is downloaded.
"""

from __future__ import annotations

import os

import keras

from geolabel.models.layers import Normalize, downsample_input, encoder, softmax_output, upsample_output

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_SCALE = [1 / 58.395, 1 / 57.12, 1 / 57.375]

# VGG11 convolutional stages: filters of each 3x3 conv, a 2x2 max-pool after each stage.
VGG11 = ((64,), (128,), (256, 256), (512, 512), (512, 512))


def _conv_relu(x, filters: int, name: str):
    x = keras.layers.Conv2D(filters, 3, padding="same", name=name)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _decoder_block(x, middle: int, out: int, name: str):
    """3x3 conv+ReLU, then a 3x3 stride-2 transposed conv+ReLU (TernausNet's DecoderBlock)."""
    x = _conv_relu(x, middle, f"{name}_conv")
    x = keras.layers.Conv2DTranspose(out, 3, strides=2, padding="same", name=f"{name}_up")(x)
    return keras.layers.ReLU(name=f"{name}_up_relu")(x)


def build_ternaus(
    num_classes: int,
    channels: int = 3,
    width: int = 32,
    weights: str | None = None,
    downsample: int = 1,
    name: str = "ternaus",
) -> keras.Model:
    """TernausNet11: VGG11 encoder (five stages, stride 32), transposed-conv decoder with skips.

    Args:
        num_classes: output classes.
        channels: input bands (ImageNet normalisation is applied to the first three).
        width: decoder base width `num_filters` (paper: 32); the encoder keeps VGG11's widths.
        weights: optional Keras weights file (.weights.h5) loaded into the built model.
        downsample: average-pool the input by this factor first and upsample the logits back.
        name: model name.

    Stride: 32 * downsample.

    Example:
        >>> build_ternaus(2)(np.zeros((1, 64, 64, 3), "float32")).shape
        (1, 64, 64, 2)
    """
    inputs = keras.Input((None, None, channels), name="pixels")
    mean = (IMAGENET_MEAN + [127.5] * channels)[:channels]
    scale = (IMAGENET_SCALE + [1 / 127.5] * channels)[:channels]
    x = Normalize(mean, scale, name="normalize")(inputs)
    x = downsample_input(x, downsample)

    def vgg11(x):
        skips = []
        for stage, convs in enumerate(VGG11, start=1):
            for j, filters in enumerate(convs, start=1):
                x = _conv_relu(x, filters, f"vgg_conv{stage}_{j}")
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"vgg_pool{stage}")(x)
        return [*skips, x]

    *skips, x = encoder(x, vgg11)
    w = width
    x = _decoder_block(x, w * 16, w * 8, "center")
    for stage, (middle, out) in zip((5, 4, 3, 2), ((w * 16, w * 8), (w * 16, w * 4), (w * 8, w * 2), (w * 4, w))):
        x = keras.layers.Concatenate(name=f"skip{stage}")([x, skips[stage - 1]])
        x = _decoder_block(x, middle, out, f"dec{stage}")
    x = keras.layers.Concatenate(name="skip1")([x, skips[0]])
    x = _conv_relu(x, w, "dec1_conv")
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    logits = upsample_output(logits, downsample)
    model = keras.Model(inputs, softmax_output(logits, 32 * downsample), name=name)
    if weights is not None:
        from geolabel.errors import InputError

        if not os.path.isfile(weights):
            raise InputError(weights, "weights file not found")
        try:
            model.load_weights(weights)
        except (ValueError, OSError) as err:
            raise InputError(weights, f"not compatible with this TernausNet ({err})") from err
    return model
