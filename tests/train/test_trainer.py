"""The training loop and its run folder, on real chips (tiny widths, a few steps)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geolabel.errors import InputError
from geolabel.models import MODELS
from geolabel.models import load_model
from geolabel.train import TrainConfig, load_run_config, train, train_two_stage


def tiny(dataset: Path, **overrides) -> TrainConfig:
    base = TrainConfig(
        model="unet", model_config={"depth": 2, "width": 4, "norm": "none"}, train=[str(dataset)],
        crop=32, batch_size=2, epochs=2, steps_per_epoch=2, val_steps=2, lr=3e-3, seed=0,
    )
    return replace(base, **overrides)


def test_run_folder_contents_and_load_model(austin_dataset, tmp_path):
    run = tmp_path / "run"
    metrics = train(tiny(austin_dataset), run)
    for name in ("config.yaml", "model.keras", "history.csv", "curves.png", "metrics.json"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("ckpt-2.index"))
    assert list((run / "logs").iterdir()), "TensorBoard event file"
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,loss,iou") and len(rows) == 3
    assert metrics["steps"] == 4 and 0 <= metrics["val_iou"] <= 1
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] in (1, 2)
    model = load_model(run)
    out = np.asarray(model(np.zeros((1, 32, 64, 3), "float32")))
    assert out.shape == (1, 32, 64, 2)
    assert load_run_config(run) == tiny(austin_dataset)
    with pytest.raises(InputError, match="already holds a run"):
        train(tiny(austin_dataset), run)


def test_resume_continues_from_the_last_epoch(austin_dataset, tmp_path):
    run = tmp_path / "run"
    config = tiny(austin_dataset, epochs=1, schedule="constant")
    train(config, run)
    first = load_model(run).get_weights()
    # resuming needs the same configuration: a finished 1-epoch run resumes to no new epoch
    metrics = train(config, run, resume=True)
    assert metrics["steps"] == 2 and metrics["epochs_run"] == 1
    for a, b in zip(first, load_model(run).get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="different configuration"):
        train(replace(config, lr=1.0), run, resume=True)


def test_interrupted_run_resumes_with_restored_state(austin_dataset, tmp_path):
    run = tmp_path / "run"
    config = tiny(austin_dataset, epochs=3, time_limit_s=0.0)
    train(config, run)  # stops after its first step (time limit), like an interrupted run
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert len(state["history"]) == 1
    (run / "model.keras").unlink()
    metrics = train(replace(config, time_limit_s=None), run, resume=True)
    assert metrics["epochs_run"] == 3 and metrics["steps"] == 1 + 2 * 2


def test_early_stopping_on_val_iou(austin_dataset, tmp_path):
    config = tiny(austin_dataset, epochs=5, lr=1e-12, schedule="constant", patience=1)
    metrics = train(config, tmp_path / "run")
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] == 1


def test_two_stage_freezes_encoder_then_finetunes(austin_dataset, tmp_path):
    pre = tiny(austin_dataset, epochs=1)
    fine = tiny(austin_dataset, epochs=1, freeze_encoder_steps=100, encoder_lr_scale=0.1, lr=1e-2)
    metrics = train_two_stage(pre, fine, tmp_path / "run")
    assert "pretrain" in metrics and (tmp_path / "run" / "pretrain" / "model.keras").is_file()
    before, after = load_model(tmp_path / "run" / "pretrain"), load_model(tmp_path / "run")
    for layer in before.layers:
        if not layer.weights:
            continue
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), after.get_layer(layer.name).get_weights()))
        assert same == (layer.name == "encoder"), layer.name
    assert load_run_config(tmp_path / "run").init == str(tmp_path / "run" / "pretrain")


def test_encoder_moves_once_its_frozen_steps_are_done(austin_dataset, tmp_path):
    pre = tiny(austin_dataset, epochs=1)
    train(pre, tmp_path / "pre")
    encoders = {}
    for frozen in (2, 1):  # all of the 2 steps frozen, then only the first
        fine = tiny(austin_dataset, epochs=1, freeze_encoder_steps=frozen, init=str(tmp_path / "pre"), lr=1e-2)
        train(fine, tmp_path / f"fine{frozen}")
        encoders[frozen] = load_model(tmp_path / f"fine{frozen}").get_layer("encoder").get_weights()
    start = load_model(tmp_path / "pre").get_layer("encoder").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(start, encoders[2]))
    assert not all(np.array_equal(a, b) for a, b in zip(start, encoders[1]))


def test_mixed_precision_and_downsampled_training_save_a_float32_full_resolution_model(austin_dataset, tmp_path):
    config = tiny(austin_dataset, epochs=1, precision="bfloat16", downsample=2, crop=32, cache=True)
    train(config, tmp_path / "run")
    model = load_model(tmp_path / "run")
    out = np.asarray(model(np.full((1, 64, 64, 3), 90.0, "float32")))
    assert out.dtype == np.float32 and out.shape == (1, 64, 64, 2)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stride"] == 8 and metrics["precision"] == "bfloat16"


def test_bad_options_name_the_input(austin_dataset, tmp_path):
    with pytest.raises(InputError, match="--crop"):
        train(tiny(austin_dataset, crop=30), tmp_path / "a")
    with pytest.raises(InputError, match="--optimizer"):
        train(tiny(austin_dataset, optimizer="rmsprop"), tmp_path / "b")
    with pytest.raises(InputError, match="--precision"):
        train(tiny(austin_dataset, precision="half"), tmp_path / "d")
    with pytest.raises(InputError, match="chip shards"):
        train(tiny(tmp_path), tmp_path / "c")


def test_mirrored_strategy_on_two_logical_cpus(austin_dataset, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from geolabel.train.trainer import TrainConfig, choose_strategy, train
        strategy = choose_strategy()
        assert strategy.num_replicas_in_sync == 2, strategy
        config = TrainConfig(model="unet", model_config={{"depth": 2, "width": 4}}, train=[{str(austin_dataset)!r}],
                             crop=32, batch_size=4, epochs=1, steps_per_epoch=2, val_steps=2)
        metrics = train(config, {str(tmp_path / "run")!r})
        print("REPLICAS", strategy.num_replicas_in_sync, "STEPS", metrics["steps"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REPLICAS 2 STEPS 2" in done.stdout



@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_model_family_shows_its_encoder_to_the_freeze_schedule(family):
    """Each registered family builds its encoder as a nested sub-model (what the freeze schedule holds
    still), neither empty (the trainer refuses that) nor the whole model, whatever the model's name."""
    from geolabel.models import build_model, encoder_of

    model = MODELS[family](2, name="renamed")
    encoder = {id(v) for v in encoder_of(model).trainable_weights}
    assert 0 < len(encoder) < len(model.trainable_weights)
