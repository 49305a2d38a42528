"""Tests of TernausNet (VGG11-encoder U-Net)."""

from __future__ import annotations

import numpy as np
import pytest

from geolabel.errors import InputError
from geolabel.models import build_model, encoder_of, stride_of
from geolabel.models.testing import check_output_shapes, check_round_trip, check_trains


@pytest.fixture(scope="module")
def ternaus():
    return build_model("ternaus", 2, width=4)


def test_output_shapes_for_several_sizes(ternaus):
    assert stride_of(ternaus) == 32
    check_output_shapes(ternaus, (2, 3))


def test_vgg11_encoder_widths(ternaus):
    convs = [layer.filters for layer in encoder_of(ternaus).layers if hasattr(layer, "filters")]
    assert convs == [64, 128, 256, 256, 512, 512, 512, 512]


def test_trains_on_real_chips():
    check_trains(build_model("ternaus", 2, width=4), size=32, steps=6, lr=1e-3)


def test_save_load_and_config_round_trip(ternaus, tmp_path):
    check_round_trip(ternaus, tmp_path)


def test_weights_file_loads_and_bad_file_is_named(ternaus, tmp_path):
    path = tmp_path / "tn.weights.h5"
    ternaus.save_weights(path)
    loaded = build_model("ternaus", 2, width=4, weights=str(path))
    x = np.full((1, 64, 64, 3), 100.0, "float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(ternaus(x)), atol=1e-5)
    with pytest.raises(InputError, match="missing.weights.h5"):
        build_model("ternaus", 2, width=4, weights=str(tmp_path / "missing.weights.h5"))
