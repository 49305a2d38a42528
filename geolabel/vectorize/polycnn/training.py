"""PolyCNN training: artificial pre-training, then the staged schedule on real scenes.

The staged schedule (Girard & Tarabalka 2018): decoder frozen for the first steps, feature
extractor for longer, then everything; a run folder records the config, model, history and
the held-out scenes' polygon IoU and vertex-distance curve.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.errors import InputError
from geolabel.models.polycnn import PATCH
from geolabel.progress import logger, progress_bar
from geolabel.vectorize.polycnn.geometry import score_quads
from geolabel.vectorize.polycnn.inference import regress_scene
from geolabel.vectorize.polycnn.samples import Scene, augmented_batches, load_scene, scene_examples
from geolabel.vectorize.polycnn.synthetic import artificial_batches


@dataclasses.dataclass
class PolyCNNConfig:
    """Options of `geolabel polycnn-train` (YAML keys = field names; the run's `config.yaml`).

    Args:
        train: scenes to train on (YAML: a list of {imagery, labels} mappings; `Scene`).
        val: held-out scenes the run is scored on.
        zoom: level read from imagery given as an XYZ tile folder (needed when it holds several).
        tolerance_m: Douglas-Peucker tolerance (ground metres) that must reduce an outline to
            4 vertices for the building to count as a quadrilateral.
        patch: crop side in pixels (67 in the paper).
        width: channels of the feature extractor's first stage.
        margin: crop side = object extent x (1 + margin).
        jitter: random margin and centre shift of the training crops (0 = centred).
        copies: jittered crops per training building.
        pretrain_steps: steps on the artificial quadrilaterals (0: none).
        steps: steps on the real buildings.
        decoder_frozen_steps: first real steps with the decoder frozen.
        extractor_frozen_steps: first real steps with the feature extractor frozen.
        transfer: what the artificial pre-training passes on: "decoder" (the paper) or "all".
        feature_weights: local weights file for the feature extractor.
    """

    train: list[Scene] = dataclasses.field(default_factory=list)
    val: list[Scene] = dataclasses.field(default_factory=list)
    zoom: int | None = None
    tolerance_m: float = 0.5
    patch: int = PATCH
    width: int = 32
    margin: float = 0.25
    jitter: float = 0.5
    copies: int = 4
    batch_size: int = 32
    pretrain_steps: int = 600
    steps: int = 600
    decoder_frozen_steps: int = 100
    extractor_frozen_steps: int = 200
    lr: float = 1e-3
    transfer: str = "all"
    feature_weights: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Scenes from YAML mappings; the data is required and checked before any slow work."""
        for option, role in (("train", "training"), ("val", "held-out")):
            scenes = [Scene.parse(value, f"--{option}") for value in getattr(self, option) or ()]
            if not scenes:
                raise InputError(f"--{option}", f"no {role} scene given (IMAGERY LABELS: imagery and its building outlines)")
            setattr(self, option, scenes)
        if self.transfer not in ("decoder", "all"):
            raise InputError("--transfer", f"must be 'decoder' or 'all', not {self.transfer!r}")
        if not 0 <= self.decoder_frozen_steps <= self.extractor_frozen_steps:
            raise InputError("--decoder-frozen-steps", "must be >= 0 and <= --extractor-frozen-steps")


def set_trainable(model: Any, extractor: bool, encoder: bool, decoder: bool) -> None:
    """Freeze or release PolyCNN's three nested parts."""
    model.get_layer("feature_extractor").trainable = extractor
    model.get_layer("encoder").trainable = encoder
    model.get_layer("decoder").trainable = decoder


class _StageRows(keras.callbacks.Callback):
    """Stops a stage after its `steps` and appends one history row per epoch (mean loss, seconds)."""

    def __init__(self, stage: str, steps: int, history: list[dict]):
        super().__init__()
        self.stage, self.steps, self.history = stage, steps, history
        self.first = int(history[-1]["step"]) if history else 0
        self.done = 0
        self.bar = progress_bar(f"polycnn {stage}", steps, "step")

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.done += 1
        self.bar.update(1)
        if self.done >= self.steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        step = self.first + self.done
        self.history.append({"stage": self.stage, "step": step, "loss": float(logs["loss"]),
                             "seconds": round(time.perf_counter() - self.started, 3)})
        logger.info("polycnn %s step %d loss %.4f", self.stage, step, self.history[-1]["loss"])

    def on_train_end(self, logs=None) -> None:
        self.bar.close()


def _fit_steps(model: Any, batches: Iterator, steps: int, lr: float, stage: str, history: list[dict]) -> None:
    """Compile with the current trainable flags and `fit` `steps` optimiser steps, one history row
    (mean loss) per 50 steps."""
    from geolabel.models.polycnn import CyclicVertexDistance, CyclicVertexLoss

    if steps <= 0:
        return
    model.compile(
        optimizer=keras.optimizers.Adam(lr), loss=CyclicVertexLoss(), metrics=[CyclicVertexDistance()]
    )
    chunk = max(1, min(50, steps))
    model.fit(batches, steps_per_epoch=chunk, epochs=math.ceil(steps / chunk), shuffle=False, verbose=0,
              callbacks=[_StageRows(stage, steps, history)])


def pretrain_artificial(
    model: Any, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0
) -> list[dict]:
    """Train the whole model on the artificial quadrilaterals for `steps` steps (history rows)."""
    history: list[dict] = []
    set_trainable(model, True, True, True)
    patch = int(model.input_shape[1])
    _fit_steps(model, artificial_batches(batch_size, patch, seed), steps, lr, "artificial", history)
    return history


def train_staged(
    model: Any,
    batches: Iterator,
    steps: int,
    decoder_frozen_steps: int,
    extractor_frozen_steps: int,
    lr: float = 1e-3,
) -> list[dict]:
    """PolyCNN's schedule: decoder frozen for the first steps, feature extractor for longer, then all.

    Stage 1 (steps < decoder_frozen_steps): only the encoder learns; stage 2 (until
    extractor_frozen_steps): encoder and decoder; stage 3: everything.
    """
    if not 0 <= decoder_frozen_steps <= extractor_frozen_steps:
        raise InputError("decoder_frozen_steps", "must be >= 0 and <= extractor_frozen_steps")
    history: list[dict] = []
    bounds = [min(decoder_frozen_steps, steps), min(extractor_frozen_steps, steps), steps]
    stages = [
        ("encoder-only", (False, True, False)),
        ("extractor-frozen", (False, True, True)),
        ("all", (True, True, True)),
    ]
    previous = 0
    for end, (name, flags) in zip(bounds, stages, strict=True):
        set_trainable(model, *flags)
        _fit_steps(model, batches, end - previous, lr, name, history)
        previous = end
    set_trainable(model, True, True, True)
    return history


def train_polycnn(config: PolyCNNConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the whole recipe and write a run folder: config.yaml, model.keras, history.csv, metrics.json.

    Artificial pre-training, then the staged schedule on the train scenes' quadrilateral
    buildings, then the held-out scenes' mean polygon IoU and vertex-distance curve.
    """
    import keras

    from geolabel.config import dump_config
    from geolabel.models.polycnn import CyclicVertexLoss, build_polycnn

    for scene in [*config.train, *config.val]:
        scene.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", dump_config(config))
    keras.utils.set_random_seed(config.seed)

    t0 = time.perf_counter()
    train = [load_scene(s, config.zoom, config.tolerance_m) for s in config.train]
    val = [load_scene(s, config.zoom, config.tolerance_m) for s in config.val]
    parts = [
        scene_examples(s, config.copies, config.patch, config.margin, config.jitter, config.seed + i)
        for i, s in enumerate(train)
    ]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    data_s = time.perf_counter() - t0

    history: list[dict] = []
    model = build_polycnn(config.patch, width=config.width, feature_weights=config.feature_weights)
    if config.pretrain_steps > 0:
        pre = build_polycnn(config.patch, width=config.width, feature_weights=config.feature_weights)
        history += pretrain_artificial(pre, config.pretrain_steps, config.batch_size, config.lr, config.seed)
        if config.transfer == "all":
            model.set_weights(pre.get_weights())
        else:
            model.get_layer("decoder").set_weights(pre.get_layer("decoder").get_weights())
    history += train_staged(
        model,
        augmented_batches(x_train, y_train, config.batch_size, config.seed),
        config.steps,
        config.decoder_frozen_steps,
        config.extractor_frozen_steps,
        config.lr,
    )
    train_s = time.perf_counter() - t0 - data_s

    scores = score_quads(
        [q for s in val for q in s.quads], [r for s in val for r in regress_scene(model, s, config.margin)]
    )
    metrics = {
        "val_scenes": [s.name for s in val],
        "train_scenes": [s.name for s in train],
        "train_quadrilaterals": int(sum(len(s.quads) for s in train)),
        "train_buildings": int(sum(s.buildings for s in train)),
        "val_buildings": int(sum(s.buildings for s in val)),
        "train_examples": int(len(x_train)),
        "data_seconds": round(data_s, 1),
        "train_seconds": round(train_s, 1),
        "val": scores.summary(),
    }
    model.compile(loss=CyclicVertexLoss())
    with atomic_path(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["stage", "step", "loss", "seconds"])
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(out / "history.csv", buf.getvalue())
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
