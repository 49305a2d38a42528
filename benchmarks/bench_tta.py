"""Test-time augmentation inside the compiled step vs one model call per transform.

`KerasPredictor` runs the dihedral transforms of `--tta N` inside its compiled step (one
numpy -> tensor -> numpy round trip per window); `tta_predict` over any other predict_fn
calls it once per transform and turns, flips and sums in numpy. Both run here on the same
real windows (the shipped building model on the z21 Kampala mosaic that bench_predict builds),
alternating round by round so the machine's drift hits both alike. Reports the median seconds
per window, their ratio and the largest difference between the two answers.

    .venv/bin/python benchmarks/bench_tta.py [--windows 12] [--rounds 5] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12, help="1024 px windows per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    import rasterio
    from rasterio.windows import Window

    from bench_predict import build_z21_raster, git_commit
    from geolabel.models import load_model
    from geolabel.predict import keras_predict_fn, tta_predict
    from geolabel.pretrained import PRETRAINED

    load_before = os.getloadavg()[0]
    with rasterio.open(build_z21_raster(16)) as src:
        windows = [src.read(window=Window(c, r, 1024, 1024)).transpose(1, 2, 0)[None].astype(np.float32)
                   for r in range(0, 4096, 1024) for c in range(0, 4096, 1024)][: args.windows]
    in_step = keras_predict_fn(load_model(PRETRAINED), precision=args.precision)
    per_call = lambda x: in_step(x)  # noqa: E731  (not a KerasPredictor: tta_predict's numpy path)
    rows = []
    for transforms in (2, 4, 8):
        times = {"in_step": [], "per_call": []}
        diff = max(float(np.abs(tta_predict(in_step, w, transforms=transforms)
                                - tta_predict(per_call, w, transforms=transforms)).max()) for w in windows[:2])
        for _ in range(args.rounds):
            for name, fn in (("in_step", in_step), ("per_call", per_call)):
                t0 = time.perf_counter()
                for w in windows:
                    tta_predict(fn, w, transforms=transforms)
                times[name].append((time.perf_counter() - t0) / len(windows))
        row = {"transforms": transforms, "precision": in_step.precision, "max_abs_diff": diff,
               **{f"{k}_s_per_window": float(np.median(v)) for k, v in times.items()},
               **{f"{k}_all": v for k, v in times.items()}}
        row["speedup"] = row["per_call_s_per_window"] / row["in_step_s_per_window"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"commit": git_commit(), "windows": len(windows), "rounds": args.rounds, "window": 1024,
            "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0], "cpus": os.cpu_count()}
    (RESULTS / "tta.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "# Test-time augmentation inside the compiled step",
        "",
        f"`benchmarks/bench_tta.py --windows {len(windows)} --rounds {args.rounds}` at {meta['commit']}: the shipped "
        "building model on real 1024 px windows of the z21 Kampala mosaic, batch 1, the two paths alternated round by "
        f"round; {meta['cpus']} CPUs, 1-min load {load_before:.2f} before, {meta['load_avg_after']:.2f} after "
        "(the benchmark's own threads included). Median seconds per window over the rounds.",
        "",
        "| transforms | precision | in the step (s/window) | one call per transform (s/window) | speed-up | max abs difference |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['transforms']} | {r['precision']} | {r['in_step_s_per_window']:.3f} | "
              f"{r['per_call_s_per_window']:.3f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |" for r in rows]
    (RESULTS / "tta.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
