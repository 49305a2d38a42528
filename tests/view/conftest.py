"""A real predict folder and a real mapupdate folder over the Virac imagery, made by the commands."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geolabel.cli import main
from tests.align.conftest import virac  # noqa: F401

IMAGERY_CREDIT = "Imagery (c) OpenAerialMap contributors, CC BY 4.0"


def bright_roof_model() -> keras.Model:
    """A per-pixel model calling bright pixels (Virac's metal roofs) buildings: real weights, so
    the commands write real polygons and changes without a training run."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    logits = keras.layers.Conv2D(2, 1)(x)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[..., 1] = 12.0 / 3  # building logit = 12 * (mean brightness - 0.62)
    model.layers[-2].set_weights([kernel, np.array([0.0, -12.0 * 0.62], np.float32)])
    return model


@pytest.fixture(scope="session")
def virac_dataset(virac, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    """(imagery, OSM buildings): a 768 x 384 crop of Virac with imagery in its lower left 512 x 256
    px only (nodata 0 elsewhere), and the imagery's credit line in a dataset manifest beside it."""
    image, labels = virac
    folder = tmp_path_factory.mktemp("virac-dataset")
    window = Window(0, 384, 768, 384)  # two tiles of imagery on the left, none on the right
    with rasterio.open(image) as src:
        profile = src.profile | {"width": window.width, "height": window.height, "transform": src.window_transform(window),
                                 "nodata": 0}
        data = src.read(window=window)
    with rasterio.open(folder / "imagery.tif", "w", **profile) as dst:
        dst.write(data)
    (folder / "manifest.json").write_text(json.dumps({"attribution": [IMAGERY_CREDIT]}))
    return folder / "imagery.tif", labels


@pytest.fixture(scope="session")
def predict_folder(virac_dataset, tmp_path_factory) -> Path:
    """`geolabel predict --polygons dp --vector-format parquet --vector-format geojson --pmtiles` on the crop."""
    root = tmp_path_factory.mktemp("view")
    bright_roof_model().save(root / "model.keras")
    out = root / "predict"
    main(["predict", str(root / "model.keras"), str(virac_dataset[0]), "--out", str(out), "--window", "512",
          "--polygons", "dp", "--no-separate", "--vector-format", "parquet", "--vector-format", "geojson", "--pmtiles"])
    return out


@pytest.fixture(scope="session")
def mapupdate_folder(virac_dataset, predict_folder) -> Path:
    """`geolabel mapupdate --probabilities --pmtiles` of the predict folder against Virac's OSM buildings."""
    image, labels = virac_dataset
    out = predict_folder.parent / "mapupdate"
    main(["mapupdate", str(image), "--osm", str(labels), "--probabilities", str(predict_folder / "probabilities.tif"),
          "--max-shift", "6", "-o", str(out), "--vector-format", "parquet", "--vector-format", "gpkg", "--pmtiles"])
    return out
