"""Applying an alignment model to a whole scene, and the `geolabel align` command."""

from __future__ import annotations

import json

import geopandas as gpd
import keras
import numpy as np
import pytest
import shapely

from geolabel.align.apply import SMOOTH_PX, align_geometries, load_alignment_model, predict_field
from geolabel.align.fields import vertex_errors
from geolabel.cli import main
from geolabel.models.alignment import MultiscaleAligner


def constant_field_aligner(dx: float, dy: float) -> MultiscaleAligner:
    """A real chain whose finest block outputs a constant (dx, dy) (zero kernels, set bias)."""
    model = MultiscaleAligner(scales=(4, 2, 1), filters=(4, 4, 8))
    model([np.zeros((1, 32, 32, 3), "float32"), np.zeros((1, 32, 32, 3), "float32")])
    model.blocks[-1].head.bias.assign(np.array([dx, dy], "float32"))
    return model


def test_predict_field_tiles_any_size():
    model = constant_field_aligner(1.5, -2.0)
    image = np.random.default_rng(0).random((70, 100, 3)).astype("float32") * 255
    field = predict_field(model, image, np.zeros((70, 100, 3), "float32"), tile=32, margin=16)
    assert field.shape == (70, 100, 2)
    assert np.allclose(field[..., 0], 1.5, atol=1e-5) and np.allclose(field[..., 1], -2.0, atol=1e-5)


def test_untrained_chain_is_the_identity(virac_scene):
    model = MultiscaleAligner(scales=(4, 2, 1), filters=(4, 4, 8))
    geoms = virac_scene.geoms[:10]
    aligned, field = align_geometries(model, virac_scene.image, geoms, tile=256, tta=False)  # tta: test below
    assert np.allclose(field, 0.0)
    assert np.allclose(vertex_errors(geoms, aligned), 0.0)


def test_constant_field_moves_every_vertex_coarse_to_fine(virac_scene):
    model = constant_field_aligner(2.0, 1.0)
    geoms = virac_scene.geoms[:10]
    aligned, _ = align_geometries(model, virac_scene.image, geoms, factors=(2, 1), tile=256, tta=False)
    # the factor-2 pass moves by 2 x (2, 1) pixels, the full-resolution pass by (2, 1) more
    expected = shapely.get_coordinates(geoms) - 3 * np.array([2.0, 1.0])
    assert np.allclose(shapely.get_coordinates(aligned), expected, atol=1e-4)


class CentroidReader:
    """An exactly rotation- and flip-equivariant stand-in for an aligner: the field everywhere
    is the offset of the map's fill from the bright pixels of the image (centroid to centroid)."""

    stride = 1

    def __call__(self, tiles, training=False):
        image, amap = tiles
        bright = (image[..., 0] > 127).astype("float64")
        fill = amap[..., 0].astype("float64")
        rows, cols = np.mgrid[0 : image.shape[1], 0 : image.shape[2]]

        def centroid(mask):
            return np.array([(mask * cols).sum(), (mask * rows).sum()]) / mask.sum()

        field = np.zeros((*image.shape[:3], 2), "float32")
        for b in range(image.shape[0]):
            field[b] = centroid(fill[b]) - centroid(bright[b])
        return field


def test_d4_averaging_keeps_an_equivariant_reading_and_cancels_a_fixed_pull():
    image = np.zeros((96, 96, 3), "float32")
    image[30:50, 20:44] = 255.0
    drawn = np.array([shapely.box(23, 28, 47, 48)], dtype=object)  # the map is off by (+3, -2)
    for tta in (False, True):
        aligned, field = align_geometries(CentroidReader(), image, drawn, factors=(1,), tile=96, tta=tta, smooth=0.0)
        assert np.allclose(field, [3.0, -2.0], atol=1e-4)
        assert np.allclose(shapely.get_coordinates(aligned), shapely.get_coordinates(shapely.box(20, 30, 44, 50)), atol=1e-3)
    # a pull in one fixed direction, whatever the inputs, turns with the 8 transforms and cancels
    pulled = predict_field(constant_field_aligner(1.5, -0.5), image, np.zeros_like(image), tile=64, tta=True)
    assert np.allclose(pulled, 0.0, atol=1e-5)


def test_align_command(virac, tmp_path, capsys):
    image, labels = virac
    model = constant_field_aligner(0.0, 3.0)
    model.save(tmp_path / "aligner.keras")
    out = tmp_path / "aligned.gpkg"
    main(["align", str(image), str(labels), "--model", str(tmp_path / "aligner.keras"), "-o", str(out), "--tile", "256",
          "--no-tta", "--factors", "1"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    src, got = gpd.read_file(labels), gpd.read_file(out)
    assert summary["polygons"] == len(got) >= len(src)
    assert summary["mean_move_px"] == pytest.approx(3.0, abs=1e-3)  # pooling keeps a constant field
    assert summary["tta"] is False and summary["smooth_px"] == SMOOTH_PX and summary["factors"] == [1]
    assert got.crs == src.crs and "osm_id" in got
    # moved 3 pixels up (north) on a ~0.3 m grid
    dy = got.to_crs(3857).geometry.centroid.y.values - src.explode(index_parts=False).to_crs(3857).geometry.centroid.y.values
    assert np.allclose(dy, dy[0], atol=1e-3) and 0.5 < dy[0] < 1.5


def test_align_command_errors(virac, tmp_path, capsys):
    image, labels = virac
    with pytest.raises(SystemExit) as exit_:
        main(["align", str(image), str(labels), "--model", str(tmp_path / "none.keras"), "-o", str(tmp_path / "x.gpkg")])
    assert exit_.value.code == 2
    assert "none.keras" in capsys.readouterr().err


def test_align_train_command_trains_saves_and_resumes(virac, tmp_path, capsys):
    image, labels = virac
    out = tmp_path / "aligner.keras"
    args = ["align-train", "--scene", str(image), str(labels), "-o", str(out), "--batch-size", "2", "--seed", "3",
            "--save-every", "5"]
    main([*args, "--steps", "10"])
    first = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert first["steps"] == 10 and np.isfinite(first["final_loss"])
    state = json.loads((tmp_path / "aligner.keras.json").read_text())
    assert state["config"]["batch_size"] == 2 and len(state["loss"]) == 2
    # resumed with more steps: the saved optimiser state carries on
    main([*args, "--steps", "15", "--resume"])
    assert json.loads(capsys.readouterr().out.splitlines()[-2])["steps"] == 15
    model = load_alignment_model(out)
    assert isinstance(model, MultiscaleAligner)
    trained = keras.models.load_model(out)
    assert int(trained.optimizer.iterations.numpy()) == 15
    # and `geolabel align` uses it
    main(["align", str(image), str(labels), "--model", str(out), "-o", str(tmp_path / "aligned.geojson"), "--tile", "256",
          "--no-tta"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["polygons"] > 0


def test_align_train_command_errors(virac, tmp_path, capsys):
    image, labels = virac
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 0.001, 0.001)], crs=4326).to_file(far)
    for args, named in [
        (["--scene", str(image), str(far), "-o", str(tmp_path / "a.keras")], "far.geojson"),
        (["--scene", str(image), str(labels), "-o", str(tmp_path / "a.h5")], "a.h5"),
        (["--scene", str(image), str(labels), "-o", str(tmp_path / "b.keras"), "--resume"], "nothing to resume"),
        (["-o", str(tmp_path / "c.keras")], "--scene"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["align-train", *args, "--steps", "1"])
        assert exit_.value.code == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "a.keras").exists()
