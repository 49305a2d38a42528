"""The TensorFlow predictor's fused GroupNorm: same outputs as the model, model left unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.models import build_model
from geolabel.models.layers import GroupNorm, all_layers
from geolabel.models.testing import real_batch
from geolabel.predict import keras_predict_fn
from geolabel.predict.fused import FusedGroupNorm, with_fused_group_norm


@pytest.mark.parametrize("images", [1, 2])
def test_predictor_with_fused_group_norm_equals_the_model(images):
    model = build_model("unet", 2, depth=3, width=8, norm="group")
    x, _ = real_batch(64, 2)
    expected = np.asarray(model(x[:images], training=False))
    got = keras_predict_fn(model, precision="float32")(x[:images])  # the fused kernels are float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert all(type(layer) is not FusedGroupNorm for layer in all_layers(model))


def test_fused_copy_replaces_only_group_norm_and_keeps_its_weights():
    model = build_model("unet", 2, depth=2, width=8, norm="group")
    copy = with_fused_group_norm(model)
    norms = [layer for layer in all_layers(model) if isinstance(layer, GroupNorm)]
    fused = [layer for layer in all_layers(copy) if isinstance(layer, FusedGroupNorm)]
    assert norms and len(fused) == len(norms)
    for plain, fast in zip(norms, fused):
        for a, b in zip(plain.get_weights(), fast.get_weights()):
            np.testing.assert_array_equal(a, b)
    shared = {id(layer) for layer in all_layers(model)}
    convs = [layer for layer in all_layers(copy) if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(id(layer) in shared for layer in convs)  # the other layers are shared, not copied
    fcn = build_model("fcn", 2)
    assert with_fused_group_norm(fcn) is fcn  # nothing to replace


@pytest.fixture(scope="module")
def kampala_z21(shared_data) -> np.ndarray:
    """A real 1024 x 1024 z21 (7.5 cm) window of Kampala: 4 x 4 of the shared XYZ tiles, all imaged."""
    from PIL import Image

    folder = shared_data / "oam-osm" / "kampala-ug" / "tiles" / "21"
    x0 = min(int(p.name) for p in folder.iterdir()) + 24
    y0 = min(int(q.stem) for p in folder.iterdir() for q in p.glob("*.jpg"))
    rows = [np.concatenate([np.asarray(Image.open(folder / str(x0 + c) / f"{y0 + r}.jpg").convert("RGB"))
                            for c in range(4)], axis=1) for r in range(4)]
    return np.concatenate(rows, axis=0)[None].astype("float32")


def test_coarse_ends_give_the_shipped_models_probabilities(kampala_z21):
    from geolabel.models import load_model
    from geolabel.predict.fused import UpsampledTwoClassSoftmax, with_coarse_ends

    model = load_model("pretrained")  # trained at 4x coarser than its input: pooling in, upsampling out
    fast = with_coarse_ends(model)
    assert isinstance(fast.layers[-1], UpsampledTwoClassSoftmax)
    def upsamplings(m):
        return sum(isinstance(layer, keras.layers.UpSampling2D) for layer in m.layers)

    assert upsamplings(fast) == upsamplings(model) - 1  # the logits' upsampling moved into the softmax
    assert all(type(layer) is not UpsampledTwoClassSoftmax for layer in model.layers)  # the model is untouched
    window = kampala_z21[:, :512, :512]
    expected = np.asarray(model(window, training=False))
    np.testing.assert_allclose(np.asarray(fast(window, training=False)), expected, atol=1e-5)
    np.testing.assert_allclose(keras_predict_fn(model, precision="float32")(window), expected, atol=1e-5)
    three = build_model("fcn", 3, downsample=4)  # more than two classes: only the input end changes
    assert not any(isinstance(layer, UpsampledTwoClassSoftmax) for layer in with_coarse_ends(three).layers)
    np.testing.assert_allclose(np.asarray(with_coarse_ends(three)(window)), np.asarray(three(window)), atol=1e-4)
    plain = build_model("fcn", 2)
    assert with_coarse_ends(plain) is plain  # full resolution: nothing to move


def test_bfloat16_and_float32_predictions_agree_on_a_real_raster(kampala_z21):
    """The shipped model in bf16 (what `geolabel predict` runs on CPUs with bf16 units) gives the
    float32 classes on >= 99.5 % of a real z21 window's pixels."""
    from geolabel.models import load_model

    model = load_model("pretrained")
    full = keras_predict_fn(model, precision="float32")(kampala_z21)
    half = keras_predict_fn(model, precision="bfloat16")(kampala_z21)
    assert half.dtype == np.float32
    assert 0.05 < full.argmax(-1).mean() < 0.95  # buildings and background both present
    assert (half.argmax(-1) == full.argmax(-1)).mean() >= 0.995
    assert np.abs(half - full).mean() < 0.01


@pytest.mark.parametrize("filters,stride,bias,size", [(2, 4, False, 66), (3, 2, True, 17)])
def test_subpixel_deconv_equals_the_transposed_convolution(filters, stride, bias, size):
    from geolabel.predict.fused import SubpixelConv2DTranspose, with_subpixel_deconv

    inputs = keras.Input((None, None, 5))
    deconv = keras.layers.Conv2DTranspose(filters, 2 * stride, strides=stride, use_bias=bias,
                                          bias_initializer="random_normal")
    model = keras.Model(inputs, deconv(inputs))
    fast = with_subpixel_deconv(model)
    assert isinstance(fast.layers[-1], SubpixelConv2DTranspose) and model.layers[-1] is deconv
    x = np.random.default_rng(0).normal(size=(2, size, size + 3, 5)).astype("float32")
    expected = np.asarray(model(x))
    np.testing.assert_allclose(np.asarray(fast(x)), expected, atol=1e-5)


def test_predictor_runs_the_shipped_model_exactly_at_every_window_side(kampala_z21):
    """The predictor's rewrites (coarse ends, subpixel deconvolution) keep the model's outputs at the
    window sides where TensorFlow's transposed convolution is slow (1024) and where it is not."""
    from geolabel.models import load_model

    model = load_model("pretrained")
    predictor = keras_predict_fn(model, precision="float32")
    for side in (880, 1024):
        window = kampala_z21[:, :side, :side]
        np.testing.assert_allclose(predictor(window), np.asarray(model(window, training=False)), atol=1e-5)
