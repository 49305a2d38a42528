"""Fixtures: a small real scene (Virac OAM tiles at z19, ~30 cm/px) and its real OSM buildings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.align.oam_mosaic import mosaic


@pytest.fixture(scope="session")
def virac(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """(imagery GeoTIFF, OSM buildings GeoJSON) of Virac, Philippines."""
    city = shared_data / "oam-osm" / "virac-ph"
    image = mosaic(city, 19, tmp_path_factory.mktemp("virac") / "imagery.tif")
    return image, city / "osm-buildings.geojson"


@pytest.fixture(scope="session")
def virac_scene(virac):
    from geolabel.align.data import load_scene

    return load_scene(*virac)
