"""`run_fn` for the standard TFX Trainer (GenericExecutor): geolabel's training loop + export.

The Trainer passes the Examples splits, the budget (TrainArgs/EvalArgs and
`custom_config`) and, for fine-tuning, the pretrained `base_model`. `run_fn`:

1. trains with `geolabel.train.train` into the ModelRun folder (`fn_args.model_run_dir`:
   config.yaml, history, curves, checkpoints, TensorBoard logs);
2. keeps the Keras model in the Model artifact as `Format-Keras/model.keras` (the
   evaluator scores it, and a fine-tuning Trainer warm-starts from it via `base_model`);
3. exports the TF Serving SavedModel (`geolabel.serving.export`) to
   `fn_args.serving_model_dir`, which the Pusher copies to a versioned serving folder.

custom_config: {"stage": str, "classes": [names], "model": {"name", "options"},
"budget": BudgetConfig as a dict}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from geolabel.errors import InputError
from geolabel.pipelines.evaluation import KERAS_DIR, KERAS_FILE
from geolabel.pipelines.storage import download_file, is_remote, join, local_copies, upload_dir
from geolabel.progress import logger

# BudgetConfig fields -> TrainConfig fields (the rest of TrainConfig comes from budget["options"])
_BUDGET_KEYS = ("epochs", "batch_size", "lr")  # named as TrainConfig names them


def _split_dirs(patterns: list[str]) -> list[str]:
    """Split folders from the Trainer's file patterns (`<uri>/Split-train/*`)."""
    dirs = []
    for pattern in patterns:
        folder = pattern[:-2] if pattern.endswith("/*") else os.path.dirname(pattern)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def train_config_from_fn_args(fn_args: Any, workdir: str | os.PathLike) -> Any:
    """The `geolabel.train.TrainConfig` for this Trainer execution.

    Remote splits and a remote base model are copied under `workdir` first (geolabel's
    training reads local folders).
    """
    from geolabel.train.trainer import TrainConfig

    custom = dict(fn_args.custom_config or {})
    budget = dict(custom.get("budget") or {})
    model = dict(custom.get("model") or {})
    values: dict[str, Any] = {"model": model.get("name", "unet"), "model_config": dict(model.get("options") or {})}
    if custom.get("classes"):
        values["classes"] = list(custom["classes"])
    values.update({key: budget[key] for key in _BUDGET_KEYS if budget.get(key) is not None})
    epochs = int(values.get("epochs", 1))
    steps = budget.get("steps_per_epoch") or (fn_args.train_steps // epochs if fn_args.train_steps else None)
    if steps:
        values["steps_per_epoch"] = int(steps)
    eval_steps = budget.get("eval_steps") or fn_args.eval_steps
    if eval_steps:
        values["val_steps"] = int(eval_steps)
    values.update(budget.get("options") or {})
    workdir = Path(workdir)
    for key, patterns in (("train", list(fn_args.train_files)), ("val", list(fn_args.eval_files))):
        remote = any(is_remote(p) for p in patterns)
        values[key] = local_copies(patterns, workdir / key) if remote else _split_dirs(patterns)
    if fn_args.base_model:
        base = fn_args.base_model.rstrip("/").rsplit("/", 1)[0]
        if is_remote(base):
            init = workdir / "init"
            download_file(join(base, KERAS_DIR, KERAS_FILE), init / KERAS_FILE)
        else:
            init = Path(base) / KERAS_DIR
        if not (init / KERAS_FILE).is_file():
            raise InputError(fn_args.base_model, f"base model holds no {KERAS_DIR}/{KERAS_FILE} to warm-start from")
        values["init"] = str(init)
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError("budget.options", f"unknown training option(s) {', '.join(unknown)}")
    return TrainConfig(**values)


def export_serving(model: Any, serving_model_dir: str | os.PathLike, class_names: list[str], source: str) -> None:
    """Write the TF Serving SavedModel of `model` into `serving_model_dir` (no version level)."""
    from geolabel.serving.export import export_saved_model

    target = os.fspath(serving_model_dir)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=None if is_remote(target) else Path(target).parent))
    try:
        version_dir = export_saved_model(model, staging, 1, class_names=class_names, sources={"segmentation": source})
        if is_remote(target):
            upload_dir(version_dir, target)
        else:
            if Path(target).exists():
                shutil.rmtree(target)
            os.replace(version_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_fn(fn_args: Any) -> None:
    """TFX Trainer entry point: train, keep the Keras model, export the SavedModel."""
    from geolabel.models import load_model
    from geolabel.train import trainer

    stage = (fn_args.custom_config or {}).get("stage", "train")
    with tempfile.TemporaryDirectory(prefix=f"geolabel-{stage}-") as tmp:
        remote_run = is_remote(fn_args.model_run_dir)
        run_dir = Path(tmp) / "run" if remote_run else Path(fn_args.model_run_dir)
        config = train_config_from_fn_args(fn_args, Path(tmp) / "data")
        logger.info("Trainer %s: %s on %s (init %s)", stage, config.model, config.train, config.init)
        metrics = trainer.train(config, run_dir)
        model_uri = fn_args.serving_model_dir.rstrip("/").rsplit("/", 1)[0]
        keras_dir = Path(tmp) / "keras" if is_remote(model_uri) else Path(model_uri) / KERAS_DIR
        keras_dir.mkdir(parents=True, exist_ok=True)
        for name in (KERAS_FILE, "config.yaml", "metrics.json"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, keras_dir / name)
        if is_remote(model_uri):
            upload_dir(keras_dir, join(model_uri, KERAS_DIR))
        model = load_model(run_dir)
        export_serving(model, fn_args.serving_model_dir, list(config.classes), f"{stage}:{fn_args.model_run_dir}")
        if remote_run:
            upload_dir(run_dir, fn_args.model_run_dir)
    logger.info("Trainer %s: val metrics %s", stage, {k: v for k, v in metrics.items() if k.startswith("val_")})
