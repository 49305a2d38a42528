"""Training: the tf.data input pipeline, learning-rate schedules and the run-folder training loop."""

from geolabel.train.trainer import TrainConfig, load_run, load_run_config, train, train_two_stage

__all__ = ["TrainConfig", "load_run", "load_run_config", "train", "train_two_stage"]
