"""Training: the tf.data input pipeline, learning-rate schedules and the run-folder training loop."""

from geolabel.train.trainer import (
    DEFAULT_PRESET,
    TrainConfig,
    load_run_config,
    preset_config,
    train,
    train_two_stage,
)

__all__ = ["DEFAULT_PRESET", "TrainConfig", "preset_config", "load_run_config", "train", "train_two_stage"]
