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
class SegmentationScores(keras.metrics.Metric):
    """`confusion_matrix` accumulated in the graph over the batches of an epoch (argmax of the
    probabilities vs class-id labels), read as the IoU of `class_id`, the mean IoU of the classes
    seen and pixel accuracy, as `iou_per_class` and `pixel_accuracy` compute them.

    Args:
        num_classes: number of classes of the probabilities.
        class_id: the class whose IoU is `iou` (e.g. 1 = building).
        ignore: label value skipped.
    """

    def __init__(self, num_classes: int = 2, class_id: int = 1, ignore: int = IGNORE, name: str = "scores", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.class_id = int(class_id)
        self.ignore = int(ignore)
        self.confusion = self.add_variable((self.num_classes, self.num_classes), initializer="zeros",
                                           name="confusion", dtype="float64")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        pred = ops.cast(ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)), "int32")
        valid = ops.logical_and(ops.logical_and(labels != self.ignore, labels >= 0), labels < k)
        cell = ops.where(valid, labels * k + pred, k * k)  # skipped pixels land in a bin cut off below
        counts = ops.bincount(cell, minlength=k * k + 1)[: k * k]
        self.confusion.assign_add(ops.reshape(ops.cast(counts, "float64"), (k, k)))

    def result(self) -> dict[str, Any]:
        confusion = self.confusion
        tp = ops.diagonal(confusion)
        union = ops.sum(confusion, 0) + ops.sum(confusion, 1) - tp
        seen = union > 0
        iou = ops.where(seen, tp / ops.maximum(union, 1.0), float("nan"))
        classes_seen = ops.sum(ops.cast(seen, "float64"))
        total = ops.sum(confusion)
        nan = ops.cast(float("nan"), "float64")
        scores = {
            "iou": iou[self.class_id],
            "pixel_accuracy": ops.where(total > 0, ops.sum(tp) / ops.maximum(total, 1.0), nan),
            "mean_iou": ops.where(classes_seen > 0, ops.sum(ops.where(seen, iou, 0.0)) / ops.maximum(classes_seen, 1.0), nan),
        }
        return {key: ops.cast(value, "float32") for key, value in scores.items()}

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "class_id": self.class_id, "ignore": self.ignore}
