"""`geolabel train` and `geolabel models` (the click shells)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from geolabel.cli import cli
from geolabel.train import load_run, load_run_config


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
        "train", "--model", "unet", "--model-option", "depth=2", "--model-option", "width=4",
        "--train", str(austin_dataset), "--out", str(run), "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "2", "--crop", "32", "--lr", "0.003", "--schedule", "triangular",
    ])
    assert "run folder" in out
    config = load_run_config(run)
    assert config.model_config == {"depth": 2, "width": 4} and config.schedule == "triangular"
    assert load_run(run).name == "unet"
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


def test_scene_norm_run_is_predicted_with_its_scene_standardised(austin_dataset, shared_data, tmp_path):
    import rasterio

    run = tmp_path / "run"
    invoke([
        "train", "--model", "unet", "--model-option", "depth=2", "--model-option", "width=4",
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
