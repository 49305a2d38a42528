import numpy as np
import pytest

from geolabel.data.raster import read_raster
from geolabel.data.standardize import (REFERENCE_MEAN, REFERENCE_STD, BandStats, band_stats, raster_band_stats,
                                       standardize)
from geolabel.errors import InputError


@pytest.fixture(scope="module")
def austin(shared_data):
    path = shared_data / "inria-austin" / "image.tif"
    return path, read_raster(path).array.transpose(1, 2, 0)


def test_standardized_scene_has_the_reference_statistics(austin):
    _, image = austin
    out = standardize(image, band_stats(image))
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), REFERENCE_MEAN, atol=3)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), REFERENCE_STD, rtol=0.08)


def test_lookup_table_path_matches_the_float_path(austin):
    _, image = austin
    stats = band_stats(image)
    via_table = standardize(image, stats)
    via_float = standardize(image.astype(np.float32), stats)
    np.testing.assert_allclose(via_table, via_float, atol=1e-3)
    as_bytes = standardize(image, stats, np.uint8)
    assert as_bytes.dtype == np.uint8
    assert np.abs(as_bytes.astype(np.float32) - via_float).max() <= 0.5 + 1e-3


def test_decimated_raster_statistics_match_the_full_image(austin):
    path, image = austin
    full, sampled = band_stats(image), raster_band_stats(path)
    np.testing.assert_allclose(sampled.mean, full.mean, rtol=0.02)
    np.testing.assert_allclose(sampled.std, full.std, rtol=0.03)
    assert BandStats.from_dict(sampled.to_dict()) == sampled


def test_valid_mask_excludes_nodata(austin):
    _, image = austin
    padded = np.zeros((image.shape[0] * 2, *image.shape[1:]), image.dtype)
    padded[: image.shape[0]] = image
    valid = np.zeros(padded.shape[:2], bool)
    valid[: image.shape[0]] = True
    np.testing.assert_allclose(band_stats(padded, valid).mean, band_stats(image).mean, rtol=1e-6)


def test_bad_input_names_the_problem(austin):
    _, image = austin
    with pytest.raises(InputError, match="no valid pixels"):
        band_stats(image, np.zeros(image.shape[:2], bool))
    with pytest.raises(InputError, match="4 bands"):
        standardize(np.zeros((4, 4, 4), np.uint8), band_stats(image))


def test_means_only_keeps_the_scene_contrast(austin):
    _, image = austin
    stats = band_stats(image)
    out = standardize(image, stats.means_only())
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), REFERENCE_MEAN, atol=3)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), stats.std, rtol=0.08)


def test_with_contrast_picks_full_or_means_only_statistics(austin):
    _, image = austin
    stats = band_stats(image)
    assert stats.with_contrast(True) == stats
    assert stats.with_contrast(False) == stats.means_only() != stats
