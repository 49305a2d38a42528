"""The shipped building model on imagery it never saw, through the CLI a user runs.

`geolabel predict IMAGE --out OUT --polygons` (no model: the shipped `pretrained` model, the
input resampled to its resolution) then `geolabel evaluate OUT TRUTH`, on the Inria Austin
crop (0.3 m aerial, Texas: another sensor, resolution and continent than the drone imagery
it was trained on), with and without resampling. `--model RUN` scores a candidate run folder
(with its MODEL_CARD.md) beside the shipped model, in the same process and on the same load.
Results go to benchmarks/results/pretrained.{json,md}.

    .venv/bin/python benchmarks/bench_pretrained.py [--model runs/pretrained-buildings-mlp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out" / "pretrained"
RESULTS = ROOT / "benchmarks" / "results"
GEOLABEL = [sys.executable, "-m", "geolabel.cli"]


def run(args: list[str]) -> dict:
    """Run a geolabel command; its last stdout line (JSON)."""
    done = subprocess.run([*GEOLABEL, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "GEOLABEL_NO_PROGRESS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def score(name: str, model: str, image: Path, truth: Path, extra: list[str]) -> dict:
    pred, report = OUT / name / "pred", OUT / name / "eval"
    started = time.perf_counter()
    summary = run(["predict", model, str(image), "--out", str(pred), "--polygons", *extra])
    seconds = time.perf_counter() - started
    subprocess.run([*GEOLABEL, "evaluate", str(pred), str(truth), "--out", str(report)], check=True,
                   capture_output=True, env={**os.environ, "GEOLABEL_NO_PROGRESS": "1"})
    scores = json.loads((report / "evaluation.json").read_text())["overall"]
    return {"case": name, "model": model, "image": str(image.relative_to(DATA.parent)), "options": " ".join(extra),
            "resampled": summary.get("resampled", 1.0), "objects": summary["objects"], "seconds": seconds,
            "scores": scores, "cpu_load_1min": os.getloadavg()[0]}


def write_table(rows: list[dict]) -> None:
    lines = [
        "# The shipped building model (`geolabel predict IMAGE`, no training) on imagery it never saw",
        "",
        "Inria Austin crop: 1000 x 1000 px RGB at 0.3 m (USGS aerial, Texas), clean manual building mask;",
        "the shipped model was trained on ~7.4 cm drone imagery of three African / Asian towns. `predict`",
        "with no model, `--polygons` (defaults: mesh, separated, >= 2 m2, mean probability >= 0.8), then",
        "`geolabel evaluate` against the mask: pixel IoU of the building class and building-level",
        "precision / recall / F1 at IoU >= 0.5. Command: `.venv/bin/python benchmarks/bench_pretrained.py`.",
        "",
        "| case | model | options | resampled x | IoU | bP | bR | bF1 | objects | seconds | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        poly = r["scores"]["polygons"]
        lines.append(f"| {r['case']} | `{r['model']}` | `{r['options'] or '(defaults)'}` | {r['resampled']:.2f} | {r['scores']['iou']:.3f} "
                     f"| {poly['precision']:.3f} | {poly['recall']:.3f} | {poly['f1']:.3f} | {r['objects']} "
                     f"| {r['seconds']:.1f} | {r['cpu_load_1min']:.1f} |")
    (RESULTS / "pretrained.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="candidate run folder (repeatable)")
    args = parser.parse_args()
    image, mask = DATA / "inria-austin" / "image.tif", DATA / "inria-austin" / "buildings-mask.tif"
    rows = []
    for model in ["pretrained", *args.model]:
        suffix = "" if model == "pretrained" else "-" + Path(model).name
        rows += [score("austin" + suffix, model, image, mask, []),
                 score("austin-no-resample" + suffix, model, image, mask, ["--no-resample"])]
    (RESULTS / "pretrained.json").write_text(json.dumps(rows, indent=1) + "\n")
    write_table(rows)
    print((RESULTS / "pretrained.md").read_text())


if __name__ == "__main__":
    main()
