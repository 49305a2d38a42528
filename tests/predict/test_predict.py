"""predict_raster on real imagery: blending, seams, georeferencing, nodata, errors, atomic output."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geolabel.classes import IGNORE
from tests.cog import cog_problems
from geolabel.errors import InputError
from geolabel.predict import (
    blend_weights,
    fit_window,
    keras_predict_fn,
    plan_windows,
    predict_in_tiles,
    predict_raster,
)
from geolabel.predict.predictor import argmax_planes


def _crop(src_path: Path, dst: Path, size: int, row: int = 0, col: int = 0, **profile_updates) -> Path:
    with rasterio.open(src_path) as src:
        window = Window(col, row, size, size)
        data = src.read(window=window)
        profile = src.profile | {"width": size, "height": size, "transform": src.window_transform(window),
                                 "tiled": True, "blockxsize": 128, "blockysize": 128, **profile_updates}
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="module")
def austin(shared_data, tmp_path_factory) -> Path:
    """A 320 x 320 crop of the real Inria Austin image (EPSG:26914, 0.3 m)."""
    return _crop(shared_data / "inria-austin" / "image.tif", tmp_path_factory.mktemp("img") / "austin.tif", 320, 300, 250)


@pytest.fixture(scope="module")
def unet():
    from geolabel.models import build_model

    keras.utils.set_random_seed(3)
    return build_model("unet", 2, depth=2, width=4, norm="batch")  # group norm would depend on the window


def _pixelwise_model(channels: int = 3) -> keras.Model:
    """A per-pixel model (1x1 convs): any tiling must reproduce the whole-image output exactly."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 1, activation="relu")(x)
    x = keras.layers.Conv2D(2, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


def _whole(model, path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        image = src.read().transpose(1, 2, 0)[None].astype("float32")
    return np.asarray(model(image, training=False))[0]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_windows_cover_the_raster_and_weights_are_smooth():
    plan = plan_windows(1000, 700, 256, 32)
    assert plan.rows[-1] + 256 == 700 and plan.cols[-1] + 256 == 1000
    assert all(b - a <= 256 - 32 for a, b in zip(plan.cols, plan.cols[1:]))
    w = blend_weights(256, 32)
    assert w.min() > 0 and w[32:-32, 32:-32].min() == 1.0
    assert np.abs(np.diff(w, axis=0)).max() < 0.1  # no step anywhere
    with pytest.raises(InputError, match="overlap"):
        plan_windows(100, 100, 64, 40)


@pytest.mark.parametrize("width, height", [(8192, 8192), (8192, 37888), (1000, 700), (4100, 300), (129, 129)])
def test_fitted_windows_keep_the_window_count_and_cut_the_recomputed_pixels(width, height):
    plan = plan_windows(width, height, 1024, 64)
    side = fit_window(width, height, 1024, 64, stride=4)
    fitted = plan_windows(width, height, side, 64)
    assert side % 4 == 0 and side <= 1024
    assert len(fitted) == len(plan)
    assert fitted.rows[-1] + side >= height and fitted.cols[-1] + side >= width
    # neighbouring windows overlap by at least the asked overlap, and no window is smaller than needed
    assert all(b - a <= side - 64 for axis in (fitted.rows, fitted.cols) for a, b in zip(axis, axis[1:]))
    assert len(plan_windows(width, height, side - 4, 64)) > len(plan) or side - 4 < 128
    assert len(fitted) * side**2 <= len(plan) * 1024**2


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_argmax_planes_equals_numpy_argmax_ties_included(classes):
    rng = np.random.default_rng(classes)
    planes = rng.integers(0, 4, (classes, 64, 48)).astype(np.float32) / 4  # many exact ties
    got = argmax_planes(planes)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.argmax(planes, axis=0))


def _box5(x: np.ndarray) -> np.ndarray:
    """5x5 mean of (1, H, W, C) with zero padding: a receptive field of radius 2."""
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2)).mean(axis=(-2, -1))


@pytest.mark.parametrize("tile, margin, stride", [(64, 8, 16), (50, 2, 1), (128, 0, 1)])
def test_in_memory_tiles_equal_a_whole_scene_run(austin, tile, margin, stride):
    with rasterio.open(austin) as src:
        image = src.read().transpose(1, 2, 0).astype(np.float32)
    amap = (image[..., :1] > 120).astype(np.float32)
    run = lambda tiles: _box5(tiles[0])[..., :1] + _box5(tiles[1])  # noqa: E731

    got = predict_in_tiles(run, [image, amap], ("edge", "constant"), tile, margin, stride)
    assert got.shape == (*image.shape[:2], 1)
    if margin == 0:  # no context: each tile's border sees its own padding, the cores are still exact
        inner = np.ones(image.shape[:2], bool)
        for edge in range(0, max(image.shape), tile):
            inner[max(edge - 2, 0):edge + 2] = inner[:, max(edge - 2, 0):edge + 2] = False
        inner[-2:] = inner[:, -2:] = False
    else:  # a margin of >= 2 px holds the whole receptive field: equal everywhere
        inner = np.ones(image.shape[:2], bool)
    whole_image = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")[None]
    whole_map = np.pad(amap, ((2, 2), (2, 2), (0, 0)))[None]
    expected = (_box5(whole_image)[..., :1] + _box5(whole_map))[0, 2:-2, 2:-2]
    np.testing.assert_allclose(got[inner], expected[inner], rtol=1e-5, atol=1e-4)


def test_tiled_blended_output_equals_whole_image_run(austin, unet, tmp_path):
    result = predict_raster(unet, austin, tmp_path, window=128, overlap=32, batch_size=3, tta=1,
                            probability_dtype="float32", precision="float32", preview=False)
    assert result.windows == 9
    tiled = _read(result.probabilities).transpose(1, 2, 0)
    whole = _whole(unet, austin)
    diff = np.abs(tiled - whole)
    assert diff.mean() < 2e-3
    assert np.quantile(diff, 0.99) < 0.02
    assert (np.argmax(tiled, -1) == np.argmax(whole, -1)).mean() > 0.99


def test_pixelwise_model_tiles_exactly_without_seams(austin, tmp_path):
    model = _pixelwise_model()
    result = predict_raster(model, austin, tmp_path, window=96, overlap=24, batch_size=4,
                            probability_dtype="float32", precision="float32", preview=False)
    tiled = _read(result.probabilities).transpose(1, 2, 0)
    np.testing.assert_allclose(tiled, _whole(model, austin), atol=1e-5)


def test_no_seam_artefacts_at_window_borders(austin, unet, tmp_path):
    result = predict_raster(unet, austin, tmp_path, window=128, overlap=32, probability_dtype="float32", precision="float32", preview=False)
    prob = _read(result.probabilities)[1]
    step = np.abs(np.diff(prob, axis=1)).mean(axis=0)  # mean jump between neighbouring columns
    plan = plan_windows(320, 320, 128, 32)
    seams = sorted({c - 1 for c in plan.cols[1:]} | {c + 128 - 1 for c in plan.cols[:-1]})
    others = np.delete(step, seams)
    assert step[seams].max() < 3 * np.median(others) + 1e-4


def test_outputs_keep_the_input_georeferencing_and_are_cogs(austin, unet, tmp_path):
    result = predict_raster(unet, austin, tmp_path, window=128, overlap=16)
    with rasterio.open(austin) as src:
        expected = (src.crs, src.transform, src.width, src.height)
    for path in (result.classes, result.probabilities):
        with rasterio.open(path) as out:
            assert (out.crs, out.transform, out.width, out.height) == expected
        assert cog_problems(path) == []
    with rasterio.open(result.classes) as out:
        assert out.dtypes[0] == "uint8" and out.nodata == IGNORE
        assert set(np.unique(out.read(1)).tolist()) <= {0, 1}
    with rasterio.open(result.probabilities) as out:
        assert out.count == 2 and out.descriptions == ("background", "building")
        total = out.read().astype(int).sum(0)
        assert np.abs(total - 255).max() <= 1
    assert result.preview.is_file() and result.preview.stat().st_size > 1000


def test_preview_is_sampled_from_the_windows_without_rereading_the_input(austin, tmp_path):
    from PIL import Image

    from geolabel.classes import ClassMap
    from geolabel.predict import render_preview

    result = predict_raster(_pixelwise_model(), austin, tmp_path / "out", window=96, overlap=16, preview_size=100)
    image, classes = _read(austin), _read(result.classes)[0]
    centres = ((np.arange(100) + 0.5) * 320 / 100).astype(int)  # nearest pixel of each preview pixel
    expected = render_preview(image[:, centres][:, :, centres].astype("float32"), "uint8",
                              classes[centres][:, centres], ClassMap(), tmp_path / "expected.png")
    got = np.asarray(Image.open(result.preview))
    assert got.shape[1:] == (100, 3) and got.shape[0] > 100  # the 100 x 100 image, then its legend
    np.testing.assert_array_equal(got, np.asarray(Image.open(expected)))


def test_any_crs_single_band_uint16(shared_data, tmp_path):
    """SpaceNet Las Vegas panchromatic: EPSG:4326, one uint16 band."""
    src_path = _crop(shared_data / "spacenet" / "vegas-pan.tif", tmp_path / "vegas.tif", 200, 500, 500)
    model = _pixelwise_model(channels=1)
    result = predict_raster(model, src_path, tmp_path / "out", window=64, overlap=16, preview=True)
    with rasterio.open(src_path) as src, rasterio.open(result.classes) as out:
        assert out.crs == src.crs and out.crs.is_geographic
        assert out.transform == src.transform


def test_nodata_stays_nodata(austin, unet, tmp_path):
    with rasterio.open(austin) as src:
        data = src.read()
        profile = src.profile | {"nodata": 0}
    hole = np.zeros(data.shape[1:], bool)
    hole[40:140, 60:200] = True
    data[:, (data == 0).all(0) & ~hole] = 1  # keep the rest free of accidental nodata
    data[:, hole] = 0
    path = tmp_path / "holes.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    result = predict_raster(unet, path, tmp_path / "out", window=128, overlap=32)
    classes = _read(result.classes)[0]
    probs = _read(result.probabilities)
    invalid = (data == 0).all(0)
    assert (classes[invalid] == IGNORE).all()
    assert (probs[:, invalid] == 0).all()
    assert (classes[~invalid] != IGNORE).all()


def test_all_nodata_windows_are_not_run(austin, tmp_path):
    with rasterio.open(austin) as src:
        data = src.read()
        profile = src.profile | {"nodata": 0}
    data[data == 0] = 1
    data[:, :, 160:] = 0  # the right half is nodata
    path = tmp_path / "half.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    model = _pixelwise_model()
    calls = []
    predict_fn = keras_predict_fn(model, precision="float32")  # compared with the float32 model

    def counting(x):
        calls.append(len(x))
        return predict_fn(x)

    result = predict_raster(counting, path, tmp_path / "out", window=128, overlap=32, batch_size=1, tta=1,
                            probability_dtype="float32", precision="float32", preview=False)
    assert result.timings["windows_skipped"] > 0
    assert len(calls) + result.timings["windows_skipped"] == len(plan_windows(320, 320, 128, 32))
    probs = _read(result.probabilities)
    expected = _whole(model, path).transpose(2, 0, 1)
    assert np.isnan(probs[:, :, 160:]).all()
    np.testing.assert_allclose(probs[:, :, :160], expected[:, :, :160], atol=1e-5)


def test_corrupt_or_missing_input_gives_a_clear_error(tmp_path, unet):
    bad = tmp_path / "not-a-raster.tif"
    bad.write_text("this is not a GeoTIFF")
    with pytest.raises(InputError, match="not-a-raster.tif: not a readable raster"):
        predict_raster(unet, bad, tmp_path / "out")
    with pytest.raises(InputError, match="no such file"):
        predict_raster(unet, tmp_path / "missing.tif", tmp_path / "out")
    assert not (tmp_path / "out" / "classes.tif").exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_run_leaves_no_partial_output(austin, unet, tmp_path, error):
    predict_fn = keras_predict_fn(unet, precision="float32")
    calls = []

    def failing(batch: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise error("interrupted")
        return predict_fn(batch)

    failing.stride = predict_fn.stride
    out = tmp_path / "out"
    with pytest.raises(error):
        predict_raster(failing, austin, out, window=64, overlap=16, batch_size=2)
    assert not (out / "classes.tif").exists() and not (out / "probabilities.tif").exists()
    assert [p.name for p in out.iterdir()] == [] if out.exists() else True


@pytest.mark.parametrize("transforms", [2, 8])
def test_tta_equals_plain_run_for_a_pixelwise_model(austin, tmp_path, transforms):
    model = _pixelwise_model()
    plain = predict_raster(model, austin, tmp_path / "a", window=128, overlap=32, probability_dtype="float32", precision="float32",
                           preview=False)
    tta = predict_raster(model, austin, tmp_path / "b", window=128, overlap=32, probability_dtype="float32", precision="float32",
                         tta=transforms, preview=False)
    np.testing.assert_allclose(_read(tta.probabilities), _read(plain.probabilities), atol=1e-5)
    with pytest.raises(InputError, match="--tta"):
        predict_raster(model, austin, tmp_path / "c", tta=True)


def test_predict_averages_each_window_with_its_mirror_by_default(austin, tmp_path):
    predict_fn = keras_predict_fn(_pixelwise_model(), precision="float32")
    calls = []

    def counting(x):
        calls.append(len(x))
        return predict_fn(x)

    result = predict_raster(counting, austin, tmp_path, window=128, overlap=32, preview=False)
    assert len(calls) == 2 * result.windows
    with rasterio.open(result.probabilities) as src:
        assert src.tags()["tta"] == "2"


def test_tta_maps_each_transform_back_before_averaging():
    """A 'model' that answers each pixel's row: a mirror keeps rows, a half turn reverses them, so
    2 transforms (identity + mirror) give the rows back and 4 (+ half turn) their mean everywhere."""
    from geolabel.predict import tta_predict

    def rows(batch):
        b, h, w, _ = batch.shape
        return np.broadcast_to(np.arange(h, dtype=np.float32)[None, :, None, None], (b, h, w, 1))

    x = np.zeros((1, 6, 6, 3), np.float32)
    np.testing.assert_allclose(tta_predict(rows, x, transforms=2), rows(x))
    np.testing.assert_allclose(tta_predict(rows, x, transforms=4), np.full((1, 6, 6, 1), 2.5))


@pytest.mark.parametrize("transforms", [1, 2, 4, 8])
def test_a_keras_predictor_averages_the_transforms_in_its_step_as_tta_predict_does(austin, unet, transforms):
    """Transforms run inside the compiled step give the mean of one model call per transform (a
    U-Net on a non-square window of real imagery: not symmetric, so each transform changes the answer)."""
    from geolabel.predict import tta_predict

    with rasterio.open(austin) as src:
        x = src.read(window=Window(0, 0, 128, 96)).transpose(1, 2, 0)[None].astype(np.float32)
    fn = keras_predict_fn(unet, precision="float32")
    one_call_each = tta_predict(lambda batch: fn(batch), x, transforms=transforms)
    np.testing.assert_allclose(tta_predict(fn, x, transforms=transforms), one_call_each, atol=1e-6)
    assert (np.abs(one_call_each - fn(x)).max() > 1e-4) == (transforms > 1)


@pytest.mark.parametrize("ops", ["numpy", "keras"])
def test_d4_is_numpys_dihedral_group_on_non_square_batches(ops):
    from geolabel.predict.predictor import _d4, _d4_inverse

    x = np.arange(2 * 3 * 5 * 2, dtype=np.float32).reshape(2, 3, 5, 2)
    namespace = np if ops == "numpy" else keras.ops
    for k in range(8):
        expected = np.rot90(x, k % 4, axes=(1, 2))[:, :, ::-1] if k >= 4 else np.rot90(x, k, axes=(1, 2))
        turned = keras.ops.convert_to_numpy(_d4(keras.ops.convert_to_tensor(x) if ops == "keras" else x, k, namespace))
        np.testing.assert_array_equal(turned, expected)
        back = _d4_inverse(keras.ops.convert_to_tensor(turned) if ops == "keras" else turned, k, namespace)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(back), x)


def test_scene_norm_predicts_the_standardised_scene(austin, tmp_path):
    from geolabel.data.standardize import raster_band_stats, standardize

    model = _pixelwise_model()
    result = predict_raster(model, austin, tmp_path / "a", window=128, overlap=32, probability_dtype="float32", precision="float32",
                            scene_norm=True, preview=False)
    with rasterio.open(austin) as src:
        image = src.read().transpose(1, 2, 0)
    stats = raster_band_stats(austin)
    expected = np.asarray(model(standardize(image, stats)[None], training=False))[0]
    np.testing.assert_allclose(_read(result.probabilities).transpose(1, 2, 0), expected, atol=1e-5)
    with rasterio.open(result.classes) as out:
        assert "scene_band_stats" in out.tags()


def test_memory_holds_only_the_tiles_under_one_row_of_windows(shared_data, tmp_path):
    """A tall raster: the tiles held at once depend on the width and window, not the height."""
    src_path = shared_data / "inria-austin" / "image.tif"
    tall = tmp_path / "tall.tif"
    with rasterio.open(src_path) as src:
        data = src.read(window=Window(0, 0, 128, 1000))
        profile = src.profile | {"width": 128, "height": 1000, "transform": src.window_transform(Window(0, 0, 128, 1000))}
    with rasterio.open(tall, "w", **profile) as dst:
        dst.write(data)
    result = predict_raster(_pixelwise_model(), tall, tmp_path / "out", window=64, overlap=16, tile=32, preview=False)
    held = result.timings["peak_tiles_held"]
    assert held <= (64 // 32 + 2) * (128 // 32)  # < 1/7 of the 128 tiles of the raster


def test_cli_predict_with_a_keras_file_and_polygons(austin, unet, tmp_path):
    from geolabel.cli import main

    model_path = tmp_path / "model.keras"
    unet.save(model_path)
    out = tmp_path / "out"
    main(["predict", os.fspath(model_path), os.fspath(austin), "--out", os.fspath(out), "--window", "128",
          "--overlap", "16", "--polygons", "regularized"])
    for name in ("classes.tif", "probabilities.tif", "preview.png", "polygons.gpkg", "polygons.geojson"):
        assert (out / name).is_file(), name
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", os.fspath(tmp_path / "nope.keras"), os.fspath(austin), "--out", os.fspath(out)])
    assert exit_info.value.code == 2


def test_a_region_predicts_as_the_same_pixels_cut_out_as_a_raster(austin, unet, tmp_path):
    """`predict_region` (what a Beam block runs, into arrays) gives exactly what `predict_raster`
    writes for those pixels saved as a raster of their own, classes and probabilities alike."""
    from geolabel.predict.predictor import predict_region

    cut = _crop(austin, tmp_path / "cut.tif", 192, row=64, col=96)
    fn = keras_predict_fn(unet)
    files = predict_raster(fn, cut, tmp_path / "out", window=128, overlap=32, preview=False)
    region = predict_region(fn, austin, Window(96, 64, 192, 192), window=128, overlap=32)
    np.testing.assert_array_equal(region.classes, _read(files.classes)[0])
    np.testing.assert_array_equal(region.probabilities, _read(files.probabilities))
    with rasterio.open(files.classes) as src:
        assert region.tags.items() <= src.tags().items()


def test_a_huge_input_is_refused_with_its_size_before_any_work(tmp_path, capsys):
    """A 70,000 x 70,000 px raster (4.9 gigapixels) is a one-line error naming it, its size and
    --yes, before the model runs or anything is written; the limit is an argument."""
    from affine import Affine

    from geolabel.cli import main
    from geolabel.models import build_model
    from geolabel.predict.windows import check_job_size

    big = tmp_path / "big.tif"
    with rasterio.open(big, "w", driver="GTiff", width=70_000, height=70_000, count=3, dtype="uint8", tiled=True,
                       sparse_ok=True, crs="EPSG:32614", transform=Affine(0.3, 0, 620_000, 0, -0.3, 3_350_000)):
        pass  # sparse: no block is written, the file stays a few kB
    build_model("fcn", 2).save(tmp_path / "fcn.keras")
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path / "fcn.keras"), str(big), "-o", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(big) in err and "70,000 x 70,000 px" in err and "--yes" in err and "\n" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert check_job_size(70_000, 70_000, big, max_pixels=None) == 4_900_000_000
    assert check_job_size(70_000, 70_000, big, factor=0.25) == 306_250_000  # a coarser model sees 1/16 of it
