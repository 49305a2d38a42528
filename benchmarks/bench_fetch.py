"""Fetch throughput: tiles/s from a loopback XYZ server and mosaic Mpx/s, at 1/4/16 connections.

Serves the real Zanzibar z21 OAM tiles (../shared/data/oam-osm/zanzibar-tz/tiles, 736
JPEG tiles) with geolabel's TileServer on 127.0.0.1, twice: as it is (loopback, ~0
latency: measures geolabel's own per-tile cost) and with 20 ms added to every answer
(a stand-in for a remote server's round trip: measures what concurrency buys). For each
connection count the tiles go to a fresh cache (`fetch_tiles`), then the same tile range
is mosaicked into a COG (`mosaic_tiles`). Ratios are against 1 connection in the same run.

Usage: .venv/bin/python benchmarks/bench_fetch.py [--quick]
Writes benchmarks/results/fetch.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")

from geolabel.atomic import write_text_atomic  # noqa: E402
from geolabel.data.http import HttpClient  # noqa: E402
from geolabel.data.tiles import TileCache, TileRange, TileTemplate, fetch_tiles, local_tile_range, mosaic_tiles  # noqa: E402
from geolabel.data.tileserver import TileRequestHandler, TileServer  # noqa: E402

TILES = ROOT.parent / "shared" / "data" / "oam-osm" / "zanzibar-tz" / "tiles"
RESULTS = ROOT / "benchmarks" / "results"
CONNECTIONS = (1, 4, 16)


class SlowHandler(TileRequestHandler):
    """Adds a fixed latency to every answer."""

    latency = 0.020

    def do_GET(self, head: bool = False) -> None:
        time.sleep(self.latency)
        super().do_GET(head)


def present_tiles(z: int) -> list[tuple[int, int, int]]:
    """The tiles that exist on disk (so every request is a 200)."""
    return sorted((z, int(x.name), int(y.name.split(".")[0])) for x in (TILES / str(z)).iterdir() for y in x.iterdir())


def bounding(tiles: list[tuple[int, int, int]]) -> TileRange:
    xs, ys = [t[1] for t in tiles], [t[2] for t in tiles]
    return TileRange(tiles[0][0], min(xs), min(ys), max(xs), max(ys))


def run(handler, tiles, connections: int, work: Path) -> dict:
    cache = TileCache(work / f"cache-{handler.__name__}-{connections}")
    with TileServer(TILES, handler=handler) as server:
        client = HttpClient(connections=connections, timeout=30)
        start = time.perf_counter()
        counts = fetch_tiles(TileTemplate(server.template("jpg")), tiles, cache, client)
        fetch_s = time.perf_counter() - start
    assert counts["fetched"] == len(tiles) and counts["missing"] == 0, counts
    return {"connections": connections, "tiles": len(tiles), "fetch_s": fetch_s, "tiles_per_s": len(tiles) / fetch_s, "cache": cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="z20 tiles only (184), for a smoke run")
    args = parser.parse_args()
    z = 20 if args.quick else 21
    tiles = present_tiles(z)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        work = Path(tmp)
        for handler, label in ((TileRequestHandler, "loopback"), (SlowHandler, "loopback + 20 ms latency")):
            base = None
            for n in CONNECTIONS:
                result = run(handler, tiles, n, work)
                base = base or result["tiles_per_s"]
                rows.append({"server": label, "connections": n, "tiles": result["tiles"], "fetch_s": round(result["fetch_s"], 3),
                             "tiles_per_s": round(result["tiles_per_s"], 1), "speedup_vs_1": round(result["tiles_per_s"] / base, 2)})
                print(rows[-1], flush=True)
                cache = result["cache"]
        # mosaic of the dense core (the bounding range of the present tiles, missing ones nodata)
        trange = local_tile_range(TILES, z) if not args.quick else bounding(tiles)
        start = time.perf_counter()
        counts = mosaic_tiles(cache, trange, work / "mosaic.tif")
        mosaic_s = time.perf_counter() - start
        mpx = trange.columns * trange.rows * 256 * 256 / 1e6
        present_mpx = counts["tiles"] * 256 * 256 / 1e6
    mosaic = {"tile_range": [trange.columns, trange.rows], "mpx": round(mpx, 1), "present_mpx": round(present_mpx, 1),
              "seconds": round(mosaic_s, 2), "mpx_per_s": round(mpx / mosaic_s, 1), "present_mpx_per_s": round(present_mpx / mosaic_s, 2)}
    command = "cd /work/main && .venv/bin/python benchmarks/bench_fetch.py" + (" --quick" if args.quick else "")
    report = {"command": command, "zoom": z, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "fetch": rows, "mosaic": mosaic}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "fetch.json", json.dumps(report, indent=1) + "\n")
    lines = [
        "# Fetch throughput (loopback tile server)", "",
        f"Command: `{command}` ({report['machine']}; numbers are noisy, compare ratios within this run).", "",
        f"Tiles: the {len(tiles)} real Zanzibar OAM JPEG tiles at z{z}, served by `geolabel.data.tileserver.TileServer` on 127.0.0.1;"
        " each run fetches all of them into a fresh cache with `geolabel.data.tiles.fetch_tiles`.", "",
        "| server | connections | tiles | seconds | tiles/s | vs 1 connection |", "|---|---|---|---|---|---|",
        *[f"| {r['server']} | {r['connections']} | {r['tiles']} | {r['fetch_s']} | {r['tiles_per_s']} | {r['speedup_vs_1']}x |" for r in rows],
        "",
        f"Mosaic (`mosaic_tiles`, block-wise, COG with overviews, deflate): tile range {mosaic['tile_range'][0]}x{mosaic['tile_range'][1]} "
        f"= {mosaic['mpx']} Mpx ({mosaic['present_mpx']} Mpx of real tiles, the rest nodata) in {mosaic['seconds']} s: "
        f"**{mosaic['mpx_per_s']} Mpx/s** of output grid, {mosaic['present_mpx_per_s']} Mpx/s of decoded tiles.", "",
        "Reading: on bare loopback a tile costs geolabel little more than a file read and an atomic write, so extra "
        "connections help only as far as the 2 shared cores allow; with a realistic round-trip latency the bounded "
        "concurrency overlaps waiting and the speed-up approaches the connection count.",
    ]
    write_text_atomic(RESULTS / "fetch.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
