"""Mesh-approximation polygoniser: right angles, shared walls, topology on real masks, seams."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio import features
from rasterio.windows import Window

from geolabel.classes import BUILDINGS_ROADS
from geolabel.errors import InputError
from geolabel.vectorize.mesh import LabelMesh, _regions, mesh_polygons, vertex_count

PIXEL = Affine(0.3, 0, 500000.0, 0, -0.3, 4000000.0)  # 0.3 m, north-up


def _turns(polygon: shapely.Polygon) -> np.ndarray:
    """Turning angle (degrees) at each vertex of the exterior ring."""
    ring = np.asarray(polygon.exterior.coords)[:-1]
    prev, nxt = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    return np.degrees(np.arctan2(cross, (prev * nxt).sum(axis=1)))


def _austin(shared_data, size: int = 300, row: int = 0, col: int = 0) -> tuple[np.ndarray, np.ndarray, Affine]:
    with rasterio.open(shared_data / "inria-austin" / "buildings-mask.tif") as src:
        window = Window(col, row, size, size)
        mask = (src.read(1, window=window) > 127).astype(np.uint8)
        transform = src.window_transform(window)
    with rasterio.open(shared_data / "inria-austin" / "image.tif") as src:
        image = src.read(window=Window(col, row, size, size))
    return mask, image, transform


def test_rectangle_gives_four_right_angles():
    mask = np.zeros((60, 80), np.uint8)
    mask[15:45, 10:70] = 1
    mask[15, 30:33] = 0  # one-pixel notches and bumps: noise of a predicted mask
    mask[44, 50] = 0
    mask[25:27, 70] = 1
    frame = mesh_polygons(mask, PIXEL, "EPSG:32631")
    assert len(frame) == 1
    polygon = frame.geometry.iloc[0]
    assert vertex_count([polygon]) == 4
    assert np.allclose(np.abs(_turns(polygon)), 90.0)
    assert polygon.area == pytest.approx(30 * 60 * 0.09, rel=0.01)


def test_rotated_rectangle_gives_four_near_right_angles():
    truth = shapely.affinity.rotate(shapely.box(20, 30, 70, 55), 30)
    mask = features.rasterize([truth], out_shape=(90, 90)).astype(np.uint8)
    frame = mesh_polygons(mask, Affine.identity(), lam=1.5, mu=1.0)
    polygon = frame.geometry.iloc[0]
    assert vertex_count([polygon]) == 4
    assert np.abs(np.abs(_turns(polygon)) - 90).max() < 3.0
    assert polygon.symmetric_difference(truth).area < 0.02 * truth.area


def test_adjacent_buildings_share_their_wall_exactly():
    classes = np.zeros((60, 90), np.uint8)
    instances = np.zeros((60, 90), np.int32)
    classes[10:40, 10:40] = 1
    instances[10:40, 10:40] = 1
    classes[14:37, 40:75] = 1  # terraced neighbour, same class, own instance
    instances[14:37, 40:75] = 2
    classes[40:50, 5:80] = 2  # a road along both
    frame = mesh_polygons(classes, PIXEL, instances=instances, class_map=BUILDINGS_ROADS)
    assert sorted(frame["class"]) == ["building", "building", "road"]
    geoms = list(frame.geometry)
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            assert geoms[i].intersection(geoms[j]).area == pytest.approx(0.0, abs=1e-9)  # no overlap
    a, b = [g for g, c in zip(geoms, frame["class"]) if c == "building"]
    wall = a.boundary.intersection(b.boundary)
    assert wall.length == pytest.approx(23 * 0.3, rel=0.05)  # the whole common wall is shared
    # no gap: the union of the pieces has no holes and covers what the pieces cover
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(sum(g.area for g in geoms))
    assert all(len(p.interiors) == 0 for p in getattr(union, "geoms", [union]))
    # the wall's vertices are vertices of both outlines
    ca = {tuple(np.round(p, 9)) for p in np.asarray(a.exterior.coords)}
    cb = {tuple(np.round(p, 9)) for p in np.asarray(b.exterior.coords)}
    for x, y in np.asarray(shapely.get_coordinates(wall)):
        assert (round(x, 9), round(y, 9)) in ca and (round(x, 9), round(y, 9)) in cb


def _predicted_like(image: np.ndarray) -> np.ndarray:
    """A noisy 3-class map from the real image (brightness terciles): many regions and junctions."""
    grey = image[:3].astype(np.float32).mean(axis=0)
    lo, hi = np.percentile(grey, [40, 75])
    return np.digitize(grey, [lo, hi]).astype(np.uint8)


@pytest.mark.parametrize("kind", ["truth", "predicted"])
def test_topology_holds_on_real_masks(shared_data, kind):
    mask, image, _ = _austin(shared_data, size=120, row=200, col=300)
    labels = mask if kind == "truth" else _predicted_like(image)
    regions, region_class = _regions(labels, None)
    mesh = LabelMesh(regions, region_class, lam_px=1.0, mu_px=1.0, regular_classes={1})
    before = mesh.vertex_cost
    mesh.optimise()
    assert before > 0
    assert mesh.min_signed_area() > 0  # no flipped or degenerate triangle
    polygons = mesh.region_polygons()
    assert len(polygons) == len(region_class)  # no region vanished
    geoms = list(polygons.values())
    assert all(g.geom_type == "Polygon" and g.is_valid for g in geoms)  # none split, no self-intersection
    h, w = labels.shape
    assert sum(g.area for g in geoms) == pytest.approx(h * w)  # no overlap ...
    assert shapely.union_all(geoms).area == pytest.approx(h * w)  # ... and no gap
    # each polygon still mostly covers pixels of its own class
    drawn = features.rasterize([(g, r + 1) for r, g in polygons.items()], out_shape=(h, w)) - 1
    agree = (region_class[drawn] == labels).mean()
    assert agree > (0.97 if kind == "truth" else 0.85)


def test_blocks_merge_across_seams(shared_data):
    mask, _, transform = _austin(shared_data, size=256)
    whole = mesh_polygons(mask, transform, "EPSG:26914")
    tiled = mesh_polygons(mask, transform, "EPSG:26914", block_size=64)
    assert len(tiled) == len(whole)
    geoms = list(tiled.geometry)
    assert all(g.is_valid and g.geom_type == "Polygon" for g in geoms)
    assert shapely.union_all(geoms).area == pytest.approx(sum(g.area for g in geoms))
    truth = features.shapes(mask, mask=mask > 0, transform=transform)
    truth_union = shapely.union_all([shapely.geometry.shape(g) for g, _ in truth])
    iou = shapely.union_all(geoms).intersection(truth_union).area / shapely.union_all(geoms).union(truth_union).area
    assert iou > 0.97


def test_attributes_georeference_and_errors():
    classes = np.zeros((40, 40), np.uint8)
    classes[5:20, 5:25] = 1
    classes[30:38, 0:40] = 255  # nodata: not polygonised
    probs = np.zeros((2, 40, 40), np.float32)
    probs[1] = 0.8
    frame = mesh_polygons(classes, PIXEL, "EPSG:32631", probabilities=probs, min_area=1.0)
    assert list(frame.columns) == ["class", "area", "confidence", "geometry"]
    assert frame.crs.to_epsg() == 32631
    assert frame["area"].iloc[0] == pytest.approx(15 * 20 * 0.09)
    assert frame["confidence"].iloc[0] == pytest.approx(0.8)
    minx, miny, maxx, maxy = frame.geometry.iloc[0].bounds
    assert (minx, maxy) == pytest.approx((500000.0 + 5 * 0.3, 4000000.0 - 5 * 0.3))
    assert frame.geometry.iloc[0].exterior.is_ccw
    with pytest.raises(InputError, match="classes"):
        mesh_polygons(np.zeros((10, 10), np.float32), PIXEL)
    with pytest.raises(InputError, match="probabilities"):
        mesh_polygons(classes, PIXEL, probabilities=probs[:, :10])


def test_parallel_blocks_give_the_same_polygons(shared_data):
    mask, _, transform = _austin(shared_data, size=128, row=100, col=100)
    serial = mesh_polygons(mask, transform, "EPSG:26914", block_size=64)
    parallel = mesh_polygons(mask, transform, "EPSG:26914", block_size=64, workers=2)
    assert len(serial) == len(parallel)
    assert shapely.union_all(list(serial.geometry)).equals(shapely.union_all(list(parallel.geometry)))


def test_nodata_specks_inside_a_building_do_not_become_holes():
    classes = np.zeros((50, 50), np.uint8)
    classes[10:40, 10:40] = 1
    classes[20:22, 25] = 255  # two pixels of missing imagery
    classes[:, 45:] = 255  # a nodata margin stays nodata
    frame = mesh_polygons(classes, PIXEL, "EPSG:32631")
    polygon = frame.geometry.iloc[0]
    assert len(frame) == 1 and len(polygon.interiors) == 0 and vertex_count([polygon]) == 4
