"""Map update a mapper can trust: known changes on a real held-out city, precision and recall per status.

Protocol (per city and seed): the city's z21 OAM mosaic and its real OSM buildings as they are
(the truth). The map given to the map update is that truth with known changes: 20 % of the
buildings removed (they must come back as `new`), 10 % fake footprints (copies of real
footprints) added on open ground, at least 3 m from any OSM building and wholly on imagery
(they must be `missing`), 10 % moved by 1-3 m in a random direction (they must be `shifted`,
the correction within 0.5 m). Buildings chosen for a change lie wholly on imagery. The
building probability comes from a model trained without the city (a `geolabel train` run
of `bench_generalisation.py`, image colour-standardised as the run was trained), predicted
on the z21 mosaic; the diff runs on a 4x coarser grid (0.3 m) through
`geolabel.mapupdate.map_update`, as `geolabel mapupdate --downsample 4` does.

Scores: a `new` change is right when it overlaps a removed building at IoU >= 0.25 (one to
one); a `shifted` one when it is a moved building (and, for "within 0.5 m", its correction is
within 0.5 m of the true one); a `missing` one when it is a fake. `.osc` = the changes at or
above the confidence threshold (what `changes.osc` holds when the map is OSM XML with
versions; `missing` never goes there); `all` = every change of that status (the review layer).
`on nodata` counts changes with less than half their footprint on imagery (must be 0).

The threshold is chosen on other cities (`--select-on`): the lowest that gives precision
>= 0.9 for both `new` and `shifted` over all their seeds, so the test city never chooses it.

    .venv/bin/python benchmarks/bench_mapupdate.py --city virac-ph --run runs/gen-preset-bf16-virac-ph-s0 \
        --select-on kampala-ug=runs/gen-preset-bf16-kampala-ug-s0 zanzibar-tz=runs/gen-preset-bf16-zanzibar-tz-s0 \
        --seeds 0 1 2 3 4

`--run osm` instead of a run folder uses the city's own OSM buildings, blurred and with some
dropped, as the probability (to check the benchmark's logic without a model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")

from oam_cities import ROOT, SHARED, _tile_range, load_city  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "benchmarks" / "out" / "mapupdate"
FACTOR = 4  # z21 (7.5 cm) -> 0.3 m diff grid
THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99)
TARGET = 0.9


def city_probability(city: str, run: str, image: np.ndarray, valid: np.ndarray, transform) -> tuple[np.ndarray, str]:
    """(building probability uint8 x255 on the z21 grid, where it came from)."""
    if run == "osm":
        return osm_probability(city, valid, transform), "OSM buildings of the city, blurred, 10% dropped (logic check)"
    run_dir = Path(run)
    saved = run_dir / "building-prob.npy"
    if saved.is_file():
        prob = np.load(saved)
        if prob.shape == valid.shape:
            return prob, f"{saved} (the run's whole-city prediction saved by bench_generalisation.py)"
    import tempfile

    import rasterio

    from geolabel.mapupdate.update import predict_probabilities

    with tempfile.TemporaryDirectory() as tmp:
        mosaic = Path(tmp) / "city.tif"
        with rasterio.open(mosaic, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=3,
                           dtype="uint8", crs="EPSG:3857", transform=transform, tiled=True) as dst:
            dst.write(np.moveaxis(image, -1, 0))
            dst.write_mask(valid.astype(np.uint8) * 255)
        with rasterio.open(predict_probabilities(mosaic, tmp, run_dir)) as src:
            prob = src.read(2)
    return prob, f"{run_dir} predicted here (mapupdate's path: geolabel predict's)"


def osm_probability(city: str, valid: np.ndarray, transform, seed: int = 123) -> np.ndarray:
    """The city's OSM buildings rasterised, 10 % dropped, blurred by 0.3 m: a stand-in model."""
    import geopandas as gpd
    from rasterio.features import rasterize
    from scipy import ndimage

    frame = gpd.read_file(SHARED / city / "osm-buildings.geojson").to_crs("EPSG:3857")
    keep = np.random.default_rng(seed).random(len(frame)) >= 0.1
    mask = rasterize([g for g, k in zip(frame.geometry, keep) if k], out_shape=valid.shape, transform=transform,
                     dtype="uint8").astype(np.float32)
    return np.round(ndimage.gaussian_filter(mask, 4.0) * 255 * valid).astype(np.uint8)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (float32), rows in chunks to bound memory."""
    h, w = array.shape[0] // factor * factor, array.shape[1] // factor * factor
    out = np.empty((h // factor, w // factor, *array.shape[2:]), np.float32)
    step = 256 * factor
    for r in range(0, h, step):
        block = array[r : min(r + step, h), :w].astype(np.float32)
        out[r // factor : (r + block.shape[0]) // factor] = block.reshape(
            block.shape[0] // factor, factor, w // factor, factor, *array.shape[2:]).mean(axis=(1, 3))
    return out


def perturb(truth: np.ndarray, valid: np.ndarray, metres_per_px: float, rng: np.random.Generator) -> dict:
    """The map given to the diff and its known changes (pixel coordinates of the diff grid)."""
    from geolabel.mapupdate.diff import valid_share

    n = len(truth)
    eligible = np.flatnonzero([valid_share(g, valid) >= 0.999 for g in truth])
    order = rng.permutation(eligible)
    n_removed, n_moved, n_fake = round(0.2 * n), round(0.1 * n), round(0.1 * n)
    removed, moved = order[:n_removed], order[n_removed : n_removed + n_moved]
    geoms, ids = list(truth), [f"osm/{i}" for i in range(n)]
    corrections = {}
    for i in moved:
        length = rng.uniform(1.0, 3.0) / metres_per_px
        angle = rng.uniform(0, 2 * math.pi)
        v = np.array([length * math.cos(angle), length * math.sin(angle)])
        geoms[i] = shapely.transform(truth[i], lambda pts, d=v: pts + d)
        corrections[ids[i]] = -v
    tree = shapely.STRtree(truth)
    clear = 3.0 / metres_per_px
    h, w = valid.shape
    fakes = []
    for _ in range(200 * max(n_fake, 1)):
        if len(fakes) == n_fake:
            break
        shape = truth[rng.choice(eligible)]
        centre = shapely.get_coordinates(shapely.centroid(shape))[0]
        target = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        fake = shapely.transform(shape, lambda pts, d=target - centre: pts + d)
        zone = fake.buffer(clear)
        if valid_share(fake, valid) < 0.999 or len(tree.query(zone, predicate="intersects")):
            continue
        if any(zone.intersects(f) for f in fakes):
            continue
        fakes.append(fake)
    keep = np.setdiff1d(np.arange(n), removed)
    return {
        "geoms": np.array([geoms[i] for i in keep] + fakes, dtype=object),
        "ids": np.array([ids[i] for i in keep] + [f"fake/{k}" for k in range(len(fakes))], dtype=object),
        "removed": truth[removed],
        "corrections": corrections,
        "fakes": {f"fake/{k}" for k in range(len(fakes))},
    }


def match_new(new: list, removed: np.ndarray, iou: float) -> np.ndarray:
    """Per new geometry: whether it matches a removed building at IoU >= `iou` (greedy one to one)."""
    pairs = []
    tree = shapely.STRtree(removed)
    for i, g in enumerate(new):
        for j in tree.query(g, predicate="intersects"):
            inter = g.intersection(removed[j]).area
            pairs.append((inter / (g.area + removed[j].area - inter), i, int(j)))
    hit, used = np.zeros(len(new), bool), set()
    for score, i, j in sorted(pairs, reverse=True):
        if score >= iou and not hit[i] and j not in used:
            hit[i] = True
            used.add(j)
    return hit


def score_changes(changes: list, case: dict, metres_per_px: float, valid: np.ndarray) -> list[dict]:
    """One row per change: status, confidence, right or not (see the module doc), shift error."""
    from geolabel.mapupdate.diff import valid_share

    new = [c for c in changes if c.status == "new"]
    hits = {0.25: match_new([c.geometry for c in new], case["removed"], 0.25),
            0.5: match_new([c.geometry for c in new], case["removed"], 0.5)}
    rows = []
    for k, c in enumerate(new):
        rows.append({"status": "new", "confidence": c.confidence, "right": bool(hits[0.25][k]),
                     "right_iou50": bool(hits[0.5][k]), "on_nodata": valid_share(c.geometry, valid) < 0.5})
    for c in changes:
        if c.status == "new":
            continue
        row = {"status": c.status, "confidence": c.confidence, "on_nodata": valid_share(c.original, valid) < 0.5}
        if c.status == "shifted":
            true = case["corrections"].get(c.source_id)
            row["right"] = true is not None
            row["error_m"] = float(np.hypot(*(np.array(c.shift) - true)) * metres_per_px) if true is not None else None
        elif c.status == "missing":
            row["right"] = c.source_id in case["fakes"]
        rows.append(row)
    return rows


def run_city(city: str, run: str, seeds: list[int], out: Path) -> dict:
    """Every seed's changes, scored, for one city."""
    import geopandas as gpd
    from affine import Affine

    from geolabel.align.data import Scene
    from geolabel.align.fields import to_pixels
    from geolabel.mapupdate import DiffParams, map_update

    image, labels, source = load_city(city)
    valid_full = labels != 255
    transform = _tile_range(city, 21).transform()
    t0 = time.perf_counter()
    prob_full, prob_source = city_probability(city, run, image, valid_full, transform)
    predict_s = time.perf_counter() - t0
    prob = block_mean(prob_full, FACTOR) / 255.0
    valid = block_mean(valid_full, FACTOR) >= 0.5
    small = np.ascontiguousarray(image[: prob.shape[0] * FACTOR : FACTOR, : prob.shape[1] * FACTOR : FACTOR])
    grid = transform * Affine.scale(FACTOR)
    frame = gpd.read_file(SHARED / city / "osm-buildings.geojson")
    latitude = float(frame.total_bounds[1::2].mean())
    metres_per_px = grid.a * math.cos(math.radians(latitude))
    truth = to_pixels(np.asarray(frame.to_crs("EPSG:3857").geometry.values, dtype=object), grid)
    rows, cases = [], []
    for seed in seeds:
        case = perturb(truth, valid, metres_per_px, np.random.default_rng(seed))
        scene = Scene(small, grid, "EPSG:3857", case["geoms"], case["ids"])
        changes, summary = map_update(scene, prob, out / f"{city}-s{seed}", DiffParams(), "geolabel benchmark",
                                      valid=valid)
        for row in score_changes(changes, case, metres_per_px, valid):
            rows.append({**row, "seed": seed})
        cases.append({"seed": seed, "removed": len(case["removed"]), "moved": len(case["corrections"]),
                      "fakes": len(case["fakes"]), "counts": summary["counts"]})
    return {"city": city, "run": run, "probability": prob_source, "image": source, "predict_s": predict_s,
            "grid_m": metres_per_px, "buildings": len(truth), "cases": cases, "rows": rows}


def scores(result: dict, threshold: float) -> dict:
    """Precision and recall per status, in the .osc (confidence >= threshold) and in all changes."""
    rows, cases = result["rows"], result["cases"]
    totals = {"new": sum(c["removed"] for c in cases), "shifted": sum(c["moved"] for c in cases),
              "missing": sum(c["fakes"] for c in cases)}
    out = {}
    for status, total in totals.items():
        for name, pick in (("osc", lambda r: r["confidence"] >= threshold and status != "missing"), ("all", lambda r: True)):
            picked = [r for r in rows if r["status"] == status and pick(r)]
            right = sum(r["right"] for r in picked)
            entry = {"flagged": len(picked), "right": right, "precision": right / len(picked) if picked else None,
                     "recall": right / total if total else None}
            if status == "new":
                entry["precision_iou50"] = sum(r["right_iou50"] for r in picked) / len(picked) if picked else None
            if status == "shifted":
                errors = [r["error_m"] for r in picked if r["right"]]
                within = sum(e <= 0.5 for e in errors)
                entry["median_error_m"] = float(np.median(errors)) if errors else None
                entry["precision_within_0.5m"] = within / len(picked) if picked else None
                entry["recall_within_0.5m"] = within / total if total else None
            out[f"{status}/{name}"] = entry
    out["on_nodata"] = sum(r["on_nodata"] for r in rows)
    return out


def choose_threshold(results: list[dict]) -> tuple[float | None, list[dict]]:
    """The lowest threshold with precision >= TARGET for both `new` and `shifted` over these cities
    pooled; when none reaches it, the one with the highest lower of the two precisions (among
    those leaving at least one change of each status). Returns it and the table it came from."""
    if not results:
        return None, []
    pooled = {"rows": [r for res in results for r in res["rows"]], "cases": [c for res in results for c in res["cases"]]}
    table = []
    for t in THRESHOLDS:
        s = scores(pooled, t)
        table.append({"threshold": t, **{k: s[f"{k}/osc"] for k in ("new", "shifted")}})
    ok = [row["threshold"] for row in table if all((row[k]["precision"] or 0) >= TARGET for k in ("new", "shifted"))]
    if ok:
        return min(ok), table
    flagged = [row for row in table if row["new"]["flagged"] and row["shifted"]["flagged"]]
    worst = max(flagged, key=lambda row: (min(row["new"]["precision"], row["shifted"]["precision"]), -row["threshold"]))
    return worst["threshold"], table


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def threshold_table(table: list[dict]) -> list[str]:
    """Markdown rows: per threshold, flagged / precision / recall of `new` and `shifted` in the .osc."""
    lines = ["| threshold | new: flagged | precision | recall | shifted: flagged | precision | recall |",
             "|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['threshold']:.2f} | {row['new']['flagged']} | {fmt(row['new']['precision'])} | "
                     f"{fmt(row['new']['recall'])} | {row['shifted']['flagged']} | {fmt(row['shifted']['precision'])} | "
                     f"{fmt(row['shifted']['recall'])} |")
    return lines


def report(args: argparse.Namespace, test: dict, selection: list[dict], threshold: float, table: list[dict],
           wall: float) -> None:
    """Write benchmarks/results/mapupdate.md and .json."""
    from geolabel.mapupdate import DiffParams

    niceness = os.nice(0)
    command = (f"nice -n {niceness} " if niceness else "") + ".venv/bin/python " + " ".join(
        [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    s = scores(test, threshold)
    default = scores(test, DiffParams().min_confidence)
    lines = [
        "# Map update on a held-out city with known changes",
        "",
        f"Command: `{command}` ({wall:.0f} s; 1-min load average at the end {os.getloadavg()[0]:.1f} on the shared "
        f"2-core CPU). Seeds {', '.join(map(str, args.seeds))}. Protocol: `benchmarks/bench_mapupdate.py` docstring.",
        "",
        f"Test city **{test['city']}**: {test['buildings']} OSM buildings; probability: {test['probability']}; "
        f"diff grid {test['grid_m']:.3f} m/px. Per seed: "
        + "; ".join(f"s{c['seed']}: {c['removed']} removed, {c['moved']} moved, {c['fakes']} fakes" for c in test["cases"]) + ".",
        "",
        f"## Threshold chosen on {', '.join(r['city'] for r in selection) or 'no other city'}: **{fmt(threshold, 2)}** "
        f"(library default `DiffParams.min_confidence` = {DiffParams().min_confidence})",
        "",
    ]
    lines += threshold_table(table)
    lines += ["", f"The same on {test['city']}, for information only (not used to choose):", ""]
    lines += threshold_table(choose_threshold([test])[1])
    named = [(f"threshold chosen on other cities ({fmt(threshold, 2)})", s)]
    if threshold != DiffParams().min_confidence:
        named.append((f"library default ({DiffParams().min_confidence})", default))
    for name, result in named:
        lines += ["", f"## {test['city']}, {name}", "",
                  "| status | set | flagged | right | precision | recall | notes |", "|---|---|---|---|---|---|---|"]
        for key, e in result.items():
            if key == "on_nodata":
                continue
            notes = ""
            if key.startswith("new"):
                notes = f"precision at IoU >= 0.5: {fmt(e['precision_iou50'])}"
            if key.startswith("shifted"):
                notes = (f"median error {fmt(e['median_error_m'], 2)} m; within 0.5 m: precision "
                         f"{fmt(e['precision_within_0.5m'])}, recall {fmt(e['recall_within_0.5m'])}")
            if key == "missing/osc":
                continue
            lines.append(f"| {key.split('/')[0]} | {key.split('/')[1]} | {e['flagged']} | {e['right']} | "
                         f"{fmt(e['precision'])} | {fmt(e['recall'])} | {notes} |")
        lines.append(f"\nChanges on nodata: **{result['on_nodata']}**.")
    lines.append("")
    (RESULTS / "mapupdate.md").write_text("\n".join(lines) + "\n")
    payload = {"command": command, "seeds": args.seeds, "load_1min": os.getloadavg()[0], "wall_s": wall,
               "threshold": threshold, "threshold_table": table, "test": {k: v for k, v in test.items() if k != "rows"},
               "scores_chosen": s, "scores_default": default,
               "selection": [{k: v for k, v in r.items() if k != "rows"} for r in selection]}
    (RESULTS / "mapupdate.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--city", default="virac-ph")
    parser.add_argument("--run", required=True, help="Run folder trained without --city, or `osm`.")
    parser.add_argument("--select-on", nargs="*", default=[], metavar="CITY=RUN",
                        help="Cities (with runs trained without them) on which to choose the threshold.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    started = time.perf_counter()
    selection = []
    for item in args.select_on:
        city, run = item.split("=", 1)
        selection.append(run_city(city, run, args.seeds, OUT / "select"))
        print(f"{city}: scored", flush=True)
    threshold, table = choose_threshold(selection)
    test = run_city(args.city, args.run, args.seeds, OUT / "test")
    if threshold is None:
        from geolabel.mapupdate import DiffParams

        threshold = DiffParams().min_confidence
    report(args, test, selection, threshold, table, time.perf_counter() - started)


if __name__ == "__main__":
    main()
