"""A dataset folder belongs to one area and imagery: fetching another one into it is refused before
anything of the dataset there is replaced; the same fetch again resumes it."""

from __future__ import annotations

import hashlib

import pytest
import rasterio
from rasterio.warp import transform_bounds

from geolabel.data.fetch import FetchOptions, fetch_dataset
from geolabel.errors import InputError


def test_fetching_another_area_into_a_dataset_folder_is_refused(shared_data, tmp_path):
    image = shared_data / "spacenet" / "atlanta-pan.tif"
    labels = str(shared_data / "spacenet" / "atlanta-buildings.geojson")
    with rasterio.open(image) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    middle = (west + east) / 2
    left, right = (west, south, middle, north), (middle, south, east, north)
    options = FetchOptions(chip_size=128, split_block=1, val_fraction=0.3)
    folder = tmp_path / "atlanta"
    first = fetch_dataset(folder, str(image), labels, bbox=left, options=options)
    files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="holds the dataset of .*atlanta-pan.tif over .* would replace its imagery, "
                                         "labels and chips: give a new --out folder") as err:
        fetch_dataset(folder, str(image), labels, bbox=right, options=options)
    assert err.value.source == str(folder)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()} == files
    assert fetch_dataset(folder, str(image), labels, bbox=left, options=options) == first  # the same fetch resumes
