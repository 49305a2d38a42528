"""Keras callbacks of a training run: its time budget and its run folder."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.progress import logger, progress_bar

if TYPE_CHECKING:
    from geolabel.train.trainer import TrainConfig


class _History:
    """Epoch rows -> history.csv, curves.png and TensorBoard scalars."""

    def __init__(self, run_dir: Path, rows: list[dict[str, float]]):
        import tensorflow as tf

        self.run_dir = run_dir
        self.rows = rows
        self.writer = tf.summary.create_file_writer(str(run_dir / "logs"))

    def add(self, row: dict[str, float]) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # what tensorboard's `summary.scalar` writes, without needing the tensorboard package
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        self.rows.append(row)
        with self.writer.as_default():
            for key, value in row.items():
                if key not in ("epoch", "step") and value is not None and np.isfinite(value):
                    tf.summary.write(key, tf.constant(float(value), tf.float32), step=int(row["step"]), metadata=metadata)
        self.writer.flush()
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        out = csv.DictWriter(buffer, fieldnames=keys)
        out.writeheader()
        out.writerows(self.rows)
        write_text_atomic(self.run_dir / "history.csv", buffer.getvalue())
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.rows]
        fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
        for key, ax in (("loss", ax_loss), ("val_loss", ax_loss), ("iou", ax_iou), ("val_iou", ax_iou)):
            values = [r.get(key) for r in self.rows]
            if any(v is not None and np.isfinite(v) for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=key)
        for ax, title in ((ax_loss, "loss"), (ax_iou, "IoU")):
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        with atomic_path(self.run_dir / "curves.png") as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)


class TrainingClock(keras.callbacks.Callback):
    """Counts steps and training seconds; drives the learning-rate schedule's position (the
    larger of steps done and share of the time budget used, so a one-cycle schedule completes
    either way), stops at the end of the budget, and unfreezes the encoder on time."""

    def __init__(self, config: TrainConfig, clock, step: int, train_time_s: float):
        super().__init__()
        self.config = config
        self.clock = clock
        self.total_steps = config.epochs * config.steps_per_epoch
        self.step = step
        self.train_time_s = train_time_s
        self.epoch_steps = 0
        self.epoch_seconds = 0.0
        self.bar = None

    def on_train_begin(self, logs=None) -> None:
        self.model.set_encoder_frozen(self.step < self.config.freeze_encoder_steps)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch_steps, self.epoch_seconds = 0, 0.0
        self.started = time.perf_counter()
        self.bar = progress_bar(f"epoch {epoch + 1}/{self.config.epochs}", self.config.steps_per_epoch, "step")

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.step += 1
        self.epoch_steps += 1
        self.epoch_seconds = time.perf_counter() - self.started
        self.bar.update(1)
        position = float(self.step)
        if self.config.time_limit_s is not None:
            used = self.train_time_s + self.epoch_seconds
            position = max(position, self.total_steps * used / max(self.config.time_limit_s, 1e-9))
        self.clock.assign(min(position, self.total_steps))
        if position >= self.total_steps and self.step < self.total_steps:
            logger.info("time limit %.0f s reached at step %d", self.config.time_limit_s, self.step)
            self.model.stop_training = True
        if self.step == self.config.freeze_encoder_steps:
            self.model.set_encoder_frozen(False)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.train_time_s += self.epoch_seconds
        self.bar.close()


class RunRecorder(keras.callbacks.Callback):
    """After each epoch: the history row, the best weights (on val IoU, or train IoU without a
    validation split), a checkpoint + state for `--resume`, and early stopping on `patience`."""

    SCORES = ("loss", "iou", "pixel_accuracy", "mean_iou")  # history.csv's columns, in this order

    def __init__(self, config: TrainConfig, run_dir: Path, state: dict[str, Any], clock: TrainingClock,
                 schedule, manager, epoch_var, step_var):
        super().__init__()
        self.config, self.run_dir, self.state, self.clock = config, run_dir, state, clock
        self.schedule, self.manager = schedule, manager
        self.epoch_var, self.step_var = epoch_var, step_var
        self.history = _History(run_dir, state["history"])

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        seconds = max(self.clock.epoch_seconds, 1e-9)

        def scores(prefix: str) -> dict[str, float]:
            return {prefix + k: float(logs[prefix + k]) for k in self.SCORES if prefix + k in logs}

        row: dict[str, float] = {
            "epoch": epoch + 1,
            "step": self.clock.step,
            "lr": float(self.schedule(0)),
            **scores(""),
            "steps_per_s": self.clock.epoch_steps / seconds,
            "px_per_s": self.clock.epoch_steps * self.config.batch_size * self.config.crop**2 / seconds,
            **scores("val_"),
        }
        self.history.add(row)
        logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))

        state = self.state
        score = row.get("val_iou", row["iou"])
        score = -1.0 if not np.isfinite(score) else score
        if score > state["best_iou"]:
            state.update(best_iou=score, best_epoch=epoch + 1, bad_epochs=0, best_row=row)
            with atomic_path(self.run_dir / "checkpoints" / "best.weights.h5", suffix=".weights.h5") as tmp:
                self.model.network.save_weights(tmp)
        else:
            state["bad_epochs"] += 1
        self.epoch_var.assign(epoch + 1)
        self.step_var.assign(self.clock.step)
        self.manager.save(checkpoint_number=epoch + 1)
        state.update(history=self.history.rows, train_time_s=self.clock.train_time_s)
        write_text_atomic(self.run_dir / "checkpoints" / "state.json", json.dumps(state, indent=1))
        if self.config.patience is not None and state["bad_epochs"] >= self.config.patience:
            logger.info("early stop: no better val IoU for %d epochs", self.config.patience)
            self.model.stop_training = True
