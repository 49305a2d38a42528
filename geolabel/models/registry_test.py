"""What every registered family shares: the stride its builder records, kept through saving."""

from __future__ import annotations

import keras
import pytest

from geolabel.models import MODELS, build_model, stride_of


def _layer_strides(model: keras.Model) -> int:
    """The product of the downsampling strides, the way runs saved before strides were recorded get theirs."""
    return stride_of(keras.Model(model.inputs, model.layers[-2].output))  # without the recording output layer


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("downsample", [1, 2])
def test_recorded_stride_is_the_layers_stride_and_is_saved(family, downsample, tmp_path):
    model = build_model(family, 2, downsample=downsample)
    assert stride_of(model) == _layer_strides(model) == model.layers[-1].stride
    model.save(tmp_path / "model.keras")
    assert stride_of(keras.saving.load_model(tmp_path / "model.keras", compile=False)) == stride_of(model)
