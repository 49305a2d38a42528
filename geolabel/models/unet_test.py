"""Tests of the U-Net."""

from __future__ import annotations

import pytest

from geolabel.models import build_model, stride_of
from geolabel.models.testing import check_output_shapes, check_round_trip, check_trains


def test_output_shapes_for_several_sizes():
    model = build_model("unet", 2, depth=3, width=4)
    assert stride_of(model) == 8
    check_output_shapes(model, (2, 3, 5))


@pytest.mark.parametrize("norm,upsample", [("batch", "transpose"), ("none", "bilinear")])
def test_variants_keep_the_contract(norm, upsample):
    model = build_model("unet", 3, depth=2, width=8, norm=norm, upsample=upsample)
    check_output_shapes(model, (4,), num_classes=3)


def test_downsampled_input_keeps_full_resolution_output():
    model = build_model("unet", 2, depth=2, width=4, downsample=2)
    assert stride_of(model) == 8
    check_output_shapes(model, (3,))


def test_trains_on_real_chips():
    check_trains(build_model("unet", 2, depth=2, width=8))


def test_save_load_and_config_round_trip(tmp_path):
    check_round_trip(build_model("unet", 2, depth=2, width=4, downsample=2), tmp_path)
