"""Beam prediction's block plan and the merge of polygons across block seams (no model needed)."""

from __future__ import annotations

import numpy as np
from affine import Affine

from geolabel.pipelines.beam_predict import Grid, block_pieces, merge_pieces, plan_blocks
from geolabel.vectorize.polygons import PolygonSpec


def test_blocks_cover_the_raster_once_with_clipped_halo():
    blocks = plan_blocks(250, 130, 100, 16)
    assert len(blocks) == 6
    covered = np.zeros((130, 250), int)
    for b in blocks:
        covered[b.row : b.row + b.height, b.col : b.col + b.width] += 1
        assert b.read_col >= 0 and b.read_row >= 0
        assert b.read_col + b.read_width <= 250 and b.read_row + b.read_height <= 130
        assert b.read_col <= b.col and b.read_col + b.read_width >= b.col + b.width
    assert (covered == 1).all()
    assert blocks[4].read_col == 84 and blocks[4].read_width == 132  # interior block: 16 px each side


def test_read_windows_start_on_the_prediction_window_grid():
    for b in plan_blocks(1000, 700, 256, halo=128, align=112):
        assert b.read_col % 112 == 0 and b.read_row % 112 == 0
        assert b.col - b.read_col >= 128 or b.read_col == 0
        assert b.read_col + b.read_width - (b.col + b.width) >= 128 or b.read_col + b.read_width == 1000


def test_a_building_across_seams_comes_out_as_one_polygon():
    classes = np.zeros((40, 40), np.uint8)
    classes[5:30, 12:33] = 1  # crosses the seams at x=20 and y=20
    classes[6:10, 2:6] = 1  # a second building inside one block
    classes[22:26, 24:28] = 0  # a hole, inside the big building
    probs = np.stack([1.0 - 0.8 * classes, 0.8 * classes]).astype(np.float32)
    grid = Grid(40, 40, Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0), "EPSG:32616", 1.0, None, 0.5)
    spec = PolygonSpec("dp", tolerance=0.0, min_area=0.0, min_confidence=0.0, separate=False)
    names = ("background", "building")
    whole = merge_pieces(*block_pieces(classes, probs, plan_blocks(40, 40, 40, 0)[0], grid, spec, names), grid, spec, names)
    done, waiting = [], []
    for b in plan_blocks(40, 40, 20, 0):
        window = (slice(b.row, b.row + b.height), slice(b.col, b.col + b.width))
        d, w = block_pieces(classes[window], probs[(slice(None), *window)], b, grid, spec, names)
        done += d
        waiting += w
    merged = merge_pieces(done, waiting, grid, spec, names)
    assert len(waiting) == 4 and len(merged) == len(whole) == 2
    merged = merged.sort_values("area").reset_index(drop=True)
    whole = whole.sort_values("area").reset_index(drop=True)
    for a, b in zip(merged.geometry, whole.geometry):
        assert a.symmetric_difference(b).area < 1e-9
    assert len(merged.geometry[1].interiors) == 1
    assert np.allclose(merged["area"], [16 * 0.25, (25 * 21 - 16) * 0.25])
    assert np.allclose(merged["confidence"], 0.8) and list(merged["class"]) == ["building", "building"]
