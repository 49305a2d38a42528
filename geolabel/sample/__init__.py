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

PREFIX = "sample:"  # `sample:REL` names REL inside this folder, wherever geolabel is installed


def resolve(value: str) -> str:
    """`sample:REL` -> the absolute path of REL in the bundled sample; any other value unchanged.

    For a tile template (`sample:oam/CITY/tiles/{z}/{x}/{y}.jpg`) the part before the first
    `{` must exist. Raises InputError naming the value when the sample has no such file.
    """
    from geolabel.errors import InputError

    if not value.startswith(PREFIX):
        return value
    relative = value[len(PREFIX):].lstrip("/")
    head = relative.partition("{")[0]
    if not head or not (SAMPLE_DIR / head).exists():
        raise InputError(value, f"no such file or folder in the bundled sample ({SAMPLE_DIR})")
    return str(SAMPLE_DIR / relative)
