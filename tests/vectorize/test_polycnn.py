"""PolyCNN samples, schedule and inference (geolabel.vectorize.polycnn) on real OAM/OSM data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from rasterio.features import rasterize
from shapely.geometry import Polygon, box

from geolabel.config import load_config
from geolabel.errors import InputError
from geolabel.models.polycnn import build_polycnn, polygon_distance
from geolabel.vectorize.polycnn import geometry, inference, samples, synthetic, training


def test_generator_polygons_valid_inside_frame_and_clockwise():
    rng = np.random.default_rng(0)
    for _ in range(300):
        quad = synthetic.random_quadrilateral(rng)
        assert quad.shape == (4, 2)
        assert Polygon(quad).is_valid
        assert quad.min() >= 0 and quad.max() <= 1
        assert geometry.signed_area(quad) > 0


def test_artificial_batches_images_and_targets():
    images, vertices = next(synthetic.artificial_batches(6, patch=64, seed=1))
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.float32
    assert vertices.shape == (6, 8)
    assert 0 <= images.min() and images.max() <= 255
    for image, v in zip(images, vertices, strict=True):
        quad = Polygon(v.reshape(4, 2) * 64)
        assert quad.is_valid and box(0, 0, 64, 64).contains(quad)
        inside = rasterize([(quad.buffer(-1.5), 1)], out_shape=(64, 64), fill=0, dtype="uint8").astype(bool)
        outside = ~rasterize([(quad.buffer(1.5), 1)], out_shape=(64, 64), fill=0, dtype="uint8").astype(bool)
        # the roof is drawn where the polygon is: its colour differs from the ground around it
        assert np.abs(image[inside].mean(0) - image[outside].mean(0)).max() > 5


def test_orient_and_quad_from_polygon():
    ring = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], dtype=float)  # counter-clockwise on screen
    assert geometry.signed_area(ring) < 0
    assert geometry.signed_area(geometry.orient(ring)) > 0
    notched = Polygon([(0, 0), (5, 0.05), (10, 0), (10, 6), (10, 10), (0, 10)])
    quad = geometry.quad_from_polygon(notched, tolerance=0.3)
    assert quad is not None and len(quad) == 4
    l_shape = Polygon([(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)])
    assert geometry.quad_from_polygon(l_shape, tolerance=0.3) is None


def test_dihedral_moves_vertices_with_the_pixels():
    patch = 32
    yy, xx = np.mgrid[0:patch, 0:patch].astype("float32")
    image = np.stack([xx, yy, np.zeros_like(xx)], axis=-1)  # each pixel holds its own (col, row)
    quad = geometry.orient(np.array([[0.1, 0.2], [0.8, 0.15], [0.9, 0.7], [0.2, 0.9]]))
    corners = np.floor(quad * patch).astype(int)  # pixel holding each vertex
    for k in range(8):
        out, v = samples.dihedral(image, quad, k)
        assert geometry.signed_area(v) > 0
        moved = np.floor(v * patch).astype(int)
        seen = {tuple(out[r, c, :2].astype(int)) for c, r in moved}
        assert seen == {tuple(c) for c in corners}


def test_loss_matches_shift_of_dihedral_target():
    quad = synthetic.random_quadrilateral(np.random.default_rng(3)).reshape(1, 8).astype("float32")
    shifted = np.roll(quad.reshape(1, 4, 2), 1, axis=1).reshape(1, 8)
    assert float(np.asarray(polygon_distance(quad, shifted))[0]) == pytest.approx(0, abs=1e-5)


def city(shared_data, name: str) -> list[str]:
    """A shared OAM/OSM city as a scene: its XYZ tile folder and its OSM buildings."""
    folder = shared_data / "oam-osm" / name
    return [str(folder / "tiles"), str(folder / "osm-buildings.geojson")]


@pytest.fixture(scope="module")
def virac(shared_data):
    return samples.load_scene(samples.Scene(*city(shared_data, "virac-ph")), zoom=19, tolerance_m=0.5)


def test_real_quadrilaterals_and_jittered_crops(virac):
    assert virac.image.ndim == 3 and virac.image.shape[2] == 3
    assert 30 <= len(virac.quads) <= virac.buildings
    h, w = virac.image.shape[:2]
    for q in virac.quads:
        assert q.shape == (4, 2) and Polygon(q).is_valid and geometry.signed_area(q) > 0
        assert 0 <= q[:, 0].min() and q[:, 0].max() < w and 0 <= q[:, 1].min() and q[:, 1].max() < h
    images, targets = samples.scene_examples(virac, copies=2, patch=67, jitter=0.5, seed=0)
    assert images.shape == (2 * len(virac.quads), 67, 67, 3)
    assert targets.min() >= 0 and targets.max() <= 1
    assert not np.allclose(targets[0], targets[1])  # two jittered crops of one building differ
    # un-jittered crop: the building's bbox sits centred with the margin around it
    q = virac.quads[0]
    crop = samples.quad_crop(virac.image, q, margin=0.25, patch=67)
    uv = crop.to_crop(q)
    extent = (uv.max(0) - uv.min(0)).max()
    assert extent == pytest.approx(1 / 1.25, rel=1e-6)
    np.testing.assert_allclose(crop.to_source(uv), q)


def test_scene_from_a_raster_and_a_classed_vector_file(virac, shared_data, tmp_path):
    """A `geolabel fetch`-style scene (GeoTIFF + labels with a class column) gives the tile folder's quadrilaterals."""
    import geopandas as gpd

    from geolabel.data.raster import GeoBlock, write_raster

    image = tmp_path / "imagery.tif"
    write_raster(image, GeoBlock(virac.image.transpose(2, 0, 1).copy(), virac.transform, "EPSG:3857", 0))
    buildings = gpd.read_file(city(shared_data, "virac-ph")[1]).assign(**{"class": "building"})
    roads = buildings.head(20).assign(**{"class": "road"})  # other classes never train PolyCNN
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(pd.concat([roads, buildings]), crs=buildings.crs).to_file(labels, layer="labels")
    scene = samples.load_scene(samples.Scene(str(image), str(labels)), tolerance_m=0.5)
    assert scene.buildings == virac.buildings
    assert len(scene.quads) == len(virac.quads)
    np.testing.assert_allclose(np.stack(scene.quads), np.stack(virac.quads))


def test_staged_schedule_freezes_decoder_then_extractor():
    model = build_polycnn(width=4, encoder_hidden=16)
    batches = synthetic.artificial_batches(4, seed=0)

    def snapshot():
        return {n: [w.copy() for w in model.get_layer(n).get_weights()] for n in ("feature_extractor", "encoder", "decoder")}

    def changed(a, b, name):
        return any(not np.array_equal(x, y) for x, y in zip(a[name], b[name], strict=True))

    before = snapshot()
    history = training.train_staged(model, batches, steps=2, decoder_frozen_steps=2, extractor_frozen_steps=2)
    after = snapshot()
    assert [h["stage"] for h in history] == ["encoder-only"]
    assert changed(before, after, "encoder")
    assert not changed(before, after, "decoder") and not changed(before, after, "feature_extractor")

    history = training.train_staged(model, batches, steps=2, decoder_frozen_steps=0, extractor_frozen_steps=2)
    later = snapshot()
    assert [h["stage"] for h in history] == ["extractor-frozen"]
    assert changed(after, later, "decoder") and not changed(after, later, "feature_extractor")
    with pytest.raises(InputError, match="decoder_frozen_steps"):
        training.train_staged(model, batches, steps=2, decoder_frozen_steps=3, extractor_frozen_steps=2)


def test_polygonize_components_georeferenced(virac, tmp_path, monkeypatch):
    from shapely import affinity

    from geolabel.classes import BUILDINGS
    from geolabel.data.raster import GeoBlock, write_raster
    from geolabel.vectorize import POLYGONIZERS

    # class raster: a real window of Virac with its quadrilateral buildings burnt in
    x0, y0 = virac.quads[0].min(0).astype(int) - 40
    x0, y0 = max(x0, 0), max(y0, 0)
    window = virac.image[y0 : y0 + 200, x0 : x0 + 200]
    shapes = [affinity.translate(Polygon(q), -x0, -y0) for q in virac.quads]
    classes = rasterize([(s, 1) for s in shapes], out_shape=window.shape[:2], fill=0, dtype="uint8")
    probs = np.stack([1 - classes * 0.8, classes * 0.8]).astype("float32")  # (K, h, w) as predict writes
    transform = virac.transform * virac.transform.translation(x0, y0)
    model = build_polycnn(width=4, encoder_hidden=16)
    polygonize = POLYGONIZERS["polycnn"]
    assert polygonize is inference.polygonize_polycnn
    frame = polygonize(classes, transform, "EPSG:3857", probs, class_map=BUILDINGS, image=window, model=model)
    assert len(frame) >= 1
    assert list(frame.columns) == ["class", "area", "confidence", "geometry"]
    assert set(frame["class"]) == {"building"}
    assert np.allclose(frame["confidence"], 0.8)
    assert (frame["area"] > 0).all()
    left, top = transform * (0, 0)
    right, bottom = transform * (200, 200)
    extent = box(left, bottom, right, top).buffer(30)
    assert all(extent.contains(g) for g in frame.geometry)
    assert all(g.is_valid and len(g.exterior.coords) in (4, 5) for g in frame.geometry)
    assert frame.crs.to_epsg() == 3857
    # imagery as a raster file on the grid, model from the environment (a saved run's model.keras)
    image_path = tmp_path / "image.tif"
    write_raster(image_path, GeoBlock(window.transpose(2, 0, 1).copy(), transform, "EPSG:3857", None))
    model.save(tmp_path / "model.keras")
    monkeypatch.setenv(inference.MODEL_ENV, str(tmp_path))
    again = polygonize(classes, transform, "EPSG:3857", None, image=image_path, min_area=0.0)
    assert len(again) == len(frame) and set(again["class"]) == {"1"}
    np.testing.assert_allclose(again["area"], frame["area"], rtol=1e-4)
    assert inference.polygonize_polycnn(classes, transform, "EPSG:3857", image=window, min_area=1e9).empty
    # through the predict layer's file entry point, as `geolabel predict --polygons polycnn` calls it
    from geolabel.vectorize.polygons import polygonize_raster

    classes_path, probs_path = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    write_raster(classes_path, GeoBlock(classes[None], transform, "EPSG:3857", None))
    write_raster(probs_path, GeoBlock((probs * 255).round().astype("uint8"), transform, "EPSG:3857", None))
    via_file = polygonize_raster(classes_path, probs_path, method="polycnn", image=image_path, min_area=0.0)
    assert len(via_file) == len(frame)
    np.testing.assert_allclose(via_file["confidence"], 0.8, atol=0.01)
    with pytest.raises(InputError, match="image"):
        polygonize(classes, transform, "EPSG:3857", image=window[:10], model=model)
    with pytest.raises(InputError, match="imagery"):
        polygonize(classes, transform, "EPSG:3857", model=model)
    monkeypatch.delenv(inference.MODEL_ENV)
    with pytest.raises(InputError, match=inference.MODEL_ENV):
        polygonize(classes, transform, "EPSG:3857", image=window)


def test_cli_polycnn_train_writes_run(shared_data, tmp_path):
    from geolabel.cli import cli

    out = tmp_path / "run"
    args = [
        "polycnn-train", "--train", *city(shared_data, "virac-ph"), "--zoom", "19", "--width", "4",
        "--batch-size", "4", "--pretrain-steps", "2", "--steps", "3", "--decoder-frozen-steps", "1",
        "--extractor-frozen-steps", "2", "--transfer", "decoder", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--val", *city(shared_data, "kampala-ug")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "model.keras", "history.csv", "metrics.json"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_scenes"] == [city(shared_data, "kampala-ug")[0]] and metrics["val"]["count"] > 50
    assert 0 <= metrics["val"]["mean_iou"] <= 1
    stages = [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert stages == ["artificial", "encoder-only", "extractor-frozen", "all"]
    model = inference.load_polycnn(out)
    assert model.output_shape == (None, 8)
    # the run's config.yaml trains again as it is (scenes written as {imagery, labels} mappings)
    config = load_config(training.PolyCNNConfig, out / "config.yaml")
    assert config.val == [samples.Scene(*city(shared_data, "kampala-ug"))] and config.zoom == 19

    bad = CliRunner().invoke(cli, [*args, "--val", "atlantis.tif", "atlantis.gpkg"])
    assert isinstance(bad.exception, InputError) and "atlantis" in str(bad.exception)


def test_cli_polycnn_train_refuses_missing_data(shared_data, tmp_path, capsys):
    from geolabel.cli import main

    for missing, given in (("--train", "--val"), ("--val", "--train")):
        with pytest.raises(SystemExit) as exit_:
            main(["polycnn-train", given, *city(shared_data, "virac-ph"), "--out", str(tmp_path / "run")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert missing in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="zoom"):  # the shared tile folders hold zoom levels 19, 20 and 21
        samples.load_scene(samples.Scene(*city(shared_data, "virac-ph")))
