"""The building model shipped in the package: predict with no model, resampling by resolution, its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from geolabel.cli import cli
from geolabel.errors import InputError
from geolabel.pretrained import WEIGHTS_DIR, ModelCard, model_card, pretrained_names, resolve_run


@pytest.fixture(scope="module")
def austin_crop(shared_data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 400 x 400 px corner of the Inria Austin crop (0.3 m, UTM) and its clean building mask."""
    window = rasterio.windows.Window(0, 0, 400, 400)
    path = tmp_path_factory.mktemp("austin") / "austin-0.3m.tif"
    with rasterio.open(shared_data / "inria-austin" / "image.tif") as src:
        profile = {**src.profile, "width": 400, "height": 400, "transform": src.window_transform(window),
                   "compress": "deflate", "tiled": False}
        profile.pop("blockysize", None)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    with rasterio.open(shared_data / "inria-austin" / "buildings-mask.tif") as mask:
        truth = mask.read(1, window=window) > 0
    return path, truth


def _predict(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["predict", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def _iou(classes_path: str, truth: np.ndarray) -> float:
    with rasterio.open(classes_path) as src:
        found = src.read(1) == 1
    return float((found & truth).sum() / (found | truth).sum())


def test_a_model_is_shipped_small_with_its_card():
    assert "buildings" in pretrained_names()
    folder = resolve_run("pretrained")
    assert folder == WEIGHTS_DIR / "buildings" == resolve_run("pretrained:buildings")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5e6  # a few MB at most, inside the wheel
    card = model_card("pretrained")
    assert card.resolution_range_m[0] < card.resolution_m < card.resolution_range_m[1] < card.max_input_m
    assert "OpenStreetMap" in card.attribution and "OpenAerialMap" in card.attribution and card.license == "ODbL-1.0"
    with pytest.raises(InputError, match="shipped: buildings"):
        resolve_run("pretrained:roads")


def test_setup_ships_the_weights_as_package_data():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[1] / "setup.cfg")
    assert "weights/*/*" in setup["options.package_data"]["geolabel"]


def test_card_resamples_only_outside_its_range_and_refuses_far_coarser_inputs():
    card = model_card("pretrained")
    assert card.resampling_factor(card.resolution_m * 1.2, "x.tif") == 1.0
    assert card.resampling_factor(0.3, "x.tif") == pytest.approx(0.3 / card.resolution_m)
    assert card.resampling_factor(0.02, "x.tif") == pytest.approx(0.02 / card.resolution_m)
    with pytest.raises(InputError, match="s2.tif: 10 m pixels are far outside"):
        card.resampling_factor(10.0, "s2.tif")


def test_card_without_front_matter_is_refused(tmp_path):
    (tmp_path / "MODEL_CARD.md").write_text("# a card\n")
    with pytest.raises(InputError, match="front matter"):
        ModelCard.read(tmp_path / "MODEL_CARD.md")


def test_predict_without_a_model_resamples_a_0_3_m_image_and_credits_the_data(austin_crop, tmp_path):
    image, truth = austin_crop
    summary = _predict([str(image), "--out", str(tmp_path / "out"), "--polygons"])
    assert summary["resampled"] == pytest.approx(0.3 / model_card("pretrained").resolution_m, rel=0.01)
    assert summary["objects"] > 0 and Path(summary["polygons"]).is_file()
    with rasterio.open(image) as src, rasterio.open(summary["classes"]) as classes, \
            rasterio.open(summary["probabilities"]) as probs:
        assert (classes.width, classes.height, classes.transform, classes.crs) == (400, 400, src.transform, src.crs)
        assert probs.shape == (400, 400) and probs.count == 2
        for tags in (classes.tags(), probs.tags()):
            assert "OpenStreetMap contributors" in tags["attribution"] and tags["model"] == "buildings"
    assert not list((tmp_path / "out").glob(".resample*"))  # the staging folder is gone
    resampled = _iou(summary["classes"], truth)
    as_is = _iou(_predict(["pretrained", str(image), "--out", str(tmp_path / "raw"), "--no-resample"])["classes"], truth)
    assert resampled > 0.25 and resampled > as_is + 0.05, (resampled, as_is)


def test_predict_resampled_keeps_nodata_on_the_input_grid(austin_crop, tmp_path):
    image, _ = austin_crop
    holed = tmp_path / "holed.tif"
    with rasterio.open(image) as src:
        pixels, profile = src.read(), {**src.profile, "nodata": 0}
    pixels[:, :100, :] = 0
    with rasterio.open(holed, "w", **profile) as dst:
        dst.write(pixels)
    summary = _predict([str(holed), "--out", str(tmp_path / "out")])
    with rasterio.open(summary["classes"]) as classes:
        labels = classes.read(1)
    assert (labels[:98] == 255).all() and (labels[102:] != 255).all()


def test_predict_refuses_an_input_far_coarser_than_the_model(austin_crop, tmp_path, capsys):
    from geolabel.cli import main

    image, _ = austin_crop
    coarse = tmp_path / "ten-metre.tif"
    with rasterio.open(image) as src:
        profile = {**src.profile, "transform": src.transform * Affine.scale(10 / 0.3)}
        with rasterio.open(coarse, "w", **profile) as dst:
            dst.write(src.read())
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(coarse), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "ten-metre.tif: 10 m pixels are far outside" in err and "Traceback" not in err


def test_models_and_info_show_the_shipped_model():
    for command in (["models", "--size", "64"], ["info"]):
        result = CliRunner().invoke(cli, command, catch_exceptions=False)
        assert "buildings: mlp, trained at" in result.output and "ODbL-1.0" in result.output
