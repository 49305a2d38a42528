"""The fully convolutional network of Maggiori et al. (TGRS 2017), ported to Keras 3.

The paper's network uses valid convolutions: 80x80 input patches give 16x16 outputs.
geolabel's contract wants outputs of the input's size, so the input is reflect-padded
by 34 px inside the model, the valid convolutions run unchanged, and the learned
bilinear-initialised deconvolution (kernel 8, stride 4) is cropped by 6 px per side;
output pixel i is then aligned with input pixel i. Context near the image border is
mirrored instead of real: tile large rasters with overlap (as `geolabel predict` does).
"""

from __future__ import annotations

import keras

from geolabel.models.layers import (
    BilinearUpsampleInit,
    Normalize,
    ReflectPad2D,
    RowSumConv2D,
    downsample_input,
    encoder,
    softmax_output,
    upsample_output,
)

# conv1 12x12/4, conv2 4x4, conv3 3x3, conv4 9x9 shrink the padded input by 12 + 4*(3+2+8) = 64
# input pixels minus the 8 needed for one extra coarse cell per side for the deconvolution.
PAD = 34
CROP = 6


def build_fcn(
    num_classes: int,
    channels: int = 3,
    widths: tuple[int, int, int] = (64, 112, 80),
    downsample: int = 1,
    norm: str = "none",
    name: str = "fcn",
) -> keras.Model:
    """Maggiori et al. 2017 FCN: conv 12x12/4 -> 4x4 -> 3x3 -> 9x9 to classes -> deconv 8/4.

    Args:
        num_classes: output classes.
        channels: input bands.
        widths: filters of conv1, conv2, conv3 (paper: 64, 112, 80).
        downsample: average-pool the input by this factor first and upsample the logits back.
        norm: "none" (paper) or "batch" (Caffe-style BatchNorm without scale/offset after each conv).
        name: model name.

    Input size: any multiple of `4 * downsample` larger than 34 (after downsampling).

    Example:
        >>> build_fcn(2)(np.zeros((1, 80, 80, 3), "float32")).shape
        (1, 80, 80, 2)
    """
    if norm not in ("none", "batch"):
        raise ValueError(f"unknown norm {norm!r}; use none or batch")
    inputs = keras.Input((None, None, channels), name="pixels")
    x = Normalize(127.0, 1 / 256.0, name="normalize")(inputs)
    x = downsample_input(x, downsample)
    x = ReflectPad2D(PAD, name="reflect_pad")(x)

    def features(x):
        for i, (filters, kernel, strides) in enumerate(zip(widths, (12, 4, 3), (4, 1, 1)), start=1):
            x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="valid", name=f"conv{i}")(x)
            if norm == "batch":
                x = keras.layers.BatchNormalization(center=False, scale=False, name=f"conv{i}_bn")(x)
            x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
        return x

    x = encoder(x, features)
    x = RowSumConv2D(num_classes, 9, name="conv4")(x)
    x = keras.layers.Conv2DTranspose(
        num_classes, 8, strides=4, padding="valid", use_bias=False,
        kernel_initializer=BilinearUpsampleInit(), name="deconv",
    )(x)
    logits = keras.layers.Cropping2D(CROP, name="crop")(x)
    logits = upsample_output(logits, downsample)
    return keras.Model(inputs, softmax_output(logits, 4 * downsample), name=name)
