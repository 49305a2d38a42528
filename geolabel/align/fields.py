"""Displacement fields on a pixel grid and what they do to polygons.

Conventions (shared with `geolabel.models.alignment`): a field is (H, W, 2) float32 in
pixels, channel 0 = x (column), channel 1 = y (row); the value at [r, c] belongs to the
pixel centre (c + 0.5, r + 0.5) of the pixel coordinate system (x right, y down).
A map misregistered by field F has each true vertex v drawn at v + F(v); the field
that aligns it back (what the models predict) is F itself, sampled on the true grid.
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage


def random_smooth_field(
    height: int,
    width: int,
    max_amplitude: float,
    rng: np.random.Generator,
    n_gaussians: int = 30,
    sigma_range: tuple[float, float] = (0.15, 0.5),
) -> np.ndarray:
    """A smooth random field: a sum of Gaussian bumps, scaled so its largest vector is in
    [max_amplitude / 2, max_amplitude] pixels.

    Args:
        sigma_range: bump widths as fractions of max(height, width).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    size = float(max(height, width))
    field = np.zeros((height, width, 2), np.float32)
    for _ in range(n_gaussians):
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        sigma = rng.uniform(*sigma_range) * size
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        field += bump[..., None] * rng.normal(size=2).astype(np.float32)
    peak = float(np.sqrt((field**2).sum(-1)).max())
    if peak > 0:
        field *= rng.uniform(0.5, 1.0) * max_amplitude / peak
    return field


def sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinearly sample `field` (H, W, 2) at pixel-coordinate points (N, 2) -> (N, 2).

    Points outside the grid take the nearest edge value.
    """
    h, w = field.shape[:2]
    x = np.clip(points[:, 0] - 0.5, 0, w - 1)
    y = np.clip(points[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    return (
        field[y0, x0] * (1 - ax) * (1 - ay)
        + field[y0, x1] * ax * (1 - ay)
        + field[y1, x0] * (1 - ax) * ay
        + field[y1, x1] * ax * ay
    ).astype(np.float32)


def displace(geoms: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Misregister geometries with `field`: every vertex v moves to v + F(v)."""
    return shapely.transform(geoms, lambda pts: pts + sample_field(field, pts))


def undisplace(geoms: np.ndarray, field: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Align geometries with a predicted field: each vertex v' moves to the p with p + F(p) = v'.

    Solved by fixed-point iteration p <- v' - F(p), exact for a constant field.
    """

    def solve(pts: np.ndarray) -> np.ndarray:
        p = pts - sample_field(field, pts)
        for _ in range(iterations - 1):
            p = pts - sample_field(field, p)
        return p

    return shapely.transform(geoms, solve)


def smooth_field(field: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """The field averaged over a Gaussian of `sigma` pixels, each pixel counted by its weight.

    A normalised convolution: the field is only seen where the image shows map content
    (buildings), so elsewhere it borrows from the nearest evidence, and each building's
    vectors are pooled with its neighbours' (misregistration varies slowly; one building's
    reading is noisy). A constant field is unchanged. `sigma` <= 0 returns `field`.

    Args:
        weights: (H, W) >= 0, e.g. 1 near map content and 0 elsewhere.
    """
    if sigma <= 0:
        return field
    w = np.asarray(weights, np.float32) + 1e-3  # a floor keeps empty areas defined
    num = ndimage.gaussian_filter(field * w[..., None], (sigma, sigma, 0))
    return (num / ndimage.gaussian_filter(w, sigma)[..., None]).astype(np.float32)


def to_pixels(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """CRS geometries -> pixel-coordinate geometries of the grid with `transform`."""
    return _affine(geoms, ~transform)


def to_crs(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel-coordinate geometries -> CRS geometries of the grid with `transform`."""
    return _affine(geoms, transform)


def _affine(geoms: np.ndarray, t: Affine) -> np.ndarray:
    def apply(pts: np.ndarray) -> np.ndarray:
        x, y = pts[:, 0], pts[:, 1]
        return np.stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f], axis=1)

    return shapely.transform(np.asarray(geoms, dtype=object), apply)


def vertex_errors(true_geoms: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """Per-vertex distance (pixels) between two geometry arrays with the same vertices."""
    a = shapely.get_coordinates(true_geoms)
    b = shapely.get_coordinates(geoms)
    if a.shape != b.shape:
        raise ValueError("geometries differ in vertex count")
    return np.sqrt(((a - b) ** 2).sum(axis=1))
