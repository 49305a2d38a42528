"""Displacement fields: bounds, sampling, misregistering and aligning polygons."""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine

from geolabel.align.fields import (
    displace,
    random_smooth_field,
    sample_field,
    smooth_field,
    to_crs,
    to_pixels,
    undisplace,
    vertex_errors,
)

SQUARES = np.array([shapely.box(10, 10, 20, 25), shapely.box(40.5, 5.25, 52, 18)], dtype=object)


def test_random_field_is_bounded_and_smooth():
    rng = np.random.default_rng(0)
    for _ in range(5):
        f = random_smooth_field(64, 96, 6.0, rng)
        norm = np.sqrt((f**2).sum(-1))
        assert f.shape == (64, 96, 2) and f.dtype == np.float32
        assert 3.0 - 1e-4 <= norm.max() <= 6.0 + 1e-4
        assert np.abs(np.diff(f, axis=0)).max() < 1.0 and np.abs(np.diff(f, axis=1)).max() < 1.0


def test_sample_field_at_pixel_centres_and_between():
    f = np.zeros((4, 5, 2), np.float32)
    f[..., 0] = np.arange(5)[None, :]
    pts = np.array([[0.5, 0.5], [3.5, 2.5], [1.0, 1.5], [-3.0, 9.0]])
    out = sample_field(f, pts)
    assert np.allclose(out[:, 0], [0.0, 3.0, 0.5, 0.0])
    assert np.allclose(out[:, 1], 0.0)


def test_constant_field_moves_vertices_exactly_and_back():
    f = np.zeros((40, 60, 2), np.float32)
    f[..., 0], f[..., 1] = 2.5, -1.0
    moved = displace(SQUARES, f)
    assert np.allclose(shapely.get_coordinates(moved), shapely.get_coordinates(SQUARES) + [2.5, -1.0])
    back = undisplace(moved, f)
    assert np.allclose(vertex_errors(SQUARES, back), 0.0, atol=1e-6)


def test_smooth_field_round_trip_is_close():
    f = random_smooth_field(40, 60, 5.0, np.random.default_rng(1))
    moved = displace(SQUARES, f)
    assert vertex_errors(SQUARES, moved).mean() > 0.5
    assert vertex_errors(SQUARES, undisplace(moved, f)).max() < 0.05


def test_pixel_crs_round_trip():
    t = Affine(0.3, 0, 1000.0, 0, -0.3, 5000.0)
    crs = to_crs(SQUARES, t)
    assert shapely.get_coordinates(crs)[0].tolist() == [1000.0 + 0.3 * 20, 5000.0 - 0.3 * 10]
    assert np.allclose(shapely.get_coordinates(to_pixels(crs, t)), shapely.get_coordinates(SQUARES))


def test_smooth_field_keeps_a_constant_field_and_fills_from_evidence():
    const = np.broadcast_to(np.array([1.5, -2.0], np.float32), (40, 60, 2)).copy()
    weights = np.zeros((40, 60), np.float32)
    weights[10:20, 10:30] = 1.0
    assert np.allclose(smooth_field(const, weights, 6.0), const, atol=1e-5)
    # evidence (weight 1) says (3, 0); elsewhere the unseen field is noise: pooled, the area
    # beside the evidence takes the evidence's value instead of the noise
    noisy = np.random.default_rng(0).normal(0, 3, (40, 60, 2)).astype(np.float32)
    noisy[10:20, 10:30] = [3.0, 0.0]
    out = smooth_field(noisy, weights, 4.0)
    assert np.allclose(out[12:18, 12:28], [3.0, 0.0], atol=0.05)
    assert np.allclose(out[22, 15:25], [3.0, 0.0], atol=0.3)
    assert smooth_field(noisy, weights, 0.0) is noisy
