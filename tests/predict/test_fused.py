"""The TensorFlow predictor's fused GroupNorm: same outputs as the model, model left unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.models import build_model
from geolabel.models.layers import GroupNorm
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
    assert all(type(layer) is not FusedGroupNorm for layer in model.layers)


def test_fused_copy_replaces_only_group_norm_and_keeps_its_weights():
    model = build_model("unet", 2, depth=2, width=8, norm="group")
    copy = with_fused_group_norm(model)
    norms = [layer for layer in model.layers if isinstance(layer, GroupNorm)]
    fused = [layer for layer in copy.layers if isinstance(layer, FusedGroupNorm)]
    assert norms and len(fused) == len(norms)
    for plain, fast in zip(norms, fused):
        for a, b in zip(plain.get_weights(), fast.get_weights()):
            np.testing.assert_array_equal(a, b)
    shared = {id(layer) for layer in model.layers}
    convs = [layer for layer in copy.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(id(layer) in shared for layer in convs)  # the other layers are shared, not copied
    fcn = build_model("fcn", 2)
    assert with_fused_group_norm(fcn) is fcn  # nothing to replace
