"""The training run behind `geolabel train`: one run folder per training.

Run folder: `config.yaml`, `model.keras` (best epoch on validation IoU), `history.csv`,
`curves.png`, `metrics.json`, `checkpoints/` (model + optimizer state every epoch, for
`--resume`), `logs/` (TensorBoard). The loop is Keras' `Model.fit` over a
`geolabel.train.task.SegmentationTask`; the callbacks here keep the time budget and the
run folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.config import dump_config, load_config
from geolabel.data.imagery import InputScaling
from geolabel.errors import InputError
from geolabel.precision import PRECISIONS
from geolabel.pretrained import resolve_run
from geolabel.progress import logger


@dataclass
class TrainConfig:
    """Everything one training run needs (the run folder's `config.yaml`).

    Args:
        model: registry name (`geolabel.models.MODELS`).
        model_config: builder options (e.g. {"depth": 4, "width": 32, "downsample": 2}).
        classes: class names, background first.
        train: dataset folders (or folders of shards) for training.
        val: dataset folders for validation (default: the `val` split of `train`).
        crop: training crop side in pixels (multiple of the model stride).
        val_crop: validation crop side (default: `crop`).
        batch_size: global batch size.
        epochs: maximum number of epochs.
        steps_per_epoch: optimizer steps per epoch.
        val_steps: validation batches per epoch (None: the whole val split).
        optimizer: "adamw" or "sgd".
        lr: (peak) learning rate.
        min_lr: lower rate of the triangular schedule (default lr / 10).
        schedule: "onecycle", "triangular" or "constant".
        weight_decay: AdamW decoupled decay / SGD weight decay.
        momentum: SGD momentum.
        loss: "ce", "jaccard" or "ce_jaccard".
        label_bootstrap: weight of the labels in the cross-entropy target (< 1: hard
            bootstrapping, robust to buildings missing from OSM; `geolabel.losses.cross_entropy`).
        class_weights: cross-entropy weight per class.
        jitter: photometric jitter strength (0 = off).
        d4: random dihedral transforms.
        zoom: largest random zoom of training crops (1 = off; e.g. 2 = 0.5x to 2x).
        hue: largest random hue rotation (fraction of the colour circle; None: 0.04 x jitter).
        grayscale: probability of a grey training crop.
        balance: sample training datasets equally often.
        precision: compute precision (`geolabel.precision`): "auto" = bfloat16 on CPUs with
            bf16 units, float16 with loss scaling on GPUs, float32 elsewhere.
        seed: seed of weights, data order and augmentation.
        patience: stop after this many epochs without a better val IoU (None: never).
        freeze_encoder_steps: encoder weights held still for the first N steps.
        encoder_lr_scale: encoder learning rate = this x the schedule.
        init: run folder whose model initialises this one (fine-tuning).
        time_limit_s: wall-clock training budget: the learning-rate schedule advances on the
            larger of steps done and budget used, and training stops (after validating) when
            either runs out, so the schedule always completes.
        iou_class: class whose IoU drives early stopping and the best checkpoint.
        downsample: train at a coarser resolution: chips are area-averaged by this factor
            in the input pipeline (`crop` and `val_crop` are in coarse pixels), and the saved
            `model.keras` contains the factor (average pooling in, bilinear upsampling out),
            so it still takes pixels at the dataset's resolution.
        cache: keep decoded chips in memory (datasets that fit in RAM).
        scene_norm: map each dataset's band statistics to one reference
            (`geolabel.data.standardize`), so colour differences between cities matter less;
            `geolabel predict` then standardises the input raster the same way.
        scene_contrast: with `scene_norm`, also match each band's standard deviation (False:
            shift the band means only, keeping each scene's contrast).
    """

    model: str = "unet"
    model_config: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["background", "building"])
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    crop: int = 256
    val_crop: int | None = None
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 100
    val_steps: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float | None = None
    schedule: str = "onecycle"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    loss: str = "ce_jaccard"
    label_bootstrap: float = 1.0
    class_weights: list[float] | None = None
    jitter: float = 1.0
    d4: bool = True
    zoom: float = 1.0
    hue: float | None = None
    grayscale: float = 0.0
    balance: bool = True
    precision: str = "auto"
    seed: int = 0
    patience: int | None = None
    freeze_encoder_steps: int = 0
    encoder_lr_scale: float = 1.0
    init: str | None = None
    time_limit_s: float | None = None
    iou_class: int = 1
    downsample: int = 1
    cache: bool = False
    scene_norm: bool = False
    scene_contrast: bool = True

    def __post_init__(self) -> None:
        """Checked when made, so a bad option fails before any data is read."""
        for name in ("crop", "batch_size", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}", "must be >= 1")
        if self.lr <= 0:
            raise InputError("--lr", "must be > 0")
        if self.downsample < 1:
            raise InputError("--downsample", "must be >= 1")
        if not 0 <= self.iou_class < len(self.classes):
            raise InputError("iou_class", f"{self.iou_class} is not a class index of {self.classes}")
        if self.precision not in PRECISIONS:
            raise InputError("--precision", f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.downsample > 1 and self.model_config.get("downsample", 1) != 1:
            raise InputError("--downsample", "give the factor either to the trainer or in model_config, not both")


PRESETS = Path(__file__).parent / "presets"
DEFAULT_PRESET = "buildings"
"""The recipe `geolabel train` uses when no --preset is given."""


def preset_path(name: str = DEFAULT_PRESET) -> Path:
    """The YAML file of the named training preset (`geolabel/train/presets/NAME.yaml`)."""
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise InputError("--preset", f"unknown preset {name!r}; available: {known}")
    return path


def _preset_values(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    import yaml

    if name in seen:
        raise InputError("--preset", f"preset {name!r} extends itself ({' -> '.join((*seen, name))})")
    values = yaml.safe_load(preset_path(name).read_text(encoding="utf-8")) or {}
    base = values.pop("extends", None)
    return {**(_preset_values(base, (*seen, name)) if base else {}), **values}


def preset_config(name: str | None = DEFAULT_PRESET, config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """`TrainConfig` of preset `name` (None or "none": the bare `TrainConfig` defaults), then the
    fields set in `config_file`, then non-None `overrides`.

    A preset may start from another with `extends: NAME` and change only what differs.
    """
    preset = _preset_values(name) if name not in (None, "none") else {}
    return load_config(TrainConfig, config_file, values=preset, **overrides)


def choose_strategy():
    """Mirrored over all GPUs (or over several logical CPUs when configured), else the default."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()


def _optimizer(config: TrainConfig, lr):
    import keras

    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, weight_decay=config.weight_decay or None)
    raise InputError("--optimizer", f"unknown optimizer {config.optimizer!r}; use adamw or sgd")


INPUT_FILE = "input.json"
"""Run file: how the training imagery became chips (`geolabel.data.imagery.InputScaling`)."""


def load_run_input(run_dir: str | Path) -> InputScaling | None:
    """The input scaling a run was trained with, for predict to apply; None for runs without one
    (8-bit or chip-only training data, bare model files)."""
    path = resolve_run(run_dir) / INPUT_FILE
    return InputScaling.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _input_scaling(datasets: list[str], channels: int) -> InputScaling | None:
    """The scaling of the training datasets that have a manifest (`geolabel fetch` wrote them)."""
    manifests = [json.loads(p.read_text()) for p in (Path(d) / "manifest.json" for d in datasets) if p.is_file()]
    return InputScaling.of_datasets(manifests, channels) if manifests else None


def _check_same_data(run_dir: Path, started: dict[str, str] | None, now: dict[str, str]) -> None:
    """InputError unless the datasets hold what they held when the run started (`dataset_fingerprint`):
    resuming on changed data would train one run on two datasets. Runs from before fingerprints pass."""
    changed = [d for d in now if started is not None and started.get(d) != now[d]]
    if changed:
        raise InputError(run_dir, f"--resume on changed data: {', '.join(changed)} is not the dataset the run "
                                  "started on (re-fetched or edited since); train into a new folder")


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The `TrainConfig` a run folder was trained with."""
    path = resolve_run(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "not a run folder (no config.yaml)")
    return load_config(TrainConfig, path)


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train `config` into `run_dir`; returns the validation metrics written to `metrics.json`.

    With `resume`, continues from the last epoch checkpoint of `run_dir` (the config
    must be the same). Data order after a resume is reseeded per epoch, so it is
    deterministic but not identical to an uninterrupted run.
    """
    import keras
    import tensorflow as tf

    from geolabel.data.standardize import BandStats, chips_band_stats
    from geolabel.precision import dtype_policy, resolve_precision
    from geolabel.losses import get_loss
    from geolabel.models import build_model, encoder_of, load_model, stride_of
    from geolabel.train.dataset import dataset_fingerprint, dataset_shards, make_dataset
    from geolabel.train.schedules import ClockSchedule, ScaledSchedule, make_schedule
    from geolabel.train.callbacks import RunRecorder, TrainingClock
    from geolabel.train.task import SegmentationTask

    if not config.train:
        raise InputError("--train", "no training dataset given")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    state_path = ckpt_dir / "state.json"
    fingerprints = {str(d): dataset_fingerprint(d) for d in dict.fromkeys([*config.train, *config.val])}
    if resume:
        if not state_path.is_file():
            raise InputError(run_dir, "nothing to resume (no checkpoints/state.json)")
        saved = load_run_config(run_dir)
        if dump_config(replace(saved, time_limit_s=None)) != dump_config(replace(config, time_limit_s=None)):
            raise InputError(run_dir, "--resume with a different configuration than the run's config.yaml")
        _check_same_data(run_dir, json.loads(state_path.read_text()).get("datasets"), fingerprints)
    elif (run_dir / "model.keras").exists() or state_path.exists():
        raise InputError(run_dir, "run folder already holds a run (use --resume or another folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))

    train_shards = [dataset_shards(d, "train") for d in config.train]
    val_sources = config.val or config.train
    val_shards: list[list[Path]] = []
    for d in val_sources:
        try:
            val_shards.append(dataset_shards(d, "val"))
        except InputError:
            if config.val:
                raise

    def scene_stats(shards: list[Path]) -> BandStats:
        return chips_band_stats(shards).with_contrast(config.scene_contrast)

    train_stats = [scene_stats(s) for s in train_shards] if config.scene_norm else None
    val_stats = [scene_stats(s) for s in val_shards] if config.scene_norm else None
    num_classes = len(config.classes)

    previous_policy = keras.config.dtype_policy()
    strategy = choose_strategy()
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    precision = resolve_precision(config.precision, on_gpu)
    keras.config.set_dtype_policy(dtype_policy(precision))
    keras.utils.set_random_seed(config.seed)
    total_steps = config.epochs * config.steps_per_epoch
    try:
        with strategy.scope():
            model = build_model(config.model, num_classes, **config.model_config)
            if config.init:
                source = load_model(config.init)
                if len(source.weights) != len(model.weights) or any(
                    tuple(a.shape) != tuple(b.shape) for a, b in zip(source.weights, model.weights)
                ):
                    raise InputError(config.init, f"its model does not match {config.model} {config.model_config}")
                model.set_weights(source.get_weights())
            stride = stride_of(model)
            val_crop = config.val_crop or config.crop
            for name, size in (("--crop", config.crop), ("--val-crop", val_crop)):
                if size % stride:
                    raise InputError(name, f"{size} is not a multiple of the model stride {stride}")
            clock = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="lr_clock")
            schedule = ClockSchedule(make_schedule(config.schedule, config.lr, total_steps, config.min_lr), clock)
            split = config.freeze_encoder_steps > 0 or config.encoder_lr_scale != 1.0
            encoder = encoder_of(model)
            if split and (encoder is None or not encoder.trainable_weights):
                # a freeze schedule that finds no encoder would silently train it all
                raise InputError("freeze_encoder_steps / encoder_lr_scale",
                                 f"model {model.name!r} has no 'encoder' sub-model to hold still (models saved "
                                 "before encoders were sub-models: retrain or rebuild them)")
            encoder_vars = list(encoder.trainable_weights) if split else []
            encoder_optimizer = _optimizer(config, ScaledSchedule(schedule, config.encoder_lr_scale)) if split else None
            optimizer = _optimizer(config, schedule)
            if precision == "float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            task = SegmentationTask(model, get_loss(config.loss, config.class_weights, bootstrap=config.label_bootstrap),
                                    num_classes, config.iou_class, encoder_vars, encoder_optimizer)
            # XLA off: TF's oneDNN kernels are the ones that use the CPU's bf16 units
            task.compile(optimizer=optimizer, jit_compile=False)
            optimizer.build(task.other_variables)
            if encoder_optimizer is not None:
                encoder_optimizer.build(encoder_vars)
            epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
            checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, step=step_var)
            if encoder_optimizer is not None:
                checkpoint.encoder_optimizer = encoder_optimizer
        manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=2)
        scaling = _input_scaling(config.train, int(model.input_shape[-1]))
        if scaling is not None:
            write_text_atomic(run_dir / INPUT_FILE, json.dumps(scaling.to_dict(), indent=1) + "\n")

        state: dict[str, Any] = {"best_iou": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "train_time_s": 0.0}
        if resume:
            checkpoint.restore(manager.latest_checkpoint).expect_partial()
            state = json.loads(state_path.read_text())
            clock.assign(float(step_var.numpy()))
            logger.info("resumed %s at epoch %d", run_dir, int(epoch_var.numpy()))
        state["datasets"] = fingerprints
        start_epoch = int(epoch_var.numpy())

        # one stream across epochs (a cached dataset is decoded once); a resumed run reseeds
        # it by the epoch it restarts at: deterministic, and no iterator state to checkpoint
        ds = make_dataset(
            train_shards, config.crop, config.batch_size, True, config.seed + 7919 * start_epoch,
            jitter=config.jitter, d4=config.d4, zoom=config.zoom, hue=config.hue,
            grayscale=config.grayscale, balance=config.balance,
            downsample=config.downsample, num_classes=num_classes, cache=config.cache, band_stats=train_stats,
        )
        val_ds = None
        if val_shards:
            val_ds = make_dataset(
                val_shards, val_crop, config.batch_size, training=False, seed=config.seed,
                downsample=config.downsample, num_classes=num_classes, band_stats=val_stats,
            )
            if config.val_steps:
                val_ds = val_ds.take(config.val_steps)
        timer = TrainingClock(config, clock, int(step_var.numpy()), state["train_time_s"])
        recorder = RunRecorder(config, run_dir, state, timer, schedule, manager, epoch_var, step_var)
        task.fit(ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, initial_epoch=start_epoch,
                 validation_data=val_ds, callbacks=[timer, recorder], shuffle=False, verbose=0)

        if (ckpt_dir / "best.weights.h5").is_file():
            model.load_weights(ckpt_dir / "best.weights.h5")
        # the saved model computes in float32 whatever the training precision was
        keras.config.set_dtype_policy("float32")
        final_config = dict(config.model_config)
        if config.downsample > 1:
            final_config["downsample"] = config.downsample
        final = build_model(config.model, num_classes, **final_config)
        final.set_weights([np.asarray(w, dtype="float32") for w in model.get_weights()])
        with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
            final.save(tmp)
        best = state.get("best_row", {})
        metrics = {
            "best_epoch": state["best_epoch"],
            "epochs_run": len(state["history"]),
            "steps": timer.step,
            "train_time_s": state["train_time_s"],
            "selected_on": "val_iou" if val_shards else "iou (no val split)",
            **{k: v for k, v in best.items() if k.startswith("val_")},
            "train_iou_at_best": best.get("iou"),
            "classes": config.classes,
            "iou_class": config.classes[config.iou_class],
            "stride": stride_of(final),
            "precision": precision,
        }
        write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1))
        return metrics
    finally:
        keras.config.set_dtype_policy(previous_policy)


def train_two_stage(pretrain: TrainConfig, finetune: TrainConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Pretrain on noisy (OSM) datasets into `run_dir/pretrain`, then fine-tune into `run_dir`.

    The fine-tuning run starts from the pretrained model (`finetune.init`), so the
    top-level run folder is the final model and `geolabel.models.load_model(run_dir)` returns it.
    """
    run_dir = Path(run_dir)
    pre_dir = run_dir / "pretrain"
    if not (pre_dir / "model.keras").is_file():
        train(pretrain, pre_dir, resume=resume and (pre_dir / "checkpoints" / "state.json").is_file())
    finetune = replace(finetune, init=str(pre_dir))
    fine_resume = resume and (run_dir / "checkpoints" / "state.json").is_file()
    metrics = train(finetune, run_dir, resume=fine_resume)
    pre_metrics = json.loads((pre_dir / "metrics.json").read_text())
    metrics["pretrain"] = {k: v for k, v in pre_metrics.items() if k.startswith("val_") or k in ("steps", "train_time_s")}
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


def remove_run(run_dir: str | Path) -> None:
    """Delete a run folder (used by benchmarks that retrain from scratch)."""
    path = Path(run_dir)
    if path.exists():
        shutil.rmtree(path)


