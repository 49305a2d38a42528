"""Cyclical learning-rate schedules (replacing tensorflow-addons' CyclicalLearningRate).

Both are `keras.optimizers.schedules.LearningRateSchedule`s of the optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="geolabel")
class TriangularCyclicalLR(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's triangular cyclical learning rate.

    The rate climbs linearly from `min_lr` to `max_lr` over `step_size` steps and back,
    every cycle; with `decay` < 1 each cycle's amplitude is multiplied by it
    ("triangular2" is decay 0.5).

    Args:
        min_lr: lower bound.
        max_lr: upper bound of the first cycle.
        step_size: steps of half a cycle.
        decay: amplitude factor per cycle.
    """

    def __init__(self, min_lr: float, max_lr: float, step_size: int, decay: float = 1.0):
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr)
        self.step_size = int(step_size)
        self.decay = float(decay)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cycle = ops.floor(1.0 + step / (2.0 * self.step_size))
        x = ops.abs(step / self.step_size - 2.0 * cycle + 1.0)
        amplitude = (self.max_lr - self.min_lr) * ops.power(self.decay, cycle - 1.0)
        return self.min_lr + amplitude * ops.maximum(0.0, 1.0 - x)

    def get_config(self) -> dict[str, Any]:
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "step_size": self.step_size, "decay": self.decay}


@keras.saving.register_keras_serializable(package="geolabel")
class OneCycleLR(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle policy: cosine warm-up from `max_lr/div_factor` to `max_lr`, then cosine decay
    to `max_lr/final_div_factor` at `total_steps`; constant after that.

    Args:
        max_lr: peak rate.
        total_steps: length of the cycle.
        pct_start: fraction of the cycle spent warming up.
        div_factor: initial rate = max_lr / div_factor.
        final_div_factor: final rate = max_lr / final_div_factor.
    """

    def __init__(
        self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4
    ):
        self.max_lr = float(max_lr)
        self.total_steps = max(int(total_steps), 2)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        warm = max(self.pct_start * self.total_steps, 1.0)
        start, peak, end = self.max_lr / self.div_factor, self.max_lr, self.max_lr / self.final_div_factor

        def cosine(a, b, t):
            return b + (a - b) * 0.5 * (1.0 + ops.cos(math.pi * ops.clip(t, 0.0, 1.0)))

        up = cosine(start, peak, step / warm)
        down = cosine(peak, end, (step - warm) / max(self.total_steps - warm, 1.0))
        return ops.where(step < warm, up, down)

    def get_config(self) -> dict[str, Any]:
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }


@keras.saving.register_keras_serializable(package="geolabel")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`scale` x `base(step + offset)`: a second optimizer's rate that follows the main schedule.

    Used for the encoder during fine-tuning: its optimizer only starts counting steps
    once the encoder is unfrozen, hence the `offset`.

    Args:
        base: the main schedule (or a constant rate).
        scale: factor on the base rate.
        offset: steps added to this optimizer's own step count.
    """

    def __init__(self, base, scale: float = 1.0, offset: int = 0):
        if isinstance(base, dict):
            base = keras.optimizers.schedules.deserialize(base)
        self.base = base
        self.scale = float(scale)
        self.offset = int(offset)

    def __call__(self, step):
        step = ops.cast(step, "float32") + float(self.offset)
        base = self.base(step) if callable(self.base) else self.base
        return self.scale * base

    def get_config(self) -> dict[str, Any]:
        base = keras.optimizers.schedules.serialize(self.base) if callable(self.base) else self.base
        return {"base": base, "scale": self.scale, "offset": self.offset}


@keras.saving.register_keras_serializable(package="geolabel")
class ClockSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`base` evaluated at an externally driven position instead of the optimizer's own step.

    The trainer advances `clock` to max(steps done, fraction of the time budget used x
    total steps), so a one-cycle schedule still completes when a wall-clock budget ends
    training before the planned number of steps.

    Args:
        base: the schedule to evaluate.
        clock: a scalar float variable holding the position (in steps).
    """

    def __init__(self, base, clock=None):
        if isinstance(base, dict):
            base = keras.optimizers.schedules.deserialize(base)
        self.base = base
        self.clock = clock if clock is not None else keras.Variable(0.0, trainable=False, name="lr_clock")

    def __call__(self, step):
        return self.base(ops.convert_to_tensor(self.clock)) if callable(self.base) else self.base

    def get_config(self) -> dict[str, Any]:
        return {"base": keras.optimizers.schedules.serialize(self.base) if callable(self.base) else self.base}


def make_schedule(kind: str, lr: float, total_steps: int, min_lr: float | None = None, cycle_steps: int | None = None):
    """A schedule by name: "constant", "onecycle" (peak `lr`) or "triangular" (`min_lr`..`lr`)."""
    from geolabel.errors import InputError

    if kind == "constant":
        return float(lr)
    if kind == "onecycle":
        return OneCycleLR(lr, total_steps)
    if kind == "triangular":
        half = cycle_steps or max(total_steps // 8, 1)
        return TriangularCyclicalLR(min_lr if min_lr is not None else lr / 10, lr, half)
    raise InputError("--schedule", f"unknown schedule {kind!r}; use constant, onecycle or triangular")
