"""`geolabel train` and `geolabel models` (the click shells)."""

from __future__ import annotations

import json

import numpy as np

from click.testing import CliRunner

from geolabel.cli import cli
from geolabel.models import load_model
from geolabel.train import load_run_config, preset_config


def invoke(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_models_lists_the_registry_with_costs():
    out = invoke(["models", "--size", "64"])
    for name in ("fcn", "mlp", "unet", "ternaus"):
        assert any(line.startswith(name) for line in out.splitlines()), out
    assert "kFLOP/px" in out


def test_train_command_writes_a_run(austin_dataset, tmp_path):
    run = tmp_path / "run"
    out = invoke([
        "train", "--preset", "none", "--model", "unet", "--model-option", "depth=2", "--model-option", "width=4",
        "--train", str(austin_dataset), "--out", str(run), "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "2", "--crop", "32", "--lr", "0.003", "--schedule", "triangular",
    ])
    assert "run folder" in out
    config = load_run_config(run)
    assert config.model_config == {"depth": 2, "width": 4} and config.schedule == "triangular"
    assert load_model(run).name == "unet"
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


def test_train_with_only_data_runs_the_buildings_preset(austin_dataset, tmp_path):
    import yaml

    from geolabel.train import preset_config
    from geolabel.train.trainer import preset_path

    run = tmp_path / "run"
    invoke(["train", "--train", str(austin_dataset), "--out", str(run), "--epochs", "1", "--steps-per-epoch", "1"])
    config = load_run_config(run)
    recipe = yaml.safe_load(preset_path("buildings").read_text())
    assert config == preset_config("buildings", train=[str(austin_dataset)], epochs=1, steps_per_epoch=1)
    assert all(getattr(config, key) == value for key, value in recipe.items() if key not in ("epochs", "steps_per_epoch"))
    assert (config.model, config.downsample, config.scene_norm, config.precision) == ("mlp", 4, True, "auto")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision"] in ("bfloat16", "float32")


def test_config_file_overrides_the_preset_and_flags_override_the_file(austin_dataset, tmp_path):
    from geolabel.train import preset_config

    config_file = tmp_path / "train.yaml"
    config_file.write_text("crop: 64\nlr: 0.01\n")
    config = preset_config("buildings", config_file, lr=0.02)
    assert (config.model, config.crop, config.lr) == ("mlp", 64, 0.02)
    assert preset_config("none").model == "unet"  # the bare TrainConfig defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("crops: 64\n")
    from geolabel.cli import main

    import pytest

    for args in (["--preset", "nope"], ["--config", str(bad)]):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *args, "--train", str(austin_dataset), "--out", str(tmp_path / "r")])
        assert exit_info.value.code == 2


def test_scene_norm_run_is_predicted_with_its_scene_standardised(austin_dataset, shared_data, tmp_path):
    import rasterio

    run = tmp_path / "run"
    invoke([
        "train", "--preset", "none", "--model", "unet", "--model-option", "depth=2", "--model-option", "width=4",
        "--train", str(austin_dataset), "--out", str(run), "--epochs", "1", "--steps-per-epoch", "1",
        "--batch-size", "2", "--crop", "32", "--scene-norm", "--no-scene-contrast",
    ])
    config = load_run_config(run)
    assert config.scene_norm and not config.scene_contrast
    image = shared_data / "inria-austin" / "image.tif"
    for flags, expected in (([], True), (["--no-scene-norm"], False)):
        out = tmp_path / f"pred-{expected}"
        invoke(["predict", str(run), str(image), "--out", str(out), "--window", "512", *flags])
        with rasterio.open(out / "classes.tif") as src:
            assert ("scene_band_stats" in src.tags()) is expected
            if expected:  # the means are matched, the scene's contrast is kept
                assert json.loads(src.tags()["scene_band_stats"])["std"] == [48.0] * 3


def test_bad_model_option_is_a_one_line_error(austin_dataset, tmp_path):
    from geolabel.cli import main

    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "unet", "--model-option", "width", "--train", str(austin_dataset), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2


def test_init_pretrained_fine_tunes_the_shipped_model_with_the_finetune_preset(austin_dataset, tmp_path):
    from geolabel.train import preset_config

    run = tmp_path / "run"
    invoke(["train", "--init", "pretrained", "--train", str(austin_dataset), "--out", str(run),
            "--epochs", "1", "--steps-per-epoch", "2"])
    from geolabel.cli.train import ARCHITECTURE

    config = load_run_config(run)
    shipped = load_run_config("pretrained")  # the architecture comes from the model it starts from
    assert config == preset_config("finetune", init="pretrained", train=[str(austin_dataset)], epochs=1, steps_per_epoch=2,
                                   **{key: getattr(shipped, key) for key in ARCHITECTURE})
    buildings = preset_config("buildings")
    assert (config.lr, config.time_limit_s) == (0.001, 300) and buildings.lr > config.lr
    assert config.crop == buildings.crop
    tuned, shipped = load_model(run).get_weights(), load_model("pretrained").get_weights()
    assert all(a.shape == b.shape for a, b in zip(tuned, shipped))
    assert any(not np.array_equal(a, b) for a, b in zip(tuned, shipped))
    assert max(float(np.abs(a - b).max()) for a, b in zip(tuned, shipped)) < 0.05  # adjusted, not relearnt


def test_a_config_value_of_the_wrong_type_is_one_line_naming_file_and_option(austin_dataset, tmp_path, capsys):
    import pytest

    from geolabel.cli import main

    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("lr: fast\nepochs: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config_file), "--train", str(austin_dataset), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"Error: {config_file}: lr: input should be a valid number, unable to parse string as a number (got 'fast')")
    assert not (tmp_path / "run").exists()
    assert preset_config("buildings", lr="0.01").lr == 0.01  # numbers as text, as flags give them, are fine


def test_a_bad_option_value_names_the_flag_or_the_file_it_came_from(tmp_path):
    import pytest

    from geolabel.errors import InputError

    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("crop: 0\nlr: 0.01\n")
    with pytest.raises(InputError, match=f"^{config_file}: crop: must be >= 1$"):
        preset_config("buildings", config_file)
    with pytest.raises(InputError, match="^--crop: must be >= 1$"):
        preset_config("buildings", crop=0)
    assert preset_config("buildings", config_file, crop=64).crop == 64  # the flag mends the file
