"""The small real sample shipped with geolabel (see ATTRIBUTION.md) for the offline demo."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
OAM_DIR = SAMPLE_DIR / "oam"  # {city}/tiles/{z}/{x}/{y}.jpg + {city}/osm-buildings.geojson
PRETRAIN_CITY = "zanzibar-tz"  # noisy OSM labels to pretrain on
HELD_OUT_CITY = "virac-ph"  # an unseen city for prediction and the map-update diff
SAMPLE_ZOOM = 19  # about 0.3 m/px, the resolution of the clean Inria crop
CLEAN_IMAGE = SAMPLE_DIR / "inria-austin" / "image.tif"
CLEAN_MASK = SAMPLE_DIR / "inria-austin" / "buildings-mask.tif"
ATTRIBUTION = SAMPLE_DIR / "ATTRIBUTION.md"
