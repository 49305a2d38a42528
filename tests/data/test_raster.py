import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geolabel.data.raster import RasterWriter, iter_windows, open_raster, read_block, read_raster, write_raster
from geolabel.errors import InputError
from tests.cog import cog_problems


def test_round_trip_preserves_georeferencing(shared_data, tmp_path):
    src_path = shared_data / "inria-austin" / "image.tif"
    block = read_raster(src_path)
    out = write_raster(tmp_path / "copy.tif", block)
    back = read_raster(out)
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert dst.nodata == src.nodata
        assert dst.dtypes == src.dtypes
    np.testing.assert_array_equal(back.array, block.array)
    assert cog_problems(out) == []


def test_sixteen_bit_single_band_written_window_by_window(shared_data, tmp_path):
    src_path = shared_data / "spacenet" / "atlanta-pan.tif"
    with open_raster(src_path) as src:
        assert src.count == 1 and src.dtypes[0] == "uint16"
        with RasterWriter(tmp_path / "pan.tif", width=src.width, height=src.height, count=1, dtype="uint16",
                          crs=src.crs, transform=src.transform, nodata=0, blocksize=256) as writer:
            for window in iter_windows(src.width, src.height, 256):
                writer.write(read_block(src, window).array, window)
        whole = src.read()
    back = read_raster(tmp_path / "pan.tif")
    assert back.array.dtype == np.uint16 and back.nodata == 0
    np.testing.assert_array_equal(back.array, whole)
    assert cog_problems(tmp_path / "pan.tif") == []


def test_boundless_read_fills_outside_with_nodata(shared_data):
    with open_raster(shared_data / "inria-austin" / "image.tif") as src:
        block = read_block(src, Window(-10, -10, 20, 20), boundless=True)
    assert block.array.shape == (3, 20, 20)
    assert (block.array[:, :10, :10] == 0).all()


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.tif: no such file"):
        read_raster(tmp_path / "missing.tif")


def test_corrupt_file_names_the_file(tmp_path, shared_data):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes((shared_data / "inria-austin" / "image.tif").read_bytes()[:300])
    with pytest.raises(InputError, match="corrupt.tif: not a readable raster"):
        read_raster(bad)


def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with RasterWriter(target, width=64, height=64, count=1, dtype="uint8", crs="EPSG:3857",
                          transform=rasterio.transform.from_origin(0, 64, 1, 1)) as writer:
            writer.write(np.ones((32, 64), np.uint8), Window(0, 0, 64, 32))
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_cog_validation_is_rio_cogeo_less_only_its_one_block_wide_false_alarm(shared_data, tmp_path):
    """A tiled COG one 512 px block wide passes (rio-cogeo alone calls it "not tiled"); the same
    pixels as a striped GeoTIFF fail for what they are."""
    from rio_cogeo.cogeo import cog_validate

    with open_raster(shared_data / "inria-austin" / "image.tif") as src:
        pixels = src.read(window=Window(0, 0, 512, 1000))
        crs, transform = src.crs, src.transform
    with RasterWriter(tmp_path / "narrow.tif", width=512, height=1000, count=3, dtype="uint8", crs=crs,
                      transform=transform, blocksize=512) as writer:
        writer.write(pixels, Window(0, 0, 512, 1000))
    assert not cog_validate(tmp_path / "narrow.tif", quiet=True)[0]  # the library's false alarm
    assert cog_problems(tmp_path / "narrow.tif") == []
    with rasterio.open(tmp_path / "striped.tif", "w", driver="GTiff", width=512, height=1000, count=3,
                       dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(pixels)
    assert any("not tiled" in p for p in cog_problems(tmp_path / "striped.tif"))
