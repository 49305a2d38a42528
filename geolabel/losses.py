"""Segmentation losses (Keras 3): cross-entropy, soft Jaccard (IoU), and `CE - log(soft IoU)`.

All take `y_true` as class ids (B, H, W) with `ignore` (255) where the label is unknown,
and `y_pred` as softmax probabilities (B, H, W, C). Ignored pixels contribute nothing.
Soft IoU is computed over the whole batch (sums of intersections and unions), as the
Inria winners did, not averaged per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from geolabel.classes import IGNORE

EPSILON = 1e-6


def _prepare(y_true, y_pred, ignore: int):
    """Flatten to (N,) labels, (N, C) probabilities, (N,) valid mask; labels of ignored pixels -> 0."""
    num_classes = ops.shape(y_pred)[-1]
    y_pred = ops.cast(ops.reshape(y_pred, (-1, num_classes)), "float32")
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    valid = ops.cast(ops.not_equal(labels, ignore), "float32")
    labels = ops.where(labels == ignore, ops.zeros_like(labels), labels)
    return labels, y_pred, valid


def cross_entropy(y_true, y_pred, class_weights: Sequence[float] | None = None, ignore: int = IGNORE,
                  bootstrap: float = 1.0):
    """Mean (class-weighted) cross-entropy over the non-ignored pixels.

    `bootstrap` < 1 is Reed et al.'s (2015) hard bootstrapping for noisy labels: the target is
    `bootstrap` x the label + (1 - `bootstrap`) x the model's own current decision, so a building
    the map forgot (OSM's most common error) is not punished in full once the model sees it.
    """
    labels, probs, valid = _prepare(y_true, y_pred, ignore)
    num_classes = ops.shape(probs)[-1]
    onehot = ops.one_hot(labels, num_classes, dtype="float32")
    if bootstrap < 1.0:
        decision = ops.one_hot(ops.argmax(ops.stop_gradient(probs), axis=-1), num_classes, dtype="float32")
        onehot = bootstrap * onehot + (1.0 - bootstrap) * decision
    nll = -ops.sum(onehot * ops.log(ops.clip(probs, EPSILON, 1.0)), axis=-1)
    weights = valid
    if class_weights is not None:
        weights = weights * ops.take(ops.convert_to_tensor(list(class_weights), dtype="float32"), labels)
    return ops.sum(nll * weights) / ops.maximum(ops.sum(weights), EPSILON)


def soft_iou(y_true, y_pred, classes: Sequence[int] | None = None, ignore: int = IGNORE):
    """Batch soft IoU, mean over `classes` (default: every class but background 0)."""
    labels, probs, valid = _prepare(y_true, y_pred, ignore)
    num_classes = probs.shape[-1]
    onehot = ops.one_hot(labels, num_classes, dtype="float32") * valid[:, None]
    probs = probs * valid[:, None]
    intersection = ops.sum(onehot * probs, axis=0)
    union = ops.sum(onehot + probs, axis=0) - intersection
    iou = (intersection + EPSILON) / (union + EPSILON)
    chosen = list(classes) if classes is not None else list(range(1, num_classes)) or [0]
    return ops.mean(ops.take(iou, chosen))


@keras.saving.register_keras_serializable(package="geolabel")
class CrossEntropy(keras.losses.Loss):
    """Masked, optionally class-weighted categorical cross-entropy on class-id labels.

    Args:
        class_weights: one weight per class (None = all 1).
        ignore: label value that contributes nothing.
        bootstrap: weight of the labels in the target (`cross_entropy`).
    """

    def __init__(self, class_weights: Sequence[float] | None = None, ignore: int = IGNORE, bootstrap: float = 1.0,
                 name: str = "ce", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.ignore = ignore
        self.bootstrap = float(bootstrap)

    def call(self, y_true, y_pred):
        return cross_entropy(y_true, y_pred, self.class_weights, self.ignore, self.bootstrap)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_weights": self.class_weights, "ignore": self.ignore,
                "bootstrap": self.bootstrap}


@keras.saving.register_keras_serializable(package="geolabel")
class SoftJaccard(keras.losses.Loss):
    """`1 - soft IoU` (batch-wise) over `classes` (default: all but background).

    Args:
        classes: class ids whose soft IoU is averaged.
        ignore: label value that contributes nothing.
    """

    def __init__(self, classes: Sequence[int] | None = None, ignore: int = IGNORE, name: str = "jaccard", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.classes = list(classes) if classes is not None else None
        self.ignore = ignore

    def call(self, y_true, y_pred):
        return 1.0 - soft_iou(y_true, y_pred, self.classes, self.ignore)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes, "ignore": self.ignore}


@keras.saving.register_keras_serializable(package="geolabel")
class CrossEntropyJaccard(keras.losses.Loss):
    """`CE - jaccard_weight * log(soft IoU)`: the loss of the seed and of the Inria winners.

    Args:
        jaccard_weight: weight of the `-log(soft IoU)` term.
        class_weights: per-class cross-entropy weights.
        classes: classes of the soft IoU (default: all but background).
        ignore: label value that contributes nothing.
        bootstrap: weight of the labels in the cross-entropy target (`cross_entropy`).
    """

    def __init__(
        self,
        jaccard_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        classes: Sequence[int] | None = None,
        ignore: int = IGNORE,
        bootstrap: float = 1.0,
        name: str = "ce_jaccard",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.jaccard_weight = float(jaccard_weight)
        self.bootstrap = float(bootstrap)
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.classes = list(classes) if classes is not None else None
        self.ignore = ignore

    def call(self, y_true, y_pred):
        ce = cross_entropy(y_true, y_pred, self.class_weights, self.ignore, self.bootstrap)
        iou = soft_iou(y_true, y_pred, self.classes, self.ignore)
        return ce - self.jaccard_weight * ops.log(ops.maximum(iou, EPSILON))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "jaccard_weight": self.jaccard_weight,
            "class_weights": self.class_weights,
            "classes": self.classes,
            "ignore": self.ignore,
            "bootstrap": self.bootstrap,
        }


LOSSES = {"ce": CrossEntropy, "jaccard": SoftJaccard, "ce_jaccard": CrossEntropyJaccard}


def get_loss(name: str, class_weights: Sequence[float] | None = None, ignore: int = IGNORE,
             bootstrap: float = 1.0) -> keras.losses.Loss:
    """A loss by name: "ce", "jaccard" or "ce_jaccard"; `bootstrap` < 1 bootstraps the cross-entropy."""
    from geolabel.errors import InputError

    if name not in LOSSES:
        raise InputError("--loss", f"unknown loss {name!r}; use {', '.join(LOSSES)}")
    if not 0.0 < bootstrap <= 1.0:
        raise InputError("--label-bootstrap", f"{bootstrap} is not in (0, 1]")
    if name == "jaccard":
        return SoftJaccard(ignore=ignore)
    if name == "ce":
        return CrossEntropy(class_weights=class_weights, ignore=ignore, bootstrap=bootstrap)
    return CrossEntropyJaccard(class_weights=class_weights, ignore=ignore, bootstrap=bootstrap)
