"""Tests of the PolyCNN model and its cyclic vertex loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.errors import InputError
from geolabel.models.polycnn import (
    CyclicVertexLoss,
    build_feature_extractor,
    build_polycnn,
    polygon_distance,
)

SQUARE = np.array([[0.2, 0.2, 0.8, 0.2, 0.8, 0.8, 0.2, 0.8]], dtype="float32")


def test_loss_invariant_to_cyclic_shifts():
    pred = SQUARE + np.array([[0.01, -0.02, 0.03, 0.0, -0.01, 0.02, 0.0, 0.01]], dtype="float32")
    vertices = SQUARE.reshape(1, 4, 2)
    losses = [float(CyclicVertexLoss()(np.roll(vertices, k, axis=1).reshape(1, 8), pred)) for k in range(4)]
    assert np.allclose(losses, losses[0], atol=1e-6)
    assert losses[0] > 0


def test_perfect_prediction_has_zero_loss_under_any_shift():
    vertices = SQUARE.reshape(1, 4, 2)
    for k in range(4):
        shifted = np.roll(vertices, k, axis=1).reshape(1, 8)
        assert float(CyclicVertexLoss()(SQUARE, shifted)) == pytest.approx(0.0, abs=1e-5)


def test_loss_is_mean_vertex_distance():
    pred = SQUARE + np.array([[0.1, 0.0] * 4], dtype="float32")  # every vertex 0.1 to the right
    assert float(np.asarray(polygon_distance(SQUARE, pred))[0]) == pytest.approx(0.1, abs=1e-5)
    reversed_order = SQUARE.reshape(1, 4, 2)[:, ::-1].reshape(1, 8)  # a reflection is not a shift
    assert float(np.asarray(polygon_distance(SQUARE, reversed_order))[0]) > 0.1


def test_shapes_and_parts():
    model = build_polycnn(width=8, encoder_hidden=32)
    assert model.input_shape == (None, 67, 67, 3)
    assert model.output_shape == (None, 8)
    assert {layer.name for layer in model.layers} >= {"feature_extractor", "encoder", "decoder"}
    out = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (2, 67, 67, 3)).astype("float32")))
    assert out.shape == (2, 8)
    assert np.all((out >= 0) & (out <= 1))
    small = build_polycnn(patch=64, width=4, encoder_hidden=16)
    assert small.output_shape == (None, 8)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_save_load_roundtrip(tmp_path):
    model = build_polycnn(width=8, encoder_hidden=32)
    model.compile(optimizer="adam", loss=CyclicVertexLoss())
    x = np.random.default_rng(1).uniform(0, 255, (2, 67, 67, 3)).astype("float32")
    path = tmp_path / "polycnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert isinstance(loaded.loss, CyclicVertexLoss)
    assert model.get_config()["name"] == "polycnn"


def test_feature_extractor_loads_local_weights(tmp_path):
    source = build_feature_extractor(width=4)
    weights = tmp_path / "extractor.weights.h5"
    source.save_weights(weights)
    x = np.random.default_rng(2).uniform(0, 255, (1, 67, 67, 3)).astype("float32")
    model = build_polycnn(width=4, encoder_hidden=16, feature_weights=weights)
    np.testing.assert_allclose(
        np.asarray(model.get_layer("feature_extractor")(x)), np.asarray(source(x)), atol=1e-6
    )
    whole = tmp_path / "whole.keras"
    model.save(whole)
    again = build_feature_extractor(width=4, weights=whole)  # the extractor of a saved PolyCNN
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(source(x)), atol=1e-6)
    with pytest.raises(InputError, match="missing.weights.h5"):
        build_feature_extractor(width=4, weights=tmp_path / "missing.weights.h5")
