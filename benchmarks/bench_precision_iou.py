"""Does bfloat16 inference change the map? The same trained runs predicted in float32 and bfloat16.

For the `preset-bf16` seed-0 runs held out on Virac and Kampala (benchmarks/bench_generalisation.py),
predict the whole held-out city both ways through `KerasPredictor` and report building IoU, seconds
and the share of labelled pixels given the same class. Writes benchmarks/results/precision-iou.md/.json.

    .venv/bin/python benchmarks/bench_precision_iou.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CITIES = ("virac-ph", "kampala-ug")
PRECISIONS = ("float32", "bfloat16")


def measure(city: str) -> dict:
    """IoU and seconds per precision, and the agreement of the two maps, for one held-out city."""
    import bench_generalisation as bench

    from geolabel.metrics import iou_per_class
    from geolabel.models import load_model
    from geolabel.train import load_run_config

    run = bench.RUNS / f"gen-preset-bf16-{city}-s0"
    config = load_run_config(run)
    image, labels, _ = bench.load_scene(city, config.scene_norm, config.scene_contrast)
    model = load_model(run)
    row, maps = {}, {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        confusion, building = bench.predict_city(model, image, labels, precision=precision)
        row[precision] = {"building_iou": float(iou_per_class(confusion)[1]), "seconds": time.perf_counter() - start}
        maps[precision] = building >= 128
    known = labels != 255
    row["agreement"] = float((maps["float32"][known] == maps["bfloat16"][known]).mean())
    return row


def write(results: dict) -> str:
    from bench_generalisation import RESULTS

    (RESULTS / "precision-iou.json").write_text(json.dumps(results, indent=1))
    lines = ["# Building IoU of the same runs predicted in float32 and bfloat16", "",
             "Command: `.venv/bin/python benchmarks/bench_precision_iou.py` (runs `gen-preset-bf16-CITY-s0`), "
             f"1-min load {results['cpu_load_1min']:.1f}.", "",
             "| held-out | IoU float32 | IoU bfloat16 | same class | s float32 | s bfloat16 |", "|---|---|---|---|---|---|"]
    for city in CITIES:
        r = results[city]
        lines.append(f"| {city} | {r['float32']['building_iou']:.4f} | {r['bfloat16']['building_iou']:.4f} "
                     f"| {r['agreement']:.2%} | {r['float32']['seconds']:.1f} | {r['bfloat16']['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "precision-iou.md").write_text(text)
    return text


if __name__ == "__main__":
    results = {city: measure(city) for city in CITIES}
    results["cpu_load_1min"] = os.getloadavg()[0]
    print(write(results))
