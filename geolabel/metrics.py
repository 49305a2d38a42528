"""Cumulative segmentation metrics (Inria protocol): IoU per class and pixel accuracy.

"Cumulative" = sums of intersections and unions over every pixel seen, not a mean of
per-image scores. Keras metrics for training, numpy helpers for evaluation of rasters.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from geolabel.classes import IGNORE


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class.

    Reference pixels equal to `ignore` (or outside 0..K-1) are skipped; predicted values outside
    0..K-1 (e.g. a prediction's nodata) count as background.
    """
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    keep = (t != ignore) & (t < num_classes)
    t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
    p = np.where((p >= 0) & (p < num_classes), p, 0)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix (NaN for a class absent from truth and prediction)."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of non-ignored pixels classified correctly."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


@keras.saving.register_keras_serializable(package="geolabel")
class CumulativeIoU(keras.metrics.Metric):
    """Cumulative IoU of one class (argmax of the probabilities vs class-id labels).

    Args:
        class_id: the class scored (e.g. 1 = building).
        ignore: label value skipped.
    """

    def __init__(self, class_id: int = 1, ignore: int = IGNORE, name: str | None = None, **kwargs: Any):
        super().__init__(name=name or f"iou_{class_id}", **kwargs)
        self.class_id = int(class_id)
        self.ignore = int(ignore)
        self.intersection = self.add_variable((), initializer="zeros", name="intersection", dtype="float64")
        self.union = self.add_variable((), initializer="zeros", name="union", dtype="float64")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        pred = ops.cast(ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)), "int32")
        valid = ops.not_equal(labels, self.ignore)
        t = ops.logical_and(ops.equal(labels, self.class_id), valid)
        p = ops.logical_and(ops.equal(pred, self.class_id), valid)
        inter = ops.sum(ops.cast(ops.logical_and(t, p), "float64"))
        union = ops.sum(ops.cast(ops.logical_or(t, p), "float64"))
        self.intersection.assign_add(inter)
        self.union.assign_add(union)

    def result(self):
        return ops.cast(ops.divide_no_nan(self.intersection, self.union), "float32")

    def reset_state(self):
        self.intersection.assign(0.0)
        self.union.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_id": self.class_id, "ignore": self.ignore}


@keras.saving.register_keras_serializable(package="geolabel")
class PixelAccuracy(keras.metrics.Metric):
    """Cumulative fraction of non-ignored pixels whose argmax class is right."""

    def __init__(self, ignore: int = IGNORE, name: str = "pixel_accuracy", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.ignore = int(ignore)
        self.correct = self.add_variable((), initializer="zeros", name="correct", dtype="float64")
        self.total = self.add_variable((), initializer="zeros", name="total", dtype="float64")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        pred = ops.cast(ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)), "int32")
        valid = ops.not_equal(labels, self.ignore)
        self.correct.assign_add(ops.sum(ops.cast(ops.logical_and(valid, ops.equal(labels, pred)), "float64")))
        self.total.assign_add(ops.sum(ops.cast(valid, "float64")))

    def result(self):
        return ops.cast(ops.divide_no_nan(self.correct, self.total), "float32")

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ignore": self.ignore}
