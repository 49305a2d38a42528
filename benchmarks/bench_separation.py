"""Building separation on real predicted maps: building F1 with no separation, with the flood of an
earlier commit, and with the current one.

The maps are whole-city building probabilities of a model (`--run`: a run folder, or `pretrained`,
the shipped model, which saw all three cities) through `geolabel predict`'s path
(`bench_generalisation.predict_city`, default windows and test-time mirror), cached under
benchmarks/out/separation. Each is scored as `bench_generalisation` scores its rows (objects
under 2 m2 or mean probability 0.8 dropped, matched to the OSM buildings at IoU >= 0.5), and
the separation step is timed on the city's 2048 px blocks.

    .venv/bin/python benchmarks/bench_separation.py --run pretrained --before b93c95f
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")

from bench_generalisation import building_scores, load_scene, predict_city  # noqa: E402
from oam_cities import CITIES, ROOT, city_buildings  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "separation"
RESULTS = ROOT / "benchmarks" / "results"


def module_at(commit: str):
    """geolabel.vectorize.separate as it was at `commit`."""
    source = subprocess.run(["git", "show", f"{commit}:geolabel/vectorize/separate.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"separate_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"separate_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def city_map(run: str, city: str) -> tuple[np.ndarray, np.ndarray]:
    """(building probability x 255, labelled pixels) of `run` over `city`, predicted once."""
    from geolabel.models import load_model
    from geolabel.predict.run_inputs import RunInputs

    expects = RunInputs.of(run)
    image, labels, _ = load_scene(city, expects.scene_norm, expects.scene_contrast)
    path = OUT / Path(run).name / f"{city}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, predict_city(load_model(run), image, labels)[1])
    return np.load(path), labels != 255


def score(building: np.ndarray, valid: np.ndarray, city: str, separate) -> dict:
    """`building_scores` with `separate` (a module, or None for no separation), and its time."""
    import geolabel.vectorize.separate as current

    truth_ids, pixel = city_buildings(city)
    kept = current.separate_buildings
    try:
        if separate is not None:
            current.separate_buildings = separate.separate_buildings
        started = time.process_time()
        scores = building_scores(building, valid, truth_ids, pixel, separate=separate is not None, min_confidence=0.8)
        return {**scores, "cpu_s": time.process_time() - started}
    finally:
        current.separate_buildings = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="pretrained")
    parser.add_argument("--before", default="b93c95f", help="commit whose separation is compared")
    parser.add_argument("--cities", default=",".join(CITIES))
    args = parser.parse_args()
    import geolabel.vectorize.separate as current

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    methods = {"none": None, f"flood at {args.before}": module_at(args.before), f"flood at {commit}": current}
    rows = []
    for city in args.cities.split(","):
        building, valid = city_map(args.run, city)
        for name, module in methods.items():
            result = score(building, valid, city, module)
            rows.append({"run": args.run, "city": city, "separation": name, "load_avg": os.getloadavg()[0],
                         "command": " ".join([".venv/bin/python benchmarks/bench_separation.py", *sys.argv[1:]]), **result})
            print(json.dumps({k: rows[-1][k] for k in ("city", "separation", "f1", "precision", "recall", "cpu_s")}),
                  flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / "separation.json"
    old = [r for r in (json.loads(store.read_text()) if store.is_file() else []) if r["run"] != args.run]
    store.write_text(json.dumps(old + rows, indent=1))
    write_table(old + rows)


def write_table(rows: list[dict]) -> None:
    commands = "\n".join(f"    {c}" for c in dict.fromkeys(r["command"] for r in rows))
    lines = ["# Building separation on real predicted maps", "", f"Commands:\n\n{commands}\n", NOTES, "",
             "| run | city | separation | F1 | precision | recall | objects | cpu s | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['city']} | {r['separation']} | {r['f1']:.3f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['predicted']} | {r['cpu_s']:.1f} | {r['load_avg']:.1f} |")
    (RESULTS / "separation.md").write_text("\n".join(lines) + "\n")


NOTES = """`pretrained` is the shipped model (it saw all three cities: in-domain maps); a `runs/gen-...-CITY-s0`
run is a leave-one-city-out model of `generalisation.md` (a city it never saw). Building F1 at IoU >= 0.5
against the OSM buildings (objects under 2 m2 or mean probability 0.8 dropped); cpu s = separating and
labelling the whole city in 2048 px blocks (the maps are deterministic, only the cpu s depend on the machine).
Up to b93c95f the whole block was flooded with `ndimage.watershed_ift` on the clipped distance, where every
step weighed about the same, so the queue order decided which core took a pixel and a flood could reach
other blobs; since a0d4b11 each blob with several cores is flooded alone, downhill
(`geolabel.vectorize.separate._flood`)."""

if __name__ == "__main__":
    main()
