"""Training loops for the alignment, align-and-update and recurrent-refinement models.

Batches are generated on the fly from real scenes (`geolabel.align.data.make_batch`),
so every epoch sees new crops and new random misregistrations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from geolabel.align.data import Scene, load_scene, make_batch, within_image
from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.errors import InputError
from geolabel.models.align_update import AlignUpdateNet, SteppedLevelWeights
from geolabel.models.alignment import MultiscaleAligner
from geolabel.models.rnn_refine import RNNRefine
from geolabel.progress import progress_bar


class TimeLimit(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after `seconds` of training."""

    def __init__(self, seconds: float | None):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.seconds is not None and time.monotonic() - self.start > self.seconds:
            self.model.stop_training = True


class AlignmentBatches(keras.utils.PyDataset):
    """`steps` batches per epoch of synthetic misregistrations of the scenes' real polygons.

    Args:
        kind: "aligner" (x = [image, map], y = field) or "align_update"
            (y = {"displacement", "segmentation"}).
        keep_fraction: share of true polygons kept in the input map.
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        steps: int,
        batch: int,
        size: int,
        max_amplitude: float,
        kind: str = "aligner",
        keep_fraction: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        self.scenes, self.steps, self.batch, self.size = list(scenes), int(steps), int(batch), int(size)
        self.max_amplitude, self.kind, self.keep_fraction = float(max_amplitude), kind, float(keep_fraction)
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scene = self.scenes[int(rng.integers(len(self.scenes)))]
        b = make_batch(scene, self.batch, self.size, self.max_amplitude, rng, self.keep_fraction)
        x = (b["image"], b["map"])
        if self.kind == "aligner":
            return x, b["displacement"]
        return x, {"displacement": b["displacement"], "segmentation": b["segmentation"]}


def train_alignment(
    model: MultiscaleAligner | AlignUpdateNet,
    scenes: Sequence[Scene],
    epochs: int,
    steps: int,
    batch: int = 8,
    size: int = 128,
    max_amplitude: float = 8.0,
    keep_fraction: float = 1.0,
    lr: float = 1e-3,
    seed: int = 0,
    time_limit_s: float | None = None,
) -> dict[str, list[float]]:
    """Fit a MultiscaleAligner or an AlignUpdateNet on synthetic misregistrations; returns the Keras history.

    An AlignUpdateNet also learns to add the polygons dropped from its input map (1 - `keep_fraction`
    of them), with stepped level weights that advance with the epochs or the elapsed share of
    `time_limit_s`.
    """
    model.compile(optimizer=keras.optimizers.Adam(lr))
    kind = "align_update" if isinstance(model, AlignUpdateNet) else "aligner"
    data = AlignmentBatches(scenes, steps, batch, size, max_amplitude, kind, keep_fraction, seed)
    callbacks: list[keras.callbacks.Callback] = [TimeLimit(time_limit_s)]
    if kind == "align_update":
        callbacks.append(SteppedLevelWeights(epochs, steps=min(4, max(2, epochs)), time_budget_s=time_limit_s))
    return model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks).history


def train_rnn_refine(
    refine: RNNRefine,
    base_predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch: int = 8,
    lr: float = 1e-3,
    time_limit_s: float | None = None,
    validation_split: float = 0.25,
) -> dict[str, list[float]]:
    """Fit the refinement on a (small, clean) labelled set on top of a frozen base model.

    The last `validation_split` of the chips is held back: training stops when their loss
    stops improving, the best weights are kept, and the refinement falls back to the
    identity (its starting point) if it ends no better than that on them, so a few noisy
    labelled chips cannot make the base model worse.

    Args:
        base_predict: images (N, H, W, C) 0-255 -> probabilities (N, H, W, K).
        images: (N, H, W, C) float32 0-255; labels: (N, H, W) int class ids.
    """
    probs = np.concatenate([base_predict(images[i : i + batch]) for i in range(0, len(images), batch)])
    refine.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    cut = len(images) - max(1, int(round(len(images) * validation_split)))
    val = ([images[cut:], probs[cut:]], labels[cut:])
    identity_loss = refine.evaluate(*val, batch_size=batch, verbose=0)  # also builds the model
    identity = refine.get_weights()
    best = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    history = refine.fit(
        [images[:cut], probs[:cut]], labels[:cut], batch_size=batch, epochs=epochs, verbose=0,
        validation_data=val, callbacks=[TimeLimit(time_limit_s), best],
    ).history
    if refine.evaluate(*val, batch_size=batch, verbose=0) >= identity_loss:
        refine.set_weights(identity)
    return history


@dataclasses.dataclass
class AlignerConfig:
    """Options of `geolabel align-train` (YAML keys = field names); model and training
    defaults are the alignment benchmark's."""

    downsample: int = 1
    amplitude: float = 8.0
    crop: int = 64
    filters: list[int] = dataclasses.field(default_factory=lambda: [8, 8, 16])
    focus: float = 20.0
    batch_size: int = 8
    steps: int = 10_000
    lr: float = 2e-3
    seed: int = 0


class RoundSaver(keras.callbacks.Callback):
    """After each round (an epoch of `data`): the model with its optimiser state (atomic `.keras`)
    and the run's state (`<out>.json`: config, steps, loss per round, seconds), for `--resume`.

    Each round draws its own crops and fields from its index, resumed or not.
    """

    def __init__(self, out: Path, state: dict, data: AlignmentBatches):
        super().__init__()
        self.out, self.state, self.data = out, state, data
        self.bar = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self.bar is None:
            self.bar = progress_bar("align-train", self.params["epochs"] - epoch, "round")
        self.data.epoch = epoch
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.state["steps"] += self.data.steps
        self.state["loss"].append(float(logs["loss"]))
        self.state["seconds"] += time.monotonic() - self.started
        with atomic_path(self.out, suffix=".keras") as tmp:
            self.model.save(tmp)
        write_text_atomic(f"{self.out}.json", json.dumps(self.state, indent=1))
        self.bar.update(1)

    def on_train_end(self, logs=None) -> None:
        if self.bar is not None:
            self.bar.close()


def train_aligner_files(
    scenes: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    out_path: str | os.PathLike,
    config: AlignerConfig,
    resume: bool = False,
    time_limit_s: float | None = None,
    round_steps: int = 100,
) -> dict:
    """Train a MultiscaleAligner on (image, polygons) files and save it to `out_path` (.keras).

    Only polygons wholly over imagery train it (elsewhere the image shows nothing of their
    shift). The model and its optimiser state are saved atomically every `round_steps`
    steps (`config.steps` is rounded up to whole rounds) with a `<out>.json` state, so an
    interrupted run resumes where it stopped.
    Returns that state: config, steps done, loss per round, seconds.
    """
    out, state_path = Path(out_path), Path(f"{out_path}.json")
    if out.suffix != ".keras":
        raise InputError(out_path, "the aligner is saved as a Keras file: use a .keras name")
    if not scenes:
        raise InputError("--scene", "give at least one IMAGE LABELS pair")
    settings = dataclasses.asdict(config)
    if resume:  # checked before the (slow) scene reading
        if not state_path.is_file() or not out.is_file():
            raise InputError(out_path, f"nothing to resume (no {out.name} with its {state_path.name})")
        state = json.loads(state_path.read_text())
        if {**state["config"], "steps": config.steps} != settings:  # only the step count may grow
            raise InputError(state_path, "--resume with a different configuration than the saved run's")
        state["config"] = settings
        model = keras.models.load_model(out)
    else:
        state = {"config": settings, "steps": 0, "loss": [], "seconds": 0.0}
        model = MultiscaleAligner(filters=config.filters, focus=config.focus)
        model.compile(optimizer=keras.optimizers.Adam(config.lr))
    if config.crop % model.stride:
        raise InputError("crop", f"{config.crop} is not a multiple of the aligner's stride ({model.stride})")
    loaded = []
    for image, labels in scenes:
        scene = within_image(load_scene(image, labels, config.downsample))
        if not len(scene.geoms):
            raise InputError(labels, f"no polygon lies wholly over the imagery of {image}")
        if min(scene.shape) < config.crop:
            raise InputError(image, f"{scene.shape[1]}x{scene.shape[0]} px is smaller than the crop ({config.crop})")
        loaded.append(scene)
    data = AlignmentBatches(loaded, round_steps, config.batch_size, config.crop, config.amplitude, seed=config.seed)
    model.fit(data, epochs=-(-config.steps // round_steps), initial_epoch=state["steps"] // round_steps, verbose=0,
              callbacks=[RoundSaver(out, state, data), TimeLimit(time_limit_s)])
    return state
