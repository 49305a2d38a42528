"""Training data from real imagery and real OSM polygons with exact synthetic misregistration."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geolabel.align.data import load_scene, make_batch, rasterize_map, segmentation_target, within_image
from geolabel.errors import InputError
from geolabel.models.alignment import warp


def test_scene_polygons_lie_on_the_image(virac_scene):
    s = virac_scene
    assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
    inside = within_image(s, margin=4)
    assert 20 <= len(inside.geoms) <= len(s.geoms)
    # real OSM buildings are drawn over this imagery: their pixels are valid, not the black outside
    fill = rasterize_map(inside.geoms, *s.shape)[..., 0] > 0
    assert (s.image[fill] > 0).any(-1).mean() > 0.95


def test_rasterized_channels():
    sq = np.array([shapely.box(2, 2, 10, 8)], dtype=object)
    m = rasterize_map(sq, 12, 12)
    assert m[..., 0].sum() == 48 and m[4, 5, 0] == 1
    assert m[2, 5, 1] == 1 and m[5, 5, 1] == 0
    assert m[..., 2].sum() == 4 and m[2, 2, 2] == 1
    seg = segmentation_target(sq, 12, 12)
    assert seg.shape == (12, 12, 4) and np.allclose(seg[..., 0], 1 - np.maximum(m[..., 0], m[..., 1]))


def test_batch_truth_field_aligns_the_map(virac_scene):
    rng = np.random.default_rng(0)
    b = make_batch(virac_scene, 4, 128, 6.0, rng)
    assert b["image"].shape == (4, 128, 128, 3) and b["map"].shape == (4, 128, 128, 3)
    assert b["displacement"].shape == (4, 128, 128, 2) and b["segmentation"].shape == (4, 128, 128, 4)
    true_fill = b["segmentation"][..., 1] > 0.5
    before = b["map"][..., 0] > 0.5
    after = np.asarray(warp(b["map"], b["displacement"]))[..., 0] > 0.5

    def iou(a, c):
        return (a & c).sum() / max((a | c).sum(), 1)

    assert true_fill.any()
    assert iou(after, true_fill) > 0.85
    assert iou(after, true_fill) > iou(before, true_fill) + 0.1


def test_dropping_polygons(virac_scene):
    b = make_batch(virac_scene, 4, 128, 4.0, np.random.default_rng(1), keep_fraction=0.3)
    assert b["dropped"].sum() > 0
    # dropped buildings are in the target but not in the input map
    assert (b["segmentation"][..., 1][b["dropped"] > 0] == 1).all()


def test_bad_inputs(virac, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_scene(tmp_path / "nope.tif", virac[1])
    bad = tmp_path / "bad.geojson"
    bad.write_text("not json")
    with pytest.raises(InputError, match="bad.geojson"):
        load_scene(virac[0], bad)
