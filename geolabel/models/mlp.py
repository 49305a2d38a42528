"""The multi-resolution MLP network of Maggiori et al. (TGRS 2017b), ported to Keras 3.

A base FCN (four stages down to 1/16) whose stage outputs are upsampled to the 1/2
grid, concatenated, and classified pixel by pixel by a small MLP (1x1 convolutions),
then upsampled x2. Convolutions are "same"-padded so the output has the input's size.
"""

from __future__ import annotations

import keras

from geolabel.models.layers import (
    Normalize,
    ResizeBilinear,
    conv_bn_relu,
    downsample_input,
    encoder,
    softmax_output,
    upsample_output,
)


def build_mlp(
    num_classes: int,
    channels: int = 3,
    widths: tuple[int, int, int, int] = (32, 64, 96, 128),
    hidden: int = 128,
    hidden_relu: bool = True,
    norm: str = "batch",
    downsample: int = 1,
    name: str = "mlp",
) -> keras.Model:
    """Multi-resolution MLP network: base FCN stages -> concat at 1/2 -> 1x1 MLP -> x2 upsample.

    Args:
        num_classes: output classes.
        channels: input bands.
        widths: filters of the four stages (paper: 32/64/96/128; Inria variant 64/96/128/160).
        hidden: units of the pixelwise hidden layer (paper: 128; Inria variant 256).
        hidden_relu: ReLU after the hidden layer (the released prototxt has none).
        norm: normalisation after each conv ("batch", "group", "layer", "none").
        downsample: average-pool the input by this factor first and upsample the logits back.
        name: model name.

    Stride: 16 * downsample.

    Example:
        >>> build_mlp(2)(np.zeros((1, 64, 64, 3), "float32")).shape
        (1, 64, 64, 2)
    """
    if len(widths) != 4:
        raise ValueError("widths needs four values, one per stage")
    inputs = keras.Input((None, None, channels), name="pixels")
    x = Normalize(127.5, 1 / 127.5, name="normalize")(inputs)
    x = downsample_input(x, downsample)

    def base_fcn(x):
        x = conv_bn_relu(x, widths[0], 5, "s1a", norm, strides=2)
        x = conv_bn_relu(x, widths[0], 3, "s1b", norm)
        stages = [x]
        for stage, filters in enumerate(widths[1:], start=2):
            x = keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
            x = conv_bn_relu(x, filters, 3, f"s{stage}a", norm)
            x = conv_bn_relu(x, filters, 3, f"s{stage}b", norm)
            stages.append(x)
        return stages

    stages = encoder(x, base_fcn)
    grid = stages[0]
    features = [grid] + [ResizeBilinear(name=f"resize{i}")([s, grid]) for i, s in enumerate(stages[1:], start=2)]
    x = keras.layers.Concatenate(name="multires")(features)
    x = keras.layers.Conv2D(hidden, 1, name="mlp_hidden")(x)
    if hidden_relu:
        x = keras.layers.ReLU(name="mlp_relu")(x)
    logits = keras.layers.Conv2D(num_classes, 1, name="mlp_logits")(x)
    logits = keras.layers.UpSampling2D(2, interpolation="bilinear", name="upsample2")(logits)
    logits = upsample_output(logits, downsample)
    return keras.Model(inputs, softmax_output(logits, 16 * downsample), name=name)
