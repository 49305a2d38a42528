"""Losses (CE, soft Jaccard, CE - log soft IoU) and cumulative metrics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.losses import CrossEntropy, CrossEntropyJaccard, SoftJaccard, get_loss
from geolabel.metrics import SegmentationScores, confusion_matrix, iou_per_class, pixel_accuracy


def probs_from(pred: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    p = np.where(pred[..., None] == np.arange(2), confidence, 1 - confidence)
    return p.astype("float32")


def test_cross_entropy_matches_numpy_and_skips_ignored(austin_arrays):
    _, mask = austin_arrays
    y = mask[:32, :32].copy()
    probs = np.random.default_rng(0).dirichlet([1, 1], size=y.shape).astype("float32")
    y[:4] = 255
    keep = y != 255
    expected = -np.log(np.take_along_axis(probs[keep], y[keep][:, None].astype(int), 1)).mean()
    assert float(CrossEntropy()(y[None], probs[None])) == pytest.approx(expected, rel=1e-5)


def test_class_weights_change_the_balance():
    y = np.array([[[0, 1]]], "uint8")
    probs = np.array([[[[0.9, 0.1], [0.9, 0.1]]]], "float32")
    plain = float(CrossEntropy()(y, probs))
    weighted = float(CrossEntropy(class_weights=[1.0, 3.0])(y, probs))
    expected = (-np.log(0.9) - 3 * np.log(0.1)) / 4
    assert plain == pytest.approx((-np.log(0.9) - np.log(0.1)) / 2, rel=1e-5)
    assert weighted == pytest.approx(expected, rel=1e-5)


def test_bootstrapped_cross_entropy_forgives_a_confident_building_the_map_forgot(austin_arrays):
    _, mask = austin_arrays
    y = mask[:64, :64].copy()
    forgot = y.copy()
    forgot[y == 1] = 0  # the map lost these buildings; the model still sees them
    probs = np.eye(2, dtype="float32")[y] * 0.9 + 0.05
    plain = float(CrossEntropy()(forgot[None], probs[None]))
    boot = float(CrossEntropy(bootstrap=0.8)(forgot[None], probs[None]))
    # on the forgotten pixels the target is 0.8 x label + 0.2 x decision: 0.8 x -log(0.05) + 0.2 x -log(0.95)
    building = (y == 1).mean()
    expected = (1 - building) * -np.log(0.95) + building * (0.8 * -np.log(0.05) + 0.2 * -np.log(0.95))
    assert boot == pytest.approx(expected, rel=1e-4) and boot < plain
    assert float(CrossEntropy(bootstrap=0.8)(y[None], probs[None])) == pytest.approx(float(CrossEntropy()(y[None], probs[None])), rel=1e-5)
    assert get_loss("ce_jaccard", bootstrap=0.8).get_config()["bootstrap"] == 0.8
    from geolabel.errors import InputError

    with pytest.raises(InputError, match="--label-bootstrap"):
        get_loss("ce", bootstrap=0.0)


def test_soft_jaccard_perfect_and_batchwise(austin_arrays):
    _, mask = austin_arrays
    y = np.stack([mask[:64, :64], mask[64:128, :64]])
    perfect = np.eye(2, dtype="float32")[y]
    assert float(SoftJaccard()(y, perfect)) == pytest.approx(0.0, abs=1e-5)
    half = np.full(y.shape + (2,), 0.5, "float32")
    inter = 0.5 * (y == 1).sum()
    union = (y == 1).sum() + 0.5 * y.size - inter
    assert float(SoftJaccard()(y, half)) == pytest.approx(1 - inter / union, rel=1e-4)


def test_ce_jaccard_combines_terms():
    y = np.array([[[0, 1, 1, 255]]], "uint8")
    probs = probs_from(np.array([[[0, 1, 0, 0]]]), 0.8)
    combined = float(CrossEntropyJaccard()(y, probs))
    ce = float(CrossEntropy()(y, probs))
    iou = 1 - float(SoftJaccard()(y, probs))
    assert combined == pytest.approx(ce - np.log(iou), rel=1e-5)
    assert get_loss("ce_jaccard").get_config()["jaccard_weight"] == 1.0


def test_losses_serialise():
    loss = CrossEntropyJaccard(jaccard_weight=0.5, class_weights=[1, 2])
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.get_config() == loss.get_config()


def test_training_scores_sum_over_batches_not_mean_of_images():
    y1, p1 = np.array([[[1, 1, 0, 0]]]), np.array([[[1, 1, 0, 0]]])  # IoU 1 on 2 px
    y2, p2 = np.array([[[1, 0, 0, 0]]]), np.array([[[0, 1, 1, 1]]])  # IoU 0 on 4 px union
    metric = SegmentationScores(2, class_id=1)
    metric.update_state(y1, probs_from(p1))
    metric.update_state(y2, probs_from(p2))
    scores = {k: float(v) for k, v in metric.result().items()}
    confusion = confusion_matrix(np.concatenate([y1, y2]), np.concatenate([p1, p2]), 2)
    assert scores["iou"] == pytest.approx(2 / 6) == pytest.approx(iou_per_class(confusion)[1])
    assert scores["mean_iou"] == pytest.approx(np.nanmean(iou_per_class(confusion)))
    assert scores["pixel_accuracy"] == pytest.approx(pixel_accuracy(confusion))
    metric.reset_state()
    assert np.isnan(float(metric.result()["iou"]))


def test_training_scores_ignore_nodata_as_the_raster_scores_do():
    y = np.array([[[1, 0, 255, 255]]])
    p = np.array([[[1, 1, 0, 1]]])
    metric = SegmentationScores(2)
    metric.update_state(y, probs_from(p))
    assert float(metric.result()["pixel_accuracy"]) == pytest.approx(0.5)
    assert pixel_accuracy(confusion_matrix(y, p, 2)) == pytest.approx(0.5)
