"""Build geolabel datasets of the three shared OAM + OSM cities at z21 with `geolabel fetch`'s library.

Serves each city's XYZ tiles from ../shared/data/oam-osm/{city}/tiles with geolabel's own
tile server on 127.0.0.1, takes the whole tile extent at z21 as the AOI and the city's
osm-buildings.geojson as labels, and writes benchmarks/data/oam/{city}/ (imagery.tif,
labels.tif, labels.gpkg, manifest.json, chips/ of 256 px). Re-running skips finished work.

    .venv/bin/python benchmarks/make_oam_datasets.py [city ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geolabel.data.fetch import FetchOptions, fetch_dataset  # noqa: E402
from geolabel.data.tiles import local_tile_range  # noqa: E402
from geolabel.data.tileserver import TileServer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "oam-osm"
OUT = ROOT / "benchmarks" / "data" / "oam"
CITIES = ("zanzibar-tz", "kampala-ug", "virac-ph")
PORTS = {"zanzibar-tz": 47211, "kampala-ug": 47212, "virac-ph": 47213}  # fixed: the same URL lets a re-run skip finished work


def make(city: str, zoom: int = 21, chip_size: int = 256) -> dict:
    """Fetch one city into OUT/city; return its manifest."""
    tiles = SHARED / city / "tiles"
    extent = local_tile_range(tiles, zoom)
    with TileServer(tiles, port=PORTS.get(city, 0)) as server:
        return fetch_dataset(
            OUT / city, server.template("jpg"), str(SHARED / city / "osm-buildings.geojson"),
            bbox=extent.bounds_lonlat(), classes=("background", "building"),
            options=FetchOptions(zoom=zoom, chip_size=chip_size, name=city, connections=8,
                                 attribution="Imagery: OpenAerialMap contributors, CC BY 4.0 (via hotosm/fAIr-utilities)"),
            command=f"python benchmarks/make_oam_datasets.py {city}",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cities", nargs="*", default=list(CITIES))
    for city in parser.parse_args().cities:
        start = time.perf_counter()
        manifest = make(city)
        chips = manifest["chips"]
        print(f"{city}: {manifest['width']}x{manifest['height']} px, tiles {manifest['imagery']['tiles']}, "
              f"chips train {chips['train']} val {chips['val']}, {time.perf_counter() - start:.1f} s -> {OUT / city}")


if __name__ == "__main__":
    main()
