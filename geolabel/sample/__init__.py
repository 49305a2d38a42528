"""The small real sample shipped with geolabel (see ATTRIBUTION.md) for the offline demo."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
OAM_CITY = "virac-ph"
OAM_TILES = SAMPLE_DIR / "oam" / OAM_CITY / "tiles"
OAM_BUILDINGS = SAMPLE_DIR / "oam" / OAM_CITY / "osm-buildings.geojson"
CLEAN_IMAGE = SAMPLE_DIR / "inria-austin" / "image.tif"
CLEAN_MASK = SAMPLE_DIR / "inria-austin" / "buildings-mask.tif"
ATTRIBUTION = SAMPLE_DIR / "ATTRIBUTION.md"
