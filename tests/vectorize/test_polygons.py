"""Block-wise polygonisation: exact seams, holes, min area, DP in metres, right angles, outputs."""

from __future__ import annotations

import time

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from scipy import ndimage

from geolabel.classes import BUILDINGS
from geolabel.errors import InputError
from geolabel.vectorize import POLYGONIZERS
from geolabel.vectorize.polygons import dp_polygons, polygonize_raster, regularize_polygon, regularized_polygons, write_polygons

UTM = Affine(0.3, 0, 617100.0, 0, -0.3, 3344400.0)  # 0.3 m, EPSG:26914 like the Inria Austin crop
CRS = "EPSG:26914"


def _turns(polygon: shapely.Polygon) -> np.ndarray:
    ring = np.asarray(polygon.exterior.coords)[:-1]
    a, b = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    return np.abs(np.degrees(np.arctan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], (a * b).sum(1))))


@pytest.fixture(scope="module")
def austin_mask(shared_data):
    with rasterio.open(shared_data / "inria-austin" / "buildings-mask.tif") as src:
        return (src.read(1) > 127).astype(np.uint8), src.transform, src.crs


def test_registry_names():
    assert {"dp", "regularized", "mesh"} <= set(POLYGONIZERS)
    assert POLYGONIZERS["dp"] is dp_polygons


def test_building_crossing_block_seams_is_one_polygon():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:70, 25:80] = 1  # crosses the seams at 32 and 64 both ways: 9 pieces
    probs = np.stack([1 - mask * 0.8, mask * 0.8]).astype(np.float32)
    frame = dp_polygons(mask, UTM, CRS, probs, block_size=32, tolerance=0.0, class_map=BUILDINGS)
    assert len(frame) == 1
    geom = frame.geometry.iloc[0]
    assert geom.geom_type == "Polygon" and len(geom.exterior.coords) == 5  # seam vertices dropped
    assert frame["area"].iloc[0] == pytest.approx(50 * 55 * 0.09, rel=1e-6)
    assert frame["confidence"].iloc[0] == pytest.approx(0.8, abs=1e-6)
    assert frame["class"].iloc[0] == "building"


def test_holes_are_kept_also_when_cut_by_a_seam():
    mask = np.zeros((80, 80), np.uint8)
    mask[10:70, 10:70] = 1
    mask[25:55, 25:55] = 0  # courtyard, cut by the seam at 40
    for block in (40, 1024):
        frame = dp_polygons(mask, UTM, CRS, block_size=block, tolerance=0.0)
        assert len(frame) == 1
        geom = frame.geometry.iloc[0]
        assert len(geom.interiors) == 1
        assert geom.area == pytest.approx((60 * 60 - 30 * 30) * 0.09)


def test_real_mask_is_the_same_whatever_the_block_grid(austin_mask):
    mask, transform, crs = austin_mask
    big = dp_polygons(mask, transform, crs, block_size=2048, tolerance=0.0)
    small = dp_polygons(mask, transform, crs, block_size=96, tolerance=0.0)
    assert len(small) == len(big)
    assert small["area"].sum() == pytest.approx(big["area"].sum(), rel=1e-9)
    union_diff = shapely.union_all(small.geometry.values).symmetric_difference(shapely.union_all(big.geometry.values))
    assert union_diff.area < 1e-6


def test_min_area_and_douglas_peucker_tolerance_in_metres(austin_mask):
    mask, transform, crs = austin_mask
    raw = dp_polygons(mask, transform, crs, tolerance=0.0)
    simple = dp_polygons(mask, transform, crs, tolerance=1.0, min_area=10.0)
    assert (simple["area"] >= 10.0).all() and len(simple) < len(raw)
    kept = raw[raw["area"] >= 10.0].reset_index(drop=True)
    assert len(kept) == len(simple)
    count = lambda f: sum(len(g.exterior.coords) for g in f.geometry)  # noqa: E731
    assert count(simple) < 0.5 * count(kept)
    for a, b in zip(kept.geometry, simple.geometry):
        assert a.hausdorff_distance(b) <= 1.0 + 0.3  # within the tolerance (metres) plus a pixel


def test_regularisation_gives_right_angles():
    truth = shapely.affinity.rotate(shapely.box(20, 30, 70, 55), 25)
    from rasterio import features

    mask = features.rasterize([truth], out_shape=(90, 90)).astype(np.uint8)
    frame = regularized_polygons(mask, Affine.identity(), None, tolerance=1.5)
    polygon = frame.geometry.iloc[0]
    assert len(polygon.exterior.coords) - 1 == 4
    assert np.abs(_turns(polygon) - 90).max() < 1.0
    assert polygon.symmetric_difference(truth).area < 0.05 * truth.area


def test_regularisation_on_real_buildings_raises_the_share_of_right_angles(austin_mask):
    mask, transform, crs = austin_mask
    dp = dp_polygons(mask, transform, crs, tolerance=1.0, min_area=5)
    reg = regularized_polygons(mask, transform, crs, tolerance=1.0, min_area=5)
    share = lambda f: np.mean(np.concatenate([np.abs(_turns(g) - 90) < 3 for g in f.geometry]))  # noqa: E731
    assert share(reg) > share(dp) + 0.2
    assert reg.geometry.is_valid.all()
    iou = shapely.union_all(reg.geometry.values).intersection(shapely.union_all(dp.geometry.values)).area / \
        shapely.union_all(reg.geometry.values).union(shapely.union_all(dp.geometry.values)).area
    assert iou > 0.95


def test_regularize_leaves_a_shape_it_cannot_improve():
    circle = shapely.Point(0, 0).buffer(10, quad_segs=8)
    assert regularize_polygon(circle).equals(circle) or regularize_polygon(circle).area > 0.75 * circle.area


def test_outputs_gpkg_in_source_crs_and_geojson_in_wgs84(austin_mask, tmp_path):
    mask, transform, crs = austin_mask
    frame = regularized_polygons(mask[:300, :300], transform, crs, class_map=BUILDINGS)
    paths = write_polygons(frame, tmp_path)
    gpkg = gpd.read_file(paths["gpkg"])
    geojson = gpd.read_file(paths["geojson"])
    assert gpkg.crs == crs and geojson.crs.to_epsg() == 4326
    assert list(gpkg.columns) == ["class", "area", "confidence", "geometry"]
    assert len(gpkg) == len(geojson) == len(frame) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["polygons.geojson", "polygons.gpkg"]


def test_geographic_crs_area_in_square_metres():
    # 1e-5 degree pixels near the equator: about 1.11 m x 1.11 m
    transform = Affine(1e-5, 0, 30.0, 0, -1e-5, 0.5)
    mask = np.zeros((50, 50), np.uint8)
    mask[10:30, 10:30] = 1
    frame = dp_polygons(mask, transform, "EPSG:4326", tolerance=0.5)
    assert frame.crs.is_geographic
    assert frame["area"].iloc[0] == pytest.approx(400 * 1.1132 * 1.1057, rel=0.01)


def test_polygonize_raster_file_reads_class_names_and_confidence(tmp_path, austin_mask):
    mask, transform, crs = austin_mask
    from geolabel.data.raster import GeoBlock, write_raster

    write_raster(tmp_path / "classes.tif", GeoBlock(mask[None], transform, crs, 255),
                 tags={"classes": '["background", "building"]'})
    probs = np.stack([(1 - mask) * 255, mask * 200]).astype(np.uint8)
    write_raster(tmp_path / "probabilities.tif", GeoBlock(probs, transform, crs, None))
    frame = polygonize_raster(tmp_path / "classes.tif", tmp_path / "probabilities.tif", method="dp", block_size=128,
                              min_confidence=0.0)
    assert set(frame["class"]) == {"building"}
    assert np.allclose(frame["confidence"], 200 / 255)
    # 200 / 255 = 0.78 is below the default confidence threshold: such objects are dropped
    assert len(polygonize_raster(tmp_path / "classes.tif", tmp_path / "probabilities.tif", method="dp")) == 0
    with pytest.raises(InputError, match="unknown polygoniser"):
        polygonize_raster(tmp_path / "classes.tif", method="nope")


def test_mesh_from_a_file_streams_its_blocks_and_equals_the_in_memory_mesh(tmp_path, austin_mask):
    """`polygonize_raster(method="mesh")` reads its blocks as they are meshed (memory flat in the
    raster's size): on a 2000 px raster of real buildings (4 blocks of 1024 px, objects across the
    seams) it returns exactly what `mesh_polygons` returns on the whole arrays."""
    from geolabel.data.raster import GeoBlock, write_raster
    from geolabel.vectorize.mesh import mesh_polygons

    tile, transform, crs = austin_mask
    mask = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    probs = np.stack([(1 - mask) * 230, mask * 230]).astype(np.uint8)
    write_raster(tmp_path / "classes.tif", GeoBlock(mask[None], transform, crs, 255),
                 tags={"classes": '["background", "building"]'})
    write_raster(tmp_path / "probabilities.tif", GeoBlock(probs, transform, crs, None))
    streamed = polygonize_raster(tmp_path / "classes.tif", tmp_path / "probabilities.tif", method="mesh",
                                 block_size=1024, separate=False, min_confidence=0.0)
    whole = mesh_polygons(mask, transform, crs, probs, class_map=BUILDINGS, block_size=1024)
    assert len(streamed) == len(whole) > 400
    assert [g.wkb for g in streamed.geometry] == [g.wkb for g in whole.geometry]
    np.testing.assert_allclose(streamed["confidence"], whole["confidence"])
    separated = polygonize_raster(tmp_path / "classes.tif", tmp_path / "probabilities.tif", method="mesh",
                                  block_size=1024, min_confidence=0.0)
    assert len(separated) > len(streamed)  # the workers split touching buildings too


@pytest.mark.parametrize("method", ["mesh", "regularized"])
def test_polygons_of_tiles_as_a_prediction_writes_them_equal_those_of_the_written_files(tmp_path, austin_mask,
                                                                                         method):
    """`StreamedPolygons` (the polygons `geolabel predict --polygons` makes beside the prediction)
    fed a real raster's 512 px tiles, out of order, returns exactly what `polygonize_raster`
    returns from the files: the same blocks, separated, meshed and filtered the same way."""
    from geolabel.data.raster import GeoBlock, write_raster
    from geolabel.vectorize.polygons import StreamedPolygons

    tile, transform, crs = austin_mask
    mask = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    rng = np.random.default_rng(0)
    objects, n = ndimage.label(mask)
    confidence = np.r_[0, rng.choice([150, 240], size=n)][objects]  # some objects below 0.8, dropped
    probs = np.stack([255 - confidence, confidence]).astype(np.uint8)
    write_raster(tmp_path / "classes.tif", GeoBlock(mask[None], transform, crs, 255),
                 tags={"classes": '["background", "building"]'})
    write_raster(tmp_path / "probabilities.tif", GeoBlock(probs, transform, crs, None))
    from_files = polygonize_raster(tmp_path / "classes.tif", tmp_path / "probabilities.tif", method=method,
                                   block_size=1024)
    corners = [(r, c) for r in range(0, 2000, 512) for c in range(0, 2000, 512)]
    with StreamedPolygons(2000, 2000, transform, crs, method=method, block_size=1024) as streamed:
        for k in rng.permutation(len(corners)):
            r, c = corners[k]
            streamed.add(r, c, mask[r:r + 512, c:c + 512], probs[:, r:r + 512, c:c + 512], BUILDINGS)
    assert len(streamed.frame) == len(from_files) > 100

    def rows(frame):  # blocks come in another order, so do the objects
        return sorted(zip((g.wkb for g in frame.geometry), frame["class"], frame["area"], frame["confidence"]))

    assert rows(streamed.frame) == rows(from_files)


def test_streamed_polygons_stop_with_the_prediction_and_want_every_tile(austin_mask):
    from geolabel.vectorize.polygons import StreamedPolygons

    mask, transform, crs = austin_mask
    probs = np.stack([1 - mask, mask]).astype(np.uint8) * 255
    with pytest.raises(KeyError):  # the prediction's own error comes out, the polygoniser stops
        with StreamedPolygons(1000, 1000, transform, crs, method="mesh", block_size=512) as streamed:
            streamed.add(0, 0, mask[:512, :512], probs[:, :512, :512], BUILDINGS)
            raise KeyError("prediction failed")
    assert streamed.frame is None
    with pytest.raises(RuntimeError, match="every tile"):
        with StreamedPolygons(1000, 1000, transform, crs, method="mesh", block_size=512) as streamed:
            streamed.add(0, 0, mask[:512, :512], probs[:, :512, :512], BUILDINGS)
    with pytest.raises(InputError, match="multiple"):
        StreamedPolygons(1000, 1000, transform, crs, tile=512, block_size=600)
    added = []
    with pytest.raises(InputError, match="tolerance"):  # the polygoniser's error stops the prediction's writer
        with StreamedPolygons(1000, 1000, transform, crs, method="dp", tolerance=-1.0, block_size=512) as streamed:
            for _ in range(100):  # the thread fails at once: a later tile gets its error
                streamed.add(0, 0, mask[:512, :512], probs[:, :512, :512], BUILDINGS)
                added.append(1)
                time.sleep(0.05)
    assert len(added) < 100
