"""Fixtures: a small real scene (Virac OAM tiles at z19, ~30 cm/px) and its real OSM buildings."""

from __future__ import annotations

from pathlib import Path

import pytest

from geolabel.data.tiles import TileFolder, local_tile_range, mosaic_tiles


@pytest.fixture(scope="session")
def virac(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """(imagery GeoTIFF, OSM buildings GeoJSON) of Virac, Philippines."""
    city = shared_data / "oam-osm" / "virac-ph"
    image = tmp_path_factory.mktemp("virac") / "imagery.tif"
    mosaic_tiles(TileFolder(city / "tiles"), local_tile_range(city / "tiles", 19), image)
    return image, city / "osm-buildings.geojson"


@pytest.fixture(scope="session")
def virac_scene(virac):
    from geolabel.align.data import load_scene

    return load_scene(*virac)
