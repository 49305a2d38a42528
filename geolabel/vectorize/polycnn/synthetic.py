"""An unlimited artificial set of random building-like quadrilaterals rasterised to images.

PolyCNN's decoder is pre-trained on it before the real buildings (Girard & Tarabalka 2018):
the shapes are free and endless, so the decoder learns to draw quadrilaterals first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from geolabel.models.polycnn import PATCH
from geolabel.vectorize.polycnn.geometry import orient


def random_quadrilateral(rng: np.random.Generator, max_tries: int = 100) -> np.ndarray:
    """A random building-like quadrilateral (4, 2) inside [0, 1]^2, valid and clockwise on screen.

    A rotated rectangle of random aspect whose corners are perturbed, placed the way the
    real crops place their object: filling 45-90 % of the frame, centre jittered.
    """
    from shapely.geometry import Polygon

    for _ in range(max_tries):
        angle = rng.uniform(0, math.pi)
        aspect = rng.uniform(1.0, 3.0)
        half = np.array([1.0, 1.0 / aspect]) / 2
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype="float64") * half
        corners += rng.normal(0, 0.06, corners.shape)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        corners = corners @ rot.T
        extent = (corners.max(0) - corners.min(0)).max()
        corners *= rng.uniform(0.45, 0.9) / extent
        lo, hi = corners.min(0), corners.max(0)
        room = 1.0 - (hi - lo)
        corners += -lo + rng.uniform(0.1, 0.9, 2) * room
        quad = orient(corners)
        poly = Polygon(quad)
        if poly.is_valid and poly.area > 0.05 and quad.min() >= 0.0 and quad.max() <= 1.0:
            return quad
    raise RuntimeError("could not draw a valid quadrilateral")  # pragma: no cover (probability ~0)


def render_quadrilateral(vertices: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterise a (4, 2) quadrilateral in crop units to a (patch, patch, 3) float32 image in [0, 255].

    Anti-aliased (4x supersampling), random roof and ground colours, a shadow-like dark edge
    on one side, random distractor blobs, blur and sensor noise.
    """
    from PIL import Image, ImageDraw, ImageFilter

    scale = 4
    size = patch * scale
    ground = rng.uniform(40, 200, 3)
    roof = np.clip(ground + rng.choice([-1, 1]) * rng.uniform(30, 110) + rng.normal(0, 20, 3), 0, 255)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in ground))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):  # neighbouring structures, vegetation
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.3) * size
        colour = tuple(int(c) for c in np.clip(ground + rng.normal(0, 45, 3), 0, 255))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    pts = [(float(x * size), float(y * size)) for x, y in vertices]
    shadow = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)]) * 0.04 * size
    draw.polygon([(x + shadow[0], y + shadow[1]) for x, y in pts], fill=tuple(int(c * 0.4) for c in ground))
    draw.polygon(pts, fill=tuple(int(c) for c in roof))
    img = img.resize((patch, patch), Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    arr = np.asarray(img, dtype="float32")
    arr = arr + rng.normal(0, rng.uniform(2, 12), arr.shape)
    return np.clip(arr, 0, 255).astype("float32")


def artificial_batches(
    batch_size: int, patch: int = PATCH, seed: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Unlimited batches (images (B, patch, patch, 3) in [0, 255], vertices (B, 8) in [0, 1])."""
    rng = np.random.default_rng(seed)
    while True:
        quads = [random_quadrilateral(rng) for _ in range(batch_size)]
        images = np.stack([render_quadrilateral(q, patch, rng) for q in quads])
        yield images, np.stack(quads).reshape(batch_size, 8).astype("float32")
