"""Scoring and the blessing rule of the SegmentationEvaluator (plain functions, no TFX).

A model is blessed when its cumulative IoU of one class on the eval split clears an
absolute floor AND does not fall more than an allowed margin below the last blessed
model's IoU measured on the same split.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geolabel.errors import InputError
from geolabel.pipelines.storage import download_file, is_remote, join

KERAS_DIR = "Format-Keras"  # beside TFX's Format-Serving inside a Model artifact
KERAS_FILE = "model.keras"


def keras_model_path(model_uri: str | os.PathLike) -> Path:
    """Where the Keras file of a TFX Model artifact lives (`<uri>/Format-Keras/model.keras`)."""
    return Path(model_uri) / KERAS_DIR / KERAS_FILE


def load_keras_model(model_uri: str | os.PathLike):
    """Load the Keras model stored in a TFX Model artifact (local or remote URI)."""
    from geolabel.models import load_model

    if is_remote(model_uri):
        import tensorflow as tf

        uri = join(model_uri, KERAS_DIR, KERAS_FILE)
        if not tf.io.gfile.exists(uri):
            raise InputError(str(model_uri), f"Model artifact holds no {KERAS_DIR}/{KERAS_FILE}")
        with tempfile.TemporaryDirectory(prefix="geolabel-model-") as tmp:
            return load_model(download_file(uri, Path(tmp) / KERAS_FILE))
    path = keras_model_path(model_uri)
    if not path.is_file():
        raise InputError(str(model_uri), f"Model artifact holds no {KERAS_DIR}/{KERAS_FILE}")
    return load_model(path)


def cumulative_iou(model, files: Iterable[str | os.PathLike], class_id: int, batch_size: int = 8) -> dict:
    """Cumulative IoU of `class_id` (Inria protocol: summed intersections / summed unions).

    Args:
        model: a Keras segmentation model (float pixels in [0, 255] -> probabilities).
        files: GZIP TFRecord shards of geolabel chips.
        class_id: the class scored.
        batch_size: chips per forward pass.

    Returns:
        {"iou", "intersection", "union", "chips"}; iou is 0.0 when the class never occurs.
    """
    import tensorflow as tf

    from geolabel.data.chips import COMPRESSION, parse_chip
    from geolabel.metrics import confusion_matrix
    from geolabel.models import stride_of

    files = [str(f) for f in files]
    if not files:
        raise InputError("eval split", "holds no TFRecord shards")
    channels = int(model.input_shape[-1])
    stride = stride_of(model)
    dataset = tf.data.TFRecordDataset(files, compression_type=COMPRESSION)
    dataset = dataset.map(lambda r: parse_chip(r, channels=channels)).batch(batch_size)
    num_classes = int(model.output_shape[-1])
    confusion = np.zeros((num_classes, num_classes), np.int64)
    chips = 0
    for images, masks in dataset.as_numpy_iterator():
        h = images.shape[1] // stride * stride
        w = images.shape[2] // stride * stride
        probabilities = np.asarray(model(images[:, :h, :w].astype("float32"), training=False))
        confusion += confusion_matrix(masks[:, :h, :w], probabilities.argmax(-1), num_classes)
        chips += len(images)
    intersection = int(confusion[class_id, class_id])
    union = int(confusion[class_id].sum() + confusion[:, class_id].sum()) - intersection
    return {"iou": intersection / union if union else 0.0, "intersection": intersection, "union": union, "chips": chips}


@dataclass
class Verdict:
    """The evaluator's decision and the reason for it, in words."""

    blessed: bool
    reason: str


def bless(iou: float, min_iou: float, baseline_iou: float | None = None, max_regression: float = 0.0) -> Verdict:
    """Bless when `iou >= min_iou` and `iou >= baseline_iou - max_regression` (baseline None: no check)."""
    if iou < min_iou:
        return Verdict(False, f"IoU {iou:.4f} is below the threshold min_iou={min_iou:.4f}")
    if baseline_iou is not None and iou < baseline_iou - max_regression:
        return Verdict(
            False,
            f"IoU {iou:.4f} regresses against the last blessed model's {baseline_iou:.4f} "
            f"by more than max_regression={max_regression:.4f}",
        )
    against = "" if baseline_iou is None else f" and the last blessed model's {baseline_iou:.4f} - {max_regression:.4f}"
    return Verdict(True, f"IoU {iou:.4f} clears min_iou={min_iou:.4f}{against}")
