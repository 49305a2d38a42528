"""Stage 2 at a user's budget: fine-tuning a pretrained model vs training from scratch on local OSM.

For each held-out city (one the pretrained model never saw: the leave-one-city-out runs of
bench_generalisation.py, `runs/gen-TAG-CITY-sSEED`), split its z21 raster into a west and an
east half; train on the west half's chips for `--budget` seconds (a) from the pretrained
model with the `finetune` preset (what `geolabel train --init RUN --train LOCAL` runs) and
(b) from scratch with the `buildings` preset (what `geolabel train --train LOCAL` runs),
and score both, and the pretrained model as it is (zero-shot), on the east half: cumulative
building IoU and building-level F1 (IoU >= 0.5, the default post-processing). Results go to
benchmarks/results/finetune.{json,md}.

    .venv/bin/python benchmarks/bench_finetune.py --init-tag preset-bf16 --held-out all --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")

from bench_generalisation import CHIP, CHIP_STEP, OUT, RESULTS, RUNS, building_scores, load_scene, predict_city  # noqa: E402
from oam_cities import CITIES, city_buildings, city_chips, load_city  # noqa: E402

ARMS = ("zero-shot", "fine-tuned", "from scratch")


def west_dataset(city: str) -> Path:
    """Chips of the west half of `city` (every 10th kept for validation), built once."""
    from geolabel.data.chips import write_shards

    folder = OUT / "finetune" / f"{city}-west"
    if not list((folder / "chips").glob("train-*.tfrecord.gz")):
        image, labels, _ = load_city(city)
        half = labels.shape[1] // 2
        chips = list(city_chips(image[:, :half], labels[:, :half], CHIP, CHIP_STEP, f"{city}-west"))
        write_shards([c for i, c in enumerate(chips) if i % 10], folder / "chips", "train", chips_per_shard=16)
        write_shards([c for i, c in enumerate(chips) if i % 10 == 0], folder / "chips", "val", chips_per_shard=16)
    return folder


def score_east(run: Path, city: str) -> dict:
    """Building IoU and building-level scores of `run` on the east half of `city`."""
    from geolabel.metrics import iou_per_class
    from geolabel.models import load_model
    from geolabel.train import load_run_config

    config = load_run_config(run)
    image, labels, _ = load_scene(city, config.scene_norm, config.scene_contrast)
    east = labels.copy()
    east[:, : labels.shape[1] // 2] = 255
    confusion, building = predict_city(load_model(run), image, east, valid=labels != 255)
    truth_ids, pixel_size = city_buildings(city)
    scores = building_scores(building, east != 255, truth_ids, pixel_size, min_confidence=0.8)
    return {"building_iou": float(iou_per_class(confusion)[1]), "buildings": scores}


def run_city(args: argparse.Namespace, city: str, seed: int) -> dict:
    from geolabel.train import preset_config, train
    from geolabel.train.trainer import remove_run

    pretrained = RUNS / f"gen-{args.init_tag}-{city}-s{seed}"
    if not (pretrained / "model.keras").is_file():
        raise SystemExit(f"{pretrained}: no leave-{city}-out run (run bench_generalisation.py --tag {args.init_tag})")
    local = [str(west_dataset(city))]
    row: dict = {"held_out": city, "seed": seed, "init_tag": args.init_tag, "budget_s": args.budget,
                 "zero-shot": score_east(pretrained, city)}
    for arm, preset, init in (("fine-tuned", "finetune", str(pretrained)), ("from scratch", "buildings", None)):
        run = RUNS / f"finetune-{args.init_tag}-{city}-s{seed}-{preset}"
        remove_run(run)
        config = preset_config(preset, None, train=local, init=init, seed=seed, time_limit_s=args.budget)
        metrics = train(config, run)
        row[arm] = {**score_east(run, city), "steps": metrics["steps"], "train_time_s": metrics["train_time_s"],
                    "run_dir": str(run.relative_to(RUNS.parent)), "cpu_load_1min": os.getloadavg()[0]}
    return row


def write_table(rows: list[dict]) -> None:
    lines = [
        "# Fine-tuning a pretrained model vs training from scratch, at a user's budget",
        "",
        "Each held-out city's z21 raster is cut into a west half (local training data: its OSM buildings)",
        "and an east half (scored). `zero-shot` = the leave-one-city-out model of bench_generalisation.py",
        "(tag in `init`, trained on the two other cities for that tag's budget in generalisation.md) as it is;",
        "`fine-tuned` = that model trained further on the west half with the `finetune` preset",
        "(`geolabel train --init RUN --train LOCAL`);",
        "`from scratch` = the `buildings` preset on the west half (`geolabel train --train LOCAL`), same",
        "budget. IoU = cumulative building IoU on the east half; bF1 = building-level F1 at IoU >= 0.5",
        "(separated, >= 2 m2, mean probability >= 0.8). Steps and 1-min load per trained arm.",
        "Command: `.venv/bin/python benchmarks/bench_finetune.py --init-tag TAG --held-out all --seeds S`.",
        "",
        "| held-out | seed | init | budget s | zero-shot IoU | fine-tuned IoU | from scratch IoU | zero-shot bF1 "
        "| fine-tuned bF1 | from scratch bF1 | steps ft / scratch | load ft / scratch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        iou = " | ".join(f"{r[a]['building_iou']:.3f}" for a in ARMS)
        f1 = " | ".join(f"{r[a]['buildings']['f1']:.3f}" for a in ARMS)
        steps = f"{r['fine-tuned']['steps']} / {r['from scratch']['steps']}"
        load = f"{r['fine-tuned']['cpu_load_1min']:.1f} / {r['from scratch']['cpu_load_1min']:.1f}"
        lines.append(f"| {r['held_out']} | {r['seed']} | {r['init_tag']} | {r['budget_s']:.0f} | {iou} | {f1} | {steps} | {load} |")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["init_tag"], r["budget_s"], r["seed"]), []).append(r)  # each city once per mean
    if groups:
        lines += ["", "Means per init, budget and seed over the rows above:", ""]
    for (tag, budget, seed), group in groups.items():
        means = ", ".join(f"{arm} IoU {np.mean([r[arm]['building_iou'] for r in group]):.3f} / "
                          f"bF1 {np.mean([r[arm]['buildings']['f1'] for r in group]):.3f}" for arm in ARMS)
        lines.append(f"- {tag}, {budget:.0f} s, seed {seed} ({len(group)} cities): {means}")
    (RESULTS / "finetune.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init-tag", default="preset-bf16", help="bench_generalisation tag of the pretrained runs.")
    parser.add_argument("--held-out", default="all", help="City, or all.")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds (also picks the pretrained run's seed).")
    parser.add_argument("--budget", type=float, default=300.0, help="Training seconds per arm.")
    args = parser.parse_args(argv)
    cities = CITIES if args.held_out == "all" else [args.held_out]
    path = RESULTS / "finetune.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    for seed in (int(s) for s in args.seeds.split(",")):
        for city in cities:
            started = time.perf_counter()
            row = run_city(args, city, seed)
            row["wall_s"] = time.perf_counter() - started
            rows = [r for r in rows if (r["held_out"], r["seed"], r["init_tag"], r["budget_s"])
                    != (city, seed, args.init_tag, args.budget)] + [row]
            path.write_text(json.dumps(rows, indent=1) + "\n")
            write_table(rows)
            print(json.dumps({k: row[k] for k in ("held_out", "seed")} |
                             {a: round(row[a]["building_iou"], 4) for a in ARMS}), flush=True)


if __name__ == "__main__":
    main()
