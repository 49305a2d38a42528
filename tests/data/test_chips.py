import numpy as np

from geolabel.data.chips import Chip, read_chips, shard_paths, write_shards


def test_chips_round_trip_with_exact_bounds(tmp_path, shared_data):
    from geolabel.data.raster import read_raster

    block = read_raster(shared_data / "inria-austin" / "image.tif")
    image = np.moveaxis(block.array[:, :64, :64], 0, -1)
    mask = np.where(image[..., 0] > 128, 1, 0).astype(np.uint8)
    mask[:4] = 255
    bounds = (4352819.123456, -696321.987654, 4352838.223456, -696302.887654)  # Web-Mercator magnitudes
    chips = [Chip(image, mask, bounds, "EPSG:3857", "austin")] * 3
    write_shards(chips, tmp_path, "train", chips_per_shard=2)
    paths = shard_paths(tmp_path, "train")
    assert [p.name for p in paths] == ["train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz"]
    back = list(read_chips(paths))
    assert len(back) == 3
    np.testing.assert_array_equal(back[0].image, image)
    np.testing.assert_array_equal(back[0].mask, mask)
    assert back[0].bounds == bounds and back[0].crs == "EPSG:3857" and back[0].source == "austin"
