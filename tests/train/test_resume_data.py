"""`train --resume` continues only on the data the run started on: a dataset re-cut since is refused,
so one run never mixes two datasets."""

from __future__ import annotations

import pytest

from geolabel.errors import InputError
from geolabel.train import TrainConfig, train
from tests.train.conftest import write_austin_dataset


def test_resume_refuses_a_dataset_that_changed(austin_arrays, tmp_path):
    image, mask = austin_arrays
    dataset = write_austin_dataset(tmp_path / "austin", image, mask, rows=(0, 384))
    config = TrainConfig(model="unet", model_config={"depth": 2, "width": 4, "norm": "none"}, train=[str(dataset)],
                         crop=32, batch_size=2, epochs=1, steps_per_epoch=1, val_steps=1, seed=0)
    train(config, tmp_path / "run")
    assert train(config, tmp_path / "run", resume=True)["steps"] == 1  # same data: resumes (nothing left to do)
    for old in (dataset / "chips").iterdir():
        old.unlink()
    write_austin_dataset(dataset, image, mask, rows=(384, 960))  # same folder, other chips
    with pytest.raises(InputError, match=f"--resume on changed data: {dataset} is not the dataset the run started on"):
        train(config, tmp_path / "run", resume=True)
