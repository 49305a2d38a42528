"""Polygonisers compared as the mesh-approximation paper does: IoU against vertex count.

Datasets (all real):
  * austin-clean: ../shared/data/inria-austin/buildings-mask.tif (0.3 m, clean manual
    mask) polygonised as it is; truth = the same mask.
  * austin-predicted: the same mask degraded the way a network's output is (boundaries
    wobbled by smooth random noise, fixed seed); truth = the clean mask.
  * kampala-7.5cm: held-out OAM city Kampala at zoom 21 (7.5 cm), OSM buildings
    rasterised on the imagery grid (benchmarks/oam_cities.py), a 2000 x 2000 crop;
    truth = that mask.

Methods: Douglas-Peucker ("dp") at several tolerances, the regularised polygons
("regularized", geolabel/vectorize/polygons.py) and the mesh approximation ("mesh")
at several lambdas (mu at its default, plus mu = 0 as an ablation).
Metrics: cumulative building IoU of the rasterised polygons against the truth,
total vertex count, share of corners within 5 degrees of a multiple of 90, wall time,
process CPU time (single-threaded runs: what the method costs even on a busy machine;
it would not count worker processes, which the mesh polygoniser only starts from
AUTO_PARALLEL_PIXELS on, above these datasets), CPU seconds per megapixel and per km^2,
and the CPU time as a ratio to dp at its default tolerance, timed in the same run.

Run: .venv/bin/python benchmarks/bench_polygonize.py [--quick]
Writes benchmarks/results/polygonize.md, .json and .png.
Pieces, printed only (nothing written):
  .venv/bin/python benchmarks/bench_polygonize.py --dry-run --methods dp,mesh --datasets austin
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio import features
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from geolabel.atomic import write_bytes_atomic, write_text_atomic  # noqa: E402
from geolabel.vectorize import POLYGONIZERS  # noqa: E402
from geolabel.vectorize.mesh import DEFAULT_LAMBDA, DEFAULT_MU  # noqa: E402
from geolabel.vectorize.polygons import vertex_count  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def austin() -> tuple[np.ndarray, object, object]:
    with rasterio.open(SHARED / "inria-austin" / "buildings-mask.tif") as src:
        return (src.read(1) > 127).astype(np.uint8), src.transform, src.crs


def predicted_like(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """The mask as a segmentation network would give it: wobbly boundaries, rounded corners, specks."""
    rng = np.random.default_rng(seed)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 2.0)
    noise /= noise.std()
    return (soft + 0.18 * noise > 0.5).astype(np.uint8)


def kampala(size: int = 2000) -> tuple[np.ndarray, object, object]:
    from oam_cities import load_city
    from rasterio.transform import from_origin

    _, labels, _ = load_city("kampala-ug", 21)
    # the crop with the most buildings among a few candidates (the OSM mapping is partial)
    h, w = labels.shape
    best, where = -1.0, (0, 0)
    for r in range(0, max(h - size, 0) + 1, size // 2):
        for c in range(0, max(w - size, 0) + 1, size // 2):
            crop = labels[r : r + size, c : c + size]
            score = (crop == 1).mean() if (crop != 255).mean() > 0.95 else -1
            if score > best:
                best, where = score, (r, c)
    r, c = where
    crop = labels[r : r + size, c : c + size].copy()
    pixel = 2 * 20037508.342789244 / 2**21 / 256
    # a Web Mercator grid at the city (its absolute offset does not matter for IoU or cost)
    transform = from_origin(3627000.0 + c * pixel, 36000.0 - r * pixel, pixel, pixel)
    return crop, transform, "EPSG:3857"


def iou(frame, truth: np.ndarray, transform) -> float:
    geoms = [g for g in frame.geometry if g is not None and not g.is_empty]
    drawn = features.rasterize([(g, 1) for g in geoms], out_shape=truth.shape, transform=transform,
                               dtype="uint8") if geoms else np.zeros(truth.shape, np.uint8)
    known = truth != 255
    t = (truth == 1) & known
    p = (drawn == 1) & known
    return float((t & p).sum() / max((t | p).sum(), 1))


def right_angle_share(frame, tolerance: float = 5.0) -> float:
    devs = []
    for g in frame.geometry:
        for part in getattr(g, "geoms", [g]):
            for ring in [part.exterior, *part.interiors]:
                c = np.asarray(ring.coords)[:-1]
                if len(c) < 3:
                    continue
                prev, nxt = c - np.roll(c, 1, 0), np.roll(c, -1, 0) - c
                turn = np.degrees(np.arctan2(prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0], (prev * nxt).sum(1)))
                q = turn / 90
                devs.append(np.abs(q - np.round(q)) * 90)
    d = np.concatenate(devs) if devs else np.zeros(0)
    return float((d <= tolerance).mean()) if len(d) else float("nan")


def run(method: str, params: dict, labels: np.ndarray, truth: np.ndarray, transform, crs, km2: float) -> dict:
    fn = POLYGONIZERS[method]
    start, cpu_start = time.perf_counter(), time.process_time()
    frame = fn(labels, transform, crs, None, **params)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    row = {"method": method, **params, "objects": len(frame), "vertices": vertex_count(frame.geometry),
           "iou": round(iou(frame, truth, transform), 4), "right_angles": round(right_angle_share(frame), 3),
           "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 3), "cpu_s_per_mpx": round(cpu / (labels.size / 1e6), 3),
           "s_per_km2": round(seconds / km2, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings (smoke run)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the .json")
    parser.add_argument("--dry-run", action="store_true", help="print the rows, write nothing")
    parser.add_argument("--methods", default="", help="only these methods, comma-separated (dp,regularized,mesh)")
    parser.add_argument("--datasets", default="", help="only the datasets whose name contains one of these words")
    args = parser.parse_args()
    methods = set(filter(None, args.methods.split(","))) or {"dp", "regularized", "mesh"}
    wanted = [w for w in args.datasets.split(",") if w]
    if args.report_only:
        saved = json.loads((RESULTS / "polygonize.json").read_text())
        write(saved["results"], saved["command"])
        return
    tolerances = [0.15, 0.3, 0.5, 1.0, 1.5, 2.5] if not args.quick else [0.5, 1.5]
    lambdas = [0.25, 0.5, 1.0, 1.5, 2.5] if not args.quick else [0.5, 1.5]
    mask, transform, crs = austin()
    datasets = {
        "austin-clean (0.3 m)": (mask, mask, transform, crs),
        "austin-predicted (0.3 m)": (predicted_like(mask), mask, transform, crs),
    }
    if not wanted or any(w in "kampala-osm (7.5 cm)" for w in wanted):
        try:
            k_mask, k_transform, k_crs = kampala(1000 if args.quick else 2000)
            datasets["kampala-osm (7.5 cm)"] = (k_mask, k_mask, k_transform, k_crs)
        except (OSError, ValueError, ImportError) as err:  # the OAM tiles are optional for this benchmark
            print(f"kampala skipped: {err}", flush=True)
    results: dict[str, list[dict]] = {}
    for name, (labels, truth, tr, cr) in datasets.items():
        if wanted and not any(w in name for w in wanted):
            continue
        pixel = abs(tr.a)
        km2 = labels.size * pixel * pixel / 1e6
        small = "7.5" in name
        rows = []
        if "dp" in methods:
            for tol in (tolerances if not small else [t for t in tolerances if t <= 1.5]):
                rows.append(run("dp", {"tolerance": tol}, labels, truth, tr, cr, km2))
        if "regularized" in methods:
            for tol in ([0.3, 0.5, 1.0] if not small else [0.5]):
                rows.append(run("regularized", {"tolerance": tol}, labels, truth, tr, cr, km2))
        if "mesh" in methods:
            for lam in (lambdas if not small else [0.25, 0.5, 1.0]):
                rows.append(run("mesh", {"lam": lam, "mu": DEFAULT_MU}, labels, truth, tr, cr, km2))
            if not small:
                rows.append(run("mesh", {"lam": DEFAULT_LAMBDA, "mu": 0.0}, labels, truth, tr, cr, km2))
        results[name] = rows
    if not args.dry_run:
        write(results, " ".join(["benchmarks/bench_polygonize.py", *sys.argv[1:]]))


def _dp_iou_at(rows: list[dict], vertices: int) -> float | None:
    """IoU of Douglas-Peucker interpolated (in log vertices) at a vertex count; None outside its range."""
    dp = sorted((r["vertices"], r["iou"]) for r in rows if r["method"] == "dp")
    if not dp or not dp[0][0] <= vertices <= dp[-1][0]:
        return None
    v = np.log([d[0] for d in dp])
    return float(np.interp(np.log(vertices), v, [d[1] for d in dp]))


def write(results: dict[str, list[dict]], command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Polygonisation: IoU against vertex count", "",
             f"Command: `.venv/bin/python {command}` (on the shared 2-core machine; wall times are noisy, "
             "compare the CPU times and their ratio to dp measured in the same run).", "",
             "IoU = cumulative building IoU of the polygons rasterised back on the grid, against the truth.",
             "right angles = share of polygon corners within 5 degrees of a multiple of 90.",
             "dIoU vs dp = IoU minus Douglas-Peucker's IoU at the same vertex count (interpolated in log vertices).",
             ""]
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        base = next((r for r in rows if r["method"] == "dp" and r.get("tolerance") == 0.5), rows[0])
        lines += [f"## {name}", "",
                  "| method | setting | objects | vertices | IoU | dIoU vs dp | right angles | s | cpu s | cpu s/Mpx "
                  "| s/km2 | cpu / dp(0.5) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            setting = (f"tolerance {r['tolerance']} m" if "tolerance" in r else f"lambda {r['lam']} m, mu {r['mu']} m")
            ref = None if r["method"] == "dp" else _dp_iou_at(rows, r["vertices"])
            d = "" if r["method"] == "dp" else "outside dp's range" if ref is None else f"{r['iou'] - ref:+.4f}"
            # results written before CPU times were recorded fall back to wall time
            cost, base_cost = r.get("cpu_seconds", r["seconds"]), base.get("cpu_seconds", base["seconds"])
            lines.append(f"| {r['method']} | {setting} | {r['objects']} | {r['vertices']} | {r['iou']:.4f} | {d} | "
                         f"{r['right_angles']:.3f} | {r['seconds']} | {r.get('cpu_seconds', '')} | "
                         f"{r.get('cpu_s_per_mpx', '')} | {r['s_per_km2']} | {cost / max(base_cost, 1e-9):.1f}x |")
        lines.append("")
        for method, style in (("dp", "o-"), ("regularized", "s--"), ("mesh", "^-")):
            pts = sorted((r["vertices"], r["iou"]) for r in rows if r["method"] == method and r.get("mu", 1) != 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=method)
        abl = [(r["vertices"], r["iou"]) for r in rows if r["method"] == "mesh" and r.get("mu") == 0]
        if abl:
            ax.plot(*zip(*abl), "v", label="mesh, mu = 0")
        ax.set_xscale("log")
        ax.set_xlabel("vertices (total)")
        ax.set_ylabel("building IoU")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes_atomic(RESULTS / "polygonize.png", buf.getvalue())
    lines += ["![IoU vs vertices](polygonize.png)", ""]
    write_text_atomic(RESULTS / "polygonize.md", "\n".join(lines))
    write_text_atomic(RESULTS / "polygonize.json", json.dumps({"command": command, "results": results}, indent=1))


if __name__ == "__main__":
    main()
