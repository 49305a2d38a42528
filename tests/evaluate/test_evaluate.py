"""Inria-protocol pixel metrics, polygon metrics and the evaluate report, on the real Austin mask."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio
import shapely

from geolabel.data.raster import GeoBlock, write_raster
from geolabel.errors import InputError
from geolabel.evaluate import city_of, evaluate, pixel_scores, polis, polygon_scores
from geolabel.metrics import confusion_matrix


@pytest.fixture(scope="module")
def austin(shared_data):
    path = shared_data / "inria-austin" / "buildings-mask.tif"
    with rasterio.open(path) as src:
        return path, (src.read(1) > 127).astype(np.uint8), src.transform, src.crs


def _classes(path, mask, transform, crs):
    write_raster(path, GeoBlock(mask[None].astype(np.uint8), transform, crs, 255),
                 tags={"classes": '["background", "building"]'})
    return path


def test_cumulative_iou_is_not_a_mean_of_tiles():
    a_true = np.array([[1, 1], [0, 0]])
    a_pred = np.array([[1, 0], [0, 0]])  # IoU 1/2
    b_true = np.ones((10, 10), int)
    b_pred = np.ones((10, 10), int)  # IoU 1
    conf = confusion_matrix(a_true, a_pred, 2) + confusion_matrix(b_true, b_pred, 2)
    scores = pixel_scores(conf, ("background", "building"))
    assert scores["iou"] == pytest.approx(101 / 102)  # cumulative, not (0.5 + 1) / 2
    assert scores["accuracy"] == pytest.approx(103 / 104)
    assert scores["per_class_iou"]["background"] == pytest.approx(2 / 3)


def test_ignored_reference_pixels_do_not_count():
    truth = np.array([1, 255, 0, 0])
    pred = np.array([1, 1, 255, 0])  # predicted nodata counts as background
    conf = confusion_matrix(truth, pred, 2)
    assert conf.tolist() == [[2, 0], [0, 1]]


def test_polygon_metrics_identical_shifted_and_missing():
    boxes = [shapely.box(i * 20, 0, i * 20 + 10, 10) for i in range(4)]
    same = polygon_scores(boxes, boxes)
    assert (same["precision"], same["recall"], same["f1"], same["polis"]) == (1.0, 1.0, 1.0, 0.0)
    shifted = [shapely.box(i * 20 + 1, 0, i * 20 + 11, 10) for i in range(3)]
    scores = polygon_scores(shifted, boxes)
    assert scores["matched"] == 3 and scores["precision"] == 1.0 and scores["recall"] == 0.75
    assert scores["polis"] == pytest.approx(polis(shifted[0], boxes[0]))
    assert 0 < scores["polis"] <= 1.0
    assert scores["mean_vertices_predicted"] == 4
    far = polygon_scores([shapely.box(3, 0, 13, 10)], boxes[:1])  # IoU 7/13 >= 0.5
    assert far["matched"] == 1
    none = polygon_scores([shapely.box(6, 0, 16, 10)], boxes[:1])  # IoU 4/16 < 0.5
    assert none["matched"] == 0 and none["f1"] == 0.0
    assert none["found_at_0.25"] == 1.0  # but found at IoU >= 0.25 (a reference drawn off the image)


def test_instance_scores_match_buildings_one_to_one_on_valid_pixels(austin):
    from scipy import ndimage

    from geolabel.evaluate.metrics import instance_scores

    _, mask, _, _ = austin
    truth, n = ndimage.label(mask)
    same = instance_scores(truth, truth)
    assert (same["precision"], same["recall"], same["f1"], same["reference"]) == (1.0, 1.0, 1.0, n)
    merged = np.where(truth > 0, 1, 0)  # every building one object: at most one match
    assert instance_scores(merged, truth)["matched"] <= 1
    shifted = np.roll(truth, 6, axis=1)  # ~2 m east: small buildings drop below IoU 0.5
    scores = instance_scores(shifted, truth)
    assert scores["recall"] < 1.0 and scores["found_at_0.25"] >= scores["recall"]
    valid = np.ones(mask.shape, bool)
    valid[:, 500:] = False  # buildings mostly outside the imagery are not counted
    half = instance_scores(truth, truth, valid)
    assert half["f1"] == 1.0 and half["reference"] < n


def test_perfect_prediction_scores_one_against_raster_and_vector_references(austin, tmp_path):
    path, mask, transform, crs = austin
    pred = _classes(tmp_path / "pred" / "classes.tif", mask, transform, crs)
    report = evaluate(pred.parent, path, tmp_path / "report", polygons="dp", separate=False)
    assert report["overall"]["iou"] == 1.0 and report["overall"]["accuracy"] == 1.0
    assert report["overall"]["polygons"]["f1"] > 0.98  # DP at 0.5 m collapses the odd one-pixel speck
    # as predict --polygons outlines it (touching buildings separated), a few wings come off
    assert report["overall"]["polygons"]["f1"] - evaluate(pred.parent, path, tmp_path / "r1", polygons="dp")["overall"]["polygons"]["f1"] < 0.03
    # the reference as vectors (GeoPackage) rasterised on the prediction grid
    from geolabel.vectorize.polygons import dp_polygons, write_polygons

    write_polygons(dp_polygons(mask, transform, crs, tolerance=0.0), tmp_path / "gt", "austin")
    report = evaluate(pred.parent, tmp_path / "gt" / "austin.gpkg", tmp_path / "report2", polygons="dp", separate=False)
    assert report["overall"]["iou"] > 0.999
    assert report["overall"]["polygons"]["recall"] > 0.99
    saved = json.loads((tmp_path / "report2" / "evaluation.json").read_text())
    assert saved["overall"]["iou"] == report["overall"]["iou"]
    assert "| overall |" in (tmp_path / "report2" / "evaluation.md").read_text()
    assert (tmp_path / "report2" / f"overlay-{saved['files'][0]['name']}.png").stat().st_size > 1000


def test_folders_are_paired_by_name_and_scored_per_city(austin, tmp_path):
    path, mask, transform, crs = austin
    half = mask.copy()
    half[:, 500:] = 0  # misses every building on the right half
    for name, pred in (("austin1", mask), ("austin2", half), ("vienna1", mask)):
        _classes(tmp_path / "pred" / f"{name}.tif", pred, transform, crs)
        write_raster(tmp_path / "gt" / f"{name}.tif", GeoBlock((mask * 255)[None].astype(np.uint8), transform, crs, None))
    report = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "report", polygons=None)
    assert set(report["cities"]) == {"austin", "vienna"}
    assert report["cities"]["vienna"]["iou"] == 1.0
    tp_full, tp_half = mask.sum(), half.sum()
    assert report["cities"]["austin"]["iou"] == pytest.approx((tp_full + tp_half) / (2 * tp_full))
    assert len(report["files"]) == 3


def test_city_names_and_bad_inputs(tmp_path):
    assert city_of("austin12.tif") == "austin"
    assert city_of("west-tyrol3") == "west-tyrol"
    with pytest.raises(InputError, match="no such file"):
        evaluate(tmp_path / "nope.tif", tmp_path / "gt.tif", tmp_path / "out")
    bad = tmp_path / "pred.tif"
    bad.write_text("not a raster")
    gt = tmp_path / "gt.tif"
    gt.write_text("not a raster either")
    with pytest.raises(InputError, match="pred.tif: not a readable raster"):
        evaluate(bad, gt, tmp_path / "out")


def test_cli_evaluate(austin, tmp_path, capsys):
    from geolabel.cli import main

    path, mask, transform, crs = austin
    pred = _classes(tmp_path / "classes.tif", mask, transform, crs)
    main(["evaluate", os.fspath(pred), os.fspath(path), "--out", os.fspath(tmp_path / "r"), "--polygons", "none"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["iou"] == 1.0
