"""Tests of the multi-resolution MLP network."""

from __future__ import annotations

from geolabel.models import build_model, stride_of
from geolabel.models.testing import check_output_shapes, check_round_trip, check_trains


def test_output_shapes_for_several_sizes():
    model = build_model("mlp", 2, widths=(4, 4, 8, 8), hidden=8)
    assert stride_of(model) == 16
    check_output_shapes(model, (2, 3, 5))


def test_inria_variant_widths():
    model = build_model("mlp", 2, widths=(64, 96, 128, 160), hidden=256)
    assert model.get_layer("multires").output.shape[-1] == 64 + 96 + 128 + 160
    assert model.get_layer("mlp_hidden").output.shape[-1] == 256


def test_trains_on_real_chips():
    check_trains(build_model("mlp", 2, widths=(8, 8, 16, 16), hidden=16))


def test_save_load_and_config_round_trip(tmp_path):
    check_round_trip(build_model("mlp", 2, widths=(4, 4, 8, 8), hidden=8), tmp_path)
