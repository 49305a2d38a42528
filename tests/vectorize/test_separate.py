"""One polygon per building: touching buildings of a real map, bridged as a 0.3 m model bridges
them, come apart again; buildings that stand alone are not cut."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage

from geolabel.evaluate.metrics import instance_scores, polygon_scores
from geolabel.vectorize.polygons import polygonize_raster
from geolabel.vectorize.separate import building_instances, carve_instances, distance_to_background, separate_buildings

PIXEL = 0.3


@pytest.fixture(scope="module")
def kampala(shared_data):
    """Real OSM buildings of dense central Kampala (200 m square, 0.3 m pixels): (ids, transform, polygons)
    and the building mask a 0.3 m model tends to paint: gaps under ~1 m between neighbours closed."""
    buildings = gpd.read_file(shared_data / "oam-osm" / "kampala-ug" / "osm-buildings.geojson").to_crs(32636)
    cx, cy = buildings.geometry.centroid.x.median(), buildings.geometry.centroid.y.median()
    half = 100.0
    inside = buildings[buildings.within(shapely.box(cx - half, cy - half, cx + half, cy + half))].geometry
    transform = from_origin(cx - half, cy + half, PIXEL, PIXEL)
    side = int(2 * half / PIXEL)
    ids = rasterize([(g, i + 1) for i, g in enumerate(inside)], out_shape=(side, side), transform=transform, dtype="int32")
    bridged = ndimage.binary_closing(ids > 0, iterations=2)
    return ids, bridged, transform, list(shapely.make_valid(inside.values))


def test_bridged_neighbours_come_apart_as_one_region_per_building(kampala):
    ids, bridged, _, polygons = kampala
    blobs, n_blobs = ndimage.label(bridged)
    assert n_blobs < len(polygons) - 10  # the bridging merged many neighbours
    instances = building_instances(bridged, PIXEL)
    regions, n_regions = ndimage.label(carve_instances(instances))
    assert n_regions == len(np.unique(instances)) - 1  # carving keeps one region per instance
    plain, split = instance_scores(blobs, ids), instance_scores(regions, ids)
    assert split["f1"] > plain["f1"] + 0.1 and split["recall"] > plain["recall"] + 0.1
    assert split["precision"] >= 0.9  # and the pieces are buildings, not slivers


def test_distance_to_background_is_scipys_to_the_last_bit(kampala):
    """The fast kernel gives the exact float64 distances of scipy's transform, so the cores,
    floods and junction widths (and the polygons) are those scipy's would give."""
    _, bridged, _, _ = kampala
    expected = ndimage.distance_transform_edt(bridged)
    assert np.array_equal(distance_to_background(bridged), expected)
    assert distance_to_background(np.zeros((4, 4), bool)).sum() == 0


def test_separate_buildings_leaves_isolated_buildings_whole(kampala):
    ids, _, _, _ = kampala
    alone = np.isin(ids, [i for i in range(1, ids.max() + 1) if (ids == i).any()][:5])
    classes = alone.astype(np.uint8)
    _, before = ndimage.label(classes == 1)
    out = separate_buildings(classes, 1, PIXEL)
    _, after = ndimage.label(out == 1)
    assert after == before
    assert (out != classes).sum() <= 0.01 * classes.sum()
    assert separate_buildings(np.zeros((8, 8), np.uint8), 1, PIXEL).sum() == 0


def test_polygons_of_a_class_raster_are_one_per_building(kampala, tmp_path):
    _, bridged, transform, polygons = kampala
    path = tmp_path / "classes.tif"
    with rasterio.open(path, "w", driver="GTiff", width=bridged.shape[1], height=bridged.shape[0], count=1,
                       dtype="uint8", crs="EPSG:32636", transform=transform) as dst:
        dst.write(bridged.astype(np.uint8), 1)
    merged = polygonize_raster(path, method="dp", separate=False, min_area=2.0)
    split = polygonize_raster(path, method="dp", min_area=2.0)  # separation is the default
    assert len(merged) < len(split) <= len(polygons)
    assert polygon_scores(split.geometry, polygons)["f1"] > polygon_scores(merged.geometry, polygons)["f1"] + 0.1


def test_no_blob_is_lost_to_a_neighbours_flood(shared_data):
    """Each blob is split on its own. Flooded together, cores reached other blobs across the
    background, and carving (which keeps each id's largest piece) then dropped whole blobs: 24 of
    the 23,270 bright regions of the real Austin image below."""
    with rasterio.open(shared_data / "inria-austin" / "image.tif") as src:
        grey = src.read().astype(np.float32).mean(axis=0)
    mask = grey > np.percentile(grey, 60)
    blobs, n_blobs = ndimage.label(mask)
    kept = carve_instances(building_instances(mask, PIXEL))
    assert (np.bincount(blobs[kept], minlength=n_blobs + 1)[1:] > 0).all()


@pytest.mark.parametrize("pixel", [0.3, 0.075])
def test_two_buildings_joined_by_a_neck_split_at_the_neck(pixel):
    """Each core floods downhill: the split falls in the neck, each building keeps all of itself."""
    side = round(3.6 / pixel)  # two 3.6 m squares, 3 m apart, joined by a 0.6 m wide neck
    mask = np.zeros((side + 10, 2 * side + round(3 / pixel) + 10), bool)
    left, right = np.s_[5:5 + side, 5:5 + side], np.s_[5:5 + side, 5 + side + round(3 / pixel):-5]
    mask[left] = mask[right] = True
    neck = max(1, round(0.3 / pixel))
    mask[5 + side // 2 - neck:5 + side // 2 + neck, 5 + side:-5 - side] = True
    instances = building_instances(mask, pixel)
    assert len(np.unique(instances[left])) == len(np.unique(instances[right])) == 1
    assert instances[left][0, 0] != instances[right][0, 0]
