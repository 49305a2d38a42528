"""Benchmark: learning from imperfect maps on a held-out city (real imagery, real OSM polygons).

Train on two shared OAM cities, evaluate on the third with synthetic smooth misregistrations
of its real OSM polygons (exact ground truth):
  A. MultiscaleAligner: per-vertex misregistration (px) before/after, with its distribution.
  B. AlignUpdateNet: same, plus IoU of buildings dropped from the input map and recovered.
  C. RNN refinement: building IoU of a base U-Net vs base + refinement.
  D. mapupdate with some buildings removed and some shifted: precision/recall of "new" and
     "shifted" (oracle probabilities, then the AlignUpdateNet's), and .osc validity.

Run: .venv/bin/python benchmarks/bench_alignment.py [--budget 240] [--quick]
Writes benchmarks/results/alignment.md and alignment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402

from geolabel.align.apply import FACTORS, SMOOTH_PX, align_geometries, load_alignment_model  # noqa: E402
from geolabel.align.data import Scene, load_scene, make_batch, rasterize_map, within_image  # noqa: E402
from geolabel.align.fields import displace, random_smooth_field, vertex_errors  # noqa: E402
from geolabel.align.training import TimeLimit, train_alignment, train_rnn_refine  # noqa: E402
from geolabel.atomic import write_text_atomic  # noqa: E402
from geolabel.data.tiles import TileFolder, local_tile_range, mosaic_tiles  # noqa: E402
from geolabel.mapupdate import building_probability, map_update, osc_problems  # noqa: E402
from geolabel.models.align_update import AlignUpdateNet  # noqa: E402
from geolabel.models.alignment import MultiscaleAligner  # noqa: E402
from geolabel.models.rnn_refine import RNNRefine, refined_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "oam-osm"
AUSTIN = ROOT.parent / "shared" / "data" / "inria-austin"
TRAIN, TEST = ("kampala-ug", "zanzibar-tz"), "virac-ph"
PLAIN = {"factors": (1,), "tta": False, "smooth": 0.0}  # one pass, as the trained-for-budget rows were scored
DEFAULT = {"factors": FACTORS, "tta": True, "smooth": SMOOTH_PX}  # what `geolabel align` does
GRID = [{"factors": (1,) * n, "tta": True, "smooth": s} for n in (1, 2) for s in (0.0, 6.0, 12.0, 16.0, 24.0)]


def mosaic(city: str, zoom: int, out: Path) -> Path:
    """The city's XYZ tiles as one RGB COG (EPSG:3857), missing tiles nodata (0), as `geolabel fetch` writes it."""
    folder = DATA / city / "tiles"
    mosaic_tiles(TileFolder(folder), local_tile_range(folder, zoom), out, source=city)
    return out


def registered_scene() -> Scene:
    """The Inria Austin crop (0.3 m, like the aligners' training data) with polygons of its clean
    manual mask: a truth registered to the imagery, which OSM is not (see the report)."""
    from geolabel.align.fields import to_pixels
    from geolabel.vectorize import regularized_polygons

    with rasterio.open(AUSTIN / "image.tif") as src:
        image, transform, crs = src.read([1, 2, 3]).transpose(1, 2, 0), src.transform, src.crs
    with rasterio.open(AUSTIN / "buildings-mask.tif") as src:
        mask = (src.read(1) > 127).astype(np.uint8)
    frame = regularized_polygons(mask, transform, crs, tolerance=0.6, min_area=20.0)
    geoms = to_pixels(frame.geometry.to_numpy(), transform)
    return Scene(image, transform, crs, geoms, np.arange(len(geoms)))


def as_drawn(cases: list[tuple]) -> list[tuple]:
    """The same test cells with no synthetic shift: 'after' is then how far the aligner moves
    the polygons as mapped, i.e. the offset it reads between OSM and the imagery."""
    return [(image, geoms, np.zeros_like(field)) for image, geoms, field in cases[::2]]


def crop_to_content(scene: Scene) -> Scene:
    """Trim all-black borders (outside the tiles) to keep rasters small."""
    valid = (scene.image > 0).any(-1)
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    geoms = shapely.transform(scene.geoms, lambda p: p - np.array([c0, r0], float))
    return Scene(scene.image[r0:r1, c0:c1], scene.transform * Affine.translation(c0, r0), scene.crs, geoms, scene.ids)


def stats(errors: np.ndarray) -> dict:
    q = np.percentile(errors, [10, 25, 50, 75, 90, 99])
    return {
        "mean": float(errors.mean()),
        **{f"p{p}": float(v) for p, v in zip((10, 25, 50, 75, 90, 99), q)},
        "share_below_1px": float((errors < 1).mean()),
        "share_below_2px": float((errors < 2).mean()),
    }


def histogram(before: np.ndarray, after: np.ndarray, edges=(0, 1, 2, 3, 4, 6, 8, 12, 1e9)) -> list[str]:
    hb, _ = np.histogram(before, edges)
    ha, _ = np.histogram(after, edges)
    rows = ["| error (px) | before | after |", "|---|---|---|"]
    for i in range(len(edges) - 1):
        label = f"{edges[i]:g}-{edges[i + 1]:g}" if edges[i + 1] < 1e8 else f">= {edges[i]:g}"
        rows.append(f"| {label} | {hb[i] / hb.sum():.1%} | {ha[i] / ha.sum():.1%} |")
    return rows


def test_crops(scene: Scene, amplitude: float, trials: int, seed: int, size: int = 256,
               step: int | None = None) -> list[tuple]:
    """Held-out test cases: (image crop, polygons wholly inside it, random field), per grid cell
    (every `step` px, default `size`) with at least 3 buildings, `trials` fields per cell; fields
    as smooth as in training (bump widths 20-64 px)."""
    rng = np.random.default_rng(seed)
    h, w = scene.shape
    cases = []
    for r0 in range(0, h - size + 1, step or size):
        for c0 in range(0, w - size + 1, step or size):
            box = shapely.box(c0 + 2, r0 + 2, c0 + size - 2, r0 + size - 2)
            inside = scene.geoms[shapely.within(scene.geoms, box)]
            if len(inside) < 3:
                continue
            geoms = shapely.transform(inside, lambda p, o=(c0, r0): p - np.array(o, float))
            image = scene.image[r0 : r0 + size, c0 : c0 + size]
            for _ in range(trials):
                cases.append((image, geoms, random_smooth_field(size, size, amplitude, rng, 60, (0.075, 0.25))))
    return cases


def eval_alignment(model, cases, inference=PLAIN, consistency: bool = False):
    """Per vertex: the synthetic shift, the error left against the truth, and with `consistency`
    (else None) the distance between where the aligner puts the shifted map and where it puts
    the map as drawn: OSM's own offset from the imagery cancels out, so an aligner that reads
    the imagery exactly scores 0 whatever that offset is."""
    before, after, residual = [], [], []
    for image, geoms, field in cases:
        moved = displace(geoms, field)
        aligned, _ = align_geometries(model, image, moved, tile=256, **inference)
        before.append(vertex_errors(geoms, moved))
        after.append(vertex_errors(geoms, aligned))
        if consistency:
            from_drawn, _ = align_geometries(model, image, geoms, tile=256, **inference)
            residual.append(vertex_errors(from_drawn, aligned))
    return np.concatenate(before), np.concatenate(after), np.concatenate(residual) if consistency else None


def label(inference: dict) -> str:
    passes = len(inference["factors"])
    return (f"{passes} pass{'es' if passes > 1 else ''}" + (", D4" if inference["tta"] else "")
            + (f", pooling {inference['smooth']:g} px" if inference["smooth"] else ""))


def eval_inference(model_path: str, cases: list, validation: dict[str, list], trained_by: str) -> dict:
    """A saved chain scored on the test cases plain, with D4 averaging, and with the default
    inference; with `validation`, the GRID of passes x pooling widths scored on those sets (not
    the test city), to show where the default comes from."""
    model = load_alignment_model(model_path)
    rows = {}
    for name, inference in (("plain", PLAIN), ("d4", {**PLAIN, "tta": True}), ("default", DEFAULT)):
        before, after, residual = eval_alignment(model, cases, inference, consistency=name == "default")
        rows[name] = {"inference": label(inference), "before": stats(before), "after": stats(after),
                      "ratio": float(after.mean() / before.mean()), "histogram": histogram(before, after)}
        if residual is not None:
            rows[name]["consistency"] = float(residual.mean() / before.mean())
    grid = []
    for inference in GRID if validation else []:
        ratios = {}
        for name, more in validation.items():
            before, after, _ = eval_alignment(model, more, inference)
            ratios[name] = float(after.mean() / before.mean())
        grid.append({"inference": label(inference), "ratios": ratios, "mean": float(np.mean(list(ratios.values())))})
    return {"model": model_path, "trained_by": trained_by, "rows": rows, "grid": grid,
            "validation_cases": {n: len(v) for n, v in validation.items()},
            "selected": min(grid, key=lambda g: g["mean"])["inference"] if grid else None,
            "default": label(DEFAULT)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def eval_dropped(model, cases, keep_fraction: float, seed: int) -> dict:
    """IoU of the buildings left out of the input map, as segmented by the AlignUpdateNet."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    ious, recalled, total = [], 0, 0
    for image, geoms, field in cases:
        h, w = image.shape[:2]
        keep = rng.random(len(geoms)) < keep_fraction
        moved = displace(geoms[keep], field)
        pred = building_probability(model, image, moved, tile=256) >= 0.5
        dropped = rasterize_map(geoms[~keep], h, w)[..., 0] > 0
        kept = ndimage.binary_dilation(rasterize_map(geoms[keep], h, w)[..., 0] > 0, iterations=3)
        ious.append(iou(pred & ~kept, dropped))
        for g in geoms[~keep]:
            m = rasterize_map(np.array([g]), h, w)[..., 0] > 0
            total += 1
            recalled += bool(m.any() and pred[m].mean() >= 0.5)
    return {"dropped_iou": float(np.mean(ious)), "dropped_recall_50": recalled / max(total, 1), "dropped_buildings": total}


def building_chips(scenes, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n // 8):
        b = make_batch(scenes[i % len(scenes)], 8, size, 0.0, rng)
        images.append(b["image"])
        labels.append((b["segmentation"][..., 1] > 0).astype("int32"))
    return np.concatenate(images), np.concatenate(labels)


def seg_iou(model, scene: Scene) -> float:
    prob = building_probability(model, scene.image, tile=256)
    truth = rasterize_map(scene.geoms, *scene.shape)[..., 0] > 0
    valid = (scene.image > 0).any(-1)
    return iou((prob >= 0.5) & valid, truth & valid)


def perturb_map(scene: Scene, seed: int, removed_share=0.15, shifted_share=0.15, shift_px=(4, 8)):
    """Remove some buildings, translate some others: the 'existing map' with known truth."""
    rng = np.random.default_rng(seed)
    n = len(scene.geoms)
    order = rng.permutation(n)
    removed = order[: int(n * removed_share)]
    shifted = order[int(n * removed_share) : int(n * (removed_share + shifted_share))]
    geoms = scene.geoms.copy()
    shifts = {}
    for i in shifted:
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(*shift_px)
        d = np.array([np.cos(angle), np.sin(angle)]) * dist
        geoms[i] = shapely.transform(geoms[i], lambda p, d=d: p + d)
        shifts[scene.ids[i]] = d
    keep = np.setdiff1d(np.arange(n), removed)
    existing = Scene(scene.image, scene.transform, scene.crs, geoms[keep], scene.ids[keep])
    return existing, scene.geoms[removed], shifts


def eval_mapupdate(scene: Scene, existing: Scene, removed, shifts, prob, out_dir: Path) -> dict:
    changes, summary = map_update(existing, prob, out_dir, source="geolabel benchmark")
    new = [c.geometry for c in changes if c.status == "new"]

    def matches(a, b) -> bool:
        inter = a.intersection(b).area
        return inter / max(a.union(b).area, 1e-9) >= 0.3 or inter / max(b.area, 1e-9) >= 0.5

    tp_new = sum(any(matches(g, r) for r in removed) for g in new)
    found = sum(any(matches(g, r) for g in new) for r in removed)
    flagged = {c.source_id: c.shift for c in changes if c.status == "shifted"}
    tp_shift = [k for k in flagged if k in shifts]
    # the correction is a shift back onto the truth: flagged shift ~ -true shift
    shift_err = [float(np.hypot(*(np.array(flagged[k]) + shifts[k]))) for k in tp_shift]
    root = ET.parse(out_dir / "changes.osc").getroot()
    return {
        "counts": summary["counts"],
        "new_precision": tp_new / max(len(new), 1),
        "new_recall": found / max(len(removed), 1),
        "shifted_precision": len(tp_shift) / max(len(flagged), 1),
        "shifted_recall": len(tp_shift) / max(len(shifts), 1),
        "shift_error_px_mean": float(np.mean(shift_err)) if shift_err else None,
        "truth": {"removed": len(removed), "shifted": len(shifts), "existing": len(existing.geoms)},
        "osc_problems": osc_problems(out_dir / "changes.osc"),
        "osc_root": root.tag,
        "osc_creates": len(root.findall("create/way")),
        "osc_modifies": len(root.findall("modify/way")),
    }


def run_aligner(scenes: list, cases: list, args: argparse.Namespace, budget: float,
                extra_cases: dict[str, list] | None = None) -> dict:
    """Train the MultiscaleAligner for `budget` seconds and score it on the test cases (and on
    each set of `extra_cases`, reported under "extra")."""
    aligner = MultiscaleAligner(filters=(8, 8, 16), focus=20.0)
    t0 = time.time()
    hist = train_alignment(aligner, scenes, epochs=100_000, steps=10, batch=8, size=args.crop,
                           max_amplitude=args.amplitude, lr=2e-3, seed=args.seed, time_limit_s=budget)
    train_s = time.time() - t0
    extra_cases = extra_cases or {}
    # PLAIN, as every trained row; the consistency set is the test cases themselves
    before, after, residual = eval_alignment(aligner, cases, consistency="consistency" in extra_cases)
    if args.save:
        aligner.save(args.save)
    extra = {}
    for name, more in extra_cases.items():
        b, a = (before, residual) if name == "consistency" else eval_alignment(aligner, more)[:2]
        extra[name] = {"cases": len(more), "vertices": int(b.size), "before": stats(b), "after": stats(a),
                       "ratio": float(a.mean() / b.mean()) if b.mean() else None, "histogram": histogram(b, a)}
    return {"train_s": train_s, "budget_s": budget, "epochs": len(hist["loss"]),
            "final_loss": hist["loss"][-1], "before": stats(before), "after": stats(after),
            "ratio": float(after.mean() / before.mean()), "histogram": histogram(before, after),
            "vertices": int(before.size), "extra": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=float, default=240, help="training seconds per model")
    ap.add_argument("--amplitude", type=float, default=8.0, help="max synthetic misregistration, px")
    ap.add_argument("--downsample", type=int, default=2, help="of the z20 (~15 cm) mosaics")
    ap.add_argument("--trials", type=int, default=2, help="random fields per 256 px test cell")
    ap.add_argument("--crop", type=int, default=64, help="training crop size, px")
    ap.add_argument("--seed", type=int, default=0, help="weights and training batches (test cases stay fixed)")
    ap.add_argument("--save", help="also save the trained MultiscaleAligner here (.keras)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the existing .json")
    ap.add_argument("--load", help="score a saved MultiscaleAligner (.keras) plain, with D4 averaging and with "
                    "field pooling, sweep the pooling width on validation sets, and add it to the existing results")
    ap.add_argument("--trained-by", default="", help="with --load: the command that trained the model (for the report)")
    ap.add_argument("--select", action="store_true", help="with --load: also score the grid of passes x pooling widths "
                    "on the validation sets (~10 min)")
    ap.add_argument("--aligner-only", action="store_true",
                    help="train and score only the MultiscaleAligner (for --budget s) and add it to the existing results")
    args = ap.parse_args()
    if args.report_only:
        write_report(json.loads(Path(args.out).with_suffix(".json").read_text()), Path(args.out))
        return
    budget = 8.0 if args.quick else args.budget
    t_start = time.time()
    keras.utils.set_random_seed(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-align-"))
    scenes = {}
    for city in (*TRAIN, TEST):
        path = mosaic(city, 20, tmp / f"{city}.tif")
        scenes[city] = crop_to_content(load_scene(path, DATA / city / "osm-buildings.geojson", args.downsample))
    train = [scenes[c] for c in TRAIN]
    # ~84% of the train mosaics is black (no tiles): polygons there carry no image evidence
    # of their misregistration, so the aligners train on the polygons over imagery only
    align_train = [within_image(s) for s in train]
    test = within_image(scenes[TEST], margin=16)
    res = abs(test.transform.a)
    results: dict = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_alignment.py", *sys.argv[1:]]),
        "train_cities": list(TRAIN),
        "test_city": TEST,
        "pixel_size_m": res,
        "test_image_px": list(test.shape),
        "test_buildings": int(len(test.geoms)),
        "amplitude_px": args.amplitude,
        "budget_s": budget,
        "crop": args.crop,
    }
    cases = test_crops(test, args.amplitude, args.trials, seed=123)
    results["test_crops"] = len(cases)

    if args.load:
        validation = {}
        if args.select:  # Austin cells every 256 px (not 128 as its own test set): the grid is 10 settings
            validation = {"registered": test_crops(registered_scene(), args.amplitude, args.trials, seed=321),
                          TRAIN[0]: test_crops(within_image(scenes[TRAIN[0]], margin=16), args.amplitude, args.trials,
                                               seed=123)}
        entry = {**eval_inference(args.load, cases, validation, args.trained_by), "command": results["command"],
                 "seconds": time.time() - t_start}
        print("inference", {k: round(v["ratio"], 3) for k, v in entry["rows"].items()}, entry["selected"], flush=True)
        full = json.loads(Path(args.out).with_suffix(".json").read_text())
        full.setdefault("inference", []).append(entry)
        write_report(full, Path(args.out))
        return

    # A. multiscale chain
    extra = None
    if args.aligner_only:
        registered = registered_scene()
        # the crop is small (1000 px): overlapping cells give it as many cases as the OSM city
        extra = {"registered": test_crops(registered, args.amplitude, args.trials, seed=321, step=128),
                 "as_drawn": as_drawn(cases), "consistency": cases}
        results["registered_buildings"] = int(len(registered.geoms))
    results["aligner"] = run_aligner(align_train, cases, args, budget, extra)
    print("aligner", results["aligner"]["before"]["mean"], "->", results["aligner"]["after"]["mean"], flush=True)
    if args.aligner_only:  # a longer-budget row beside the full run's results
        full = json.loads(Path(args.out).with_suffix(".json").read_text())
        full.setdefault("aligner_budgets", []).append({**results["aligner"], "command": results["command"],
                                                       "amplitude_px": args.amplitude,
                                                       "registered_buildings": results.get("registered_buildings")})
        write_report(full, Path(args.out))
        return

    # B. align and update
    au = AlignUpdateNet(image_base=8, map_base=8, depth=4, max_displacement=args.amplitude * 1.5)
    t0 = time.time()
    hist = train_alignment(au, align_train, epochs=1000, steps=10, batch=8, size=args.crop, max_amplitude=args.amplitude,
                           keep_fraction=0.5, lr=1e-3, time_limit_s=budget)
    before_u, after_u, _ = eval_alignment(au, cases)
    results["align_update"] = {"train_s": time.time() - t0, "epochs": len(hist["loss"]), "final_loss": hist["loss"][-1],
                               "before": stats(before_u), "after": stats(after_u),
                               "ratio": float(after_u.mean() / before_u.mean()),
                               "histogram": histogram(before_u, after_u),
                               **eval_dropped(au, cases, 0.5, seed=7)}
    print("align_update", results["align_update"]["after"]["mean"], results["align_update"]["dropped_iou"], flush=True)

    # C. base U-Net vs base + RNN refinement
    from geolabel.models import build_model

    base = build_model("unet", 2, depth=3, width=16)
    images, labels = building_chips(train, 256 if not args.quick else 16, 96, seed=3)
    base.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    t0 = time.time()
    base.fit(images, labels, batch_size=8, epochs=1000, verbose=0, callbacks=[TimeLimit(budget)])
    base_s = time.time() - t0
    clean_images, clean_labels = building_chips([scenes[TRAIN[0]]], 64 if not args.quick else 8, 96, seed=11)
    refine = RNNRefine(2)
    t0 = time.time()
    train_rnn_refine(refine, lambda x: keras.ops.convert_to_numpy(base(x, training=False)), clean_images, clean_labels,
                     epochs=1000, batch=8, lr=1e-3, time_limit_s=budget / 2)
    refine_s = time.time() - t0
    full = refined_model(base, refine)
    results["rnn_refine"] = {"base_iou": seg_iou(base, scenes[TEST]), "refined_iou": seg_iou(full, scenes[TEST]),
                             "base_train_s": base_s, "refine_train_s": refine_s,
                             "clean_set": f"{len(clean_images)} chips of {TRAIN[0]}"}
    print("rnn", results["rnn_refine"], flush=True)

    # D. map update with known truth
    existing, removed, shifts = perturb_map(test, seed=5)
    truth_prob = rasterize_map(test.geoms, *test.shape)[..., 0]
    out = Path(args.out + "-mapupdate")
    results["mapupdate_oracle"] = eval_mapupdate(test, existing, removed, shifts, truth_prob, out / "oracle")
    au_prob = building_probability(au, test.image, existing.geoms, tile=256)
    results["mapupdate_align_update"] = eval_mapupdate(test, existing, removed, shifts, au_prob, out / "align_update")
    base_prob = building_probability(full, test.image, tile=256)
    results["mapupdate_unet_rnn"] = eval_mapupdate(test, existing, removed, shifts, base_prob, out / "unet_rnn")
    results["total_s"] = time.time() - t_start
    write_report(results, Path(args.out))


def write_report(r: dict, out: Path) -> None:
    write_text_atomic(out.with_suffix(".json"), json.dumps(r, indent=2, default=float) + "\n")
    a, u, c = r["aligner"], r["align_update"], r["rnn_refine"]
    lines = [
        "# Learning from imperfect maps: alignment, align-and-update, RNN refinement, map update",
        "",
        f"Command: `{r['command']}` (total {r['total_s']:.0f} s on the shared 2-core CPU).",
        "",
        f"Train cities: {', '.join(r['train_cities'])}; held-out city: **{r['test_city']}** "
        f"({r['test_image_px'][1]}x{r['test_image_px'][0]} px at {r['pixel_size_m']:.3f} m/px, "
        f"{r['test_buildings']} real OSM buildings wholly inside the imagery; {r['test_crops']} test cases = "
        f"256 px cells x random fields). Misregistration: random smooth "
        f"fields (sums of Gaussians, widths 20-64 px) peaking at {r['amplitude_px']:g} px at most, applied to the real "
        f"polygons, so the truth is exact. Each model trained for about {r['budget_s']:.0f} s on the shared CPU "
        f"(small widths, {r.get('crop', 64)} px crops, batches of 8): MultiscaleAligner {r['aligner']['epochs']} "
        f"epochs of 10 steps, AlignUpdateNet {r['align_update']['epochs']}; both on the train polygons over imagery.",
        "",
        "## A/B. Misregistration per vertex (px), before vs after alignment",
        "",
        "| model | before mean | after mean | after/before | before median | after median | after p90 | after < 2 px |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in (("MultiscaleAligner (1/8,1/4,1/2,1)", a), ("AlignUpdateNet (single scale)", u)):
        lines.append(
            f"| {name} | {m['before']['mean']:.2f} | {m['after']['mean']:.2f} | {m['ratio']:.2f} | "
            f"{m['before']['p50']:.2f} | {m['after']['p50']:.2f} | {m['after']['p90']:.2f} | "
            f"{m['after']['share_below_2px']:.1%} |"
        )
    longer = r.get("aligner_budgets", [])
    if longer:
        lines += ["", "MultiscaleAligner trained longer (same model, data and test cases; `--aligner-only`; scored plain: one pass, no D4 averaging or pooling):", "",
                  "| field peak px | training s | epochs of 10 steps | final loss | before mean | after mean | after/before "
                  "| after median | after < 2 px | command |", "|---|---|---|---|---|---|---|---|---|---|"]
        for m in longer:
            lines.append(f"| {m.get('amplitude_px', r['amplitude_px']):g} | {m['train_s']:.0f} | {m['epochs']} | {m['final_loss']:.2f} | {m['before']['mean']:.2f} | "
                         f"{m['after']['mean']:.2f} | {m['ratio']:.2f} | {m['after']['p50']:.2f} | "
                         f"{m['after']['share_below_2px']:.1%} | `{m['command']}` |")
    checked = [m for m in longer if m.get("extra")]
    if checked:
        lines += ["", "The same trained aligners on two more test sets: **registered truth** = the Inria Austin crop "
                  "(0.3 m, another continent and sensor) with polygons of its clean manual mask (regularised, "
                  "tolerance 0.6 m), under the same kind of random fields: there the truth sits on the imagery; "
                  "**OSM as drawn** = the held-out city's test cells with no synthetic shift, where 'after' is how far "
                  "the aligner moves the real OSM polygons, i.e. the OSM-to-imagery offset it reads; "
                  "**consistency** = the held-out test cases again, scored against where the same aligner puts the "
                  "map as drawn instead of against OSM: OSM's own offset cancels out, so an aligner that reads the "
                  "imagery exactly scores 0 (measured from the rows that have it).", "",
                  "| field peak px | training s | registered: buildings | before mean | after mean | after/before | after median "
                  "| after < 2 px | OSM as drawn: mean move (px) | median move | consistency: after mean (px) "
                  "| after/before |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in checked:
            reg, drawn = m["extra"]["registered"], m["extra"]["as_drawn"]
            same = m["extra"].get("consistency")
            tail = f"{same['after']['mean']:.2f} | {same['ratio']:.2f}" if same else "- | -"
            lines.append(f"| {m.get('amplitude_px', r['amplitude_px']):g} | {m['train_s']:.0f} | {m.get('registered_buildings')} | {reg['before']['mean']:.2f} | "
                         f"{reg['after']['mean']:.2f} | {reg['ratio']:.2f} | {reg['after']['p50']:.2f} | "
                         f"{reg['after']['share_below_2px']:.1%} | {drawn['after']['mean']:.2f} | "
                         f"{drawn['after']['p50']:.2f} | {tail} |")
        main_peak = [m for m in checked if m.get("amplitude_px", r["amplitude_px"]) == r["amplitude_px"]]
        last = (main_peak or checked)[-1]
        reg, drawn = last["extra"]["registered"], last["extra"]["as_drawn"]
        lines += ["", f"Reading: on OSM as drawn the aligner moves the polygons by {drawn['after']['mean']:.2f} px "
                  f"(median {drawn['after']['p50']:.2f}): that is the offset it reads between OSM and the imagery, "
                  f"and most of its residual against OSM truth ({last['after']['mean']:.2f} px). On the registered "
                  f"truth it gives {reg['ratio']:.2f}: a chain trained for {last['train_s'] / 60:.0f} min on two OAM "
                  "drone cities hardly transfers to aerial imagery of another continent and sensor, so this set "
                  "does not show the halving either; a registered truth of the training kind of imagery is what "
                  "is missing. Probe: the integer shift that best lays each set's polygon edges on the image "
                  "gradient is (0, 0) for the OSM of all three OAM cities but (0, -1) for the Austin mask's "
                  "polygons, and the saved 8 px chain moves those up by 1.0 px on average: part of its 'error' "
                  "there is that truth's own 1 px offset (roofs vs the mask, or the polygonisation)."]
        same = last["extra"].get("consistency")
        if same:
            lines += ["", f"With OSM's offset cancelled (consistency), the same chain leaves {same['after']['mean']:.2f} px "
                      f"of the {same['before']['mean']:.2f} px synthetic misregistration (median {same['after']['p50']:.2f}, "
                      f"after/before **{same['ratio']:.2f}**, {same['after']['share_below_2px']:.0%} of vertices under 2 px): "
                      f"against OSM truth it scores {last['ratio']:.2f}, OSM's own offset from the imagery included. "
                      "Still short of halving in one plain pass. Caveat: consistency also cancels moves the chain makes alike on both "
                      "inputs; probed with the saved 8 px chain run twice (`align_geometries(..., factors=(1, 1))`), it "
                      "scores 0.45 on consistency but 0.82 against OSM, and its move of OSM as drawn grows by ~0.7 px "
                      "per pass (1.70, 2.41, 3.08 px): its moves do not converge, so consistency flatters it. "
                      "Distribution:", "", *same["histogram"]]
        for m in checked:
            peak = m.get("amplitude_px", r["amplitude_px"])
            if peak != r["amplitude_px"]:
                lines += ["", f"Trained and tested with fields peaking at {peak:g} px (the paper's chain corrects up to "
                          f"+-4 px per scale, i.e. +-32 px at full resolution), the chain gives {m['ratio']:.2f} "
                          f"({m['before']['mean']:.2f} -> {m['after']['mean']:.2f} px) and moves OSM as drawn by "
                          f"{m['extra']['as_drawn']['after']['mean']:.2f} px: that move grows with the amplitude the "
                          "chain is trained for, so part of it is the chain's own error, not only OSM's offset; "
                          "larger fields do not bring the halving within this budget either."]
        lines += ["", f"Distribution on the registered truth, fields peaking at {r['amplitude_px']:g} px "
                  f"({reg['vertices']} vertices x trials):", "", *reg["histogram"]]
    inference = r.get("inference", [])
    if inference:
        lines += ["", "### Inference: D4 averaging, field pooling, two passes", "",
                  "Saved chains loaded and scored on the same test cases (`--load`): **plain** = one pass (as every "
                  "row above); **D4** = the field averaged over the 8 dihedral transforms of each tile, vectors "
                  "turned back (`predict_field(..., tta=True)`): the chain's errors, and its pull in one direction "
                  "(its non-converging moves), partly cancel; **default** = what `geolabel align` and `fetch --align` "
                  "do: D4, the field averaged over a Gaussian weighted by map support (`smooth_field`, a normalised "
                  "convolution that pools each building's reading with its neighbours': misregistration varies "
                  "slowly, one building's reading is noisy), and a second pass on the moved polygons.", "",
                  "| chain (trained by) | inference | before mean | after mean | after/before | after median | after p90 "
                  "| after < 2 px |", "|---|---|---|---|---|---|---|---|"]
        for m in inference:
            for name in ("plain", "d4", "default"):
                x = m["rows"][name]
                lines.append(f"| `{Path(m['model']).name}` (`{m['trained_by']}`) | {x['inference']} | "
                             f"{x['before']['mean']:.2f} | {x['after']['mean']:.2f} | **{x['ratio']:.2f}** | "
                             f"{x['after']['p50']:.2f} | {x['after']['p90']:.2f} | {x['after']['share_below_2px']:.1%} |")
        lines += ["", "Consistency (OSM's offset cancelled) with the default: " + ", ".join(
            f"`{Path(m['model']).name}` {m['rows']['default']['consistency']:.2f}" for m in inference) + "."]
        for m in (m for m in inference if m["grid"]):
            sets = list(m["validation_cases"])
            lines += ["", f"Where the default comes from (`{m['command']}`): the grid of inference settings scored "
                      "against each validation set's truth, after/before, on sets that are not the test city ("
                      + ", ".join(f"{n}: {k} cases" for n, k in m["validation_cases"].items())
                      + f"; registered = the Austin crop with its clean mask, {sets[-1]} = cells of a training city, "
                      f"OSM truth), chain `{Path(m['model']).name}`:", "",
                      "| inference | " + " | ".join(sets) + " | mean |", "|---|" + "---|" * (len(sets) + 1)]
            for g in m["grid"]:
                lines.append(f"| {g['inference']} | " + " | ".join(f"{g['ratios'][n]:.3f}" for n in sets)
                             + f" | {g['mean']:.3f} |")
            lines += ["", f"Selected (lowest mean): **{m['selected']}**; the library default: {m['default']}. The "
                      "widest pooling of the grid won (wider was not tried): the chain's single-building readings are noisier than the "
                      "misregistration varies, and wider pooling also averages away each building's own offset in "
                      "OSM or the mask; it blurs corrections that differ between neighbouring buildings "
                      "(`--smooth` sets it, `--factors 1` runs one pass)."]
        lines += ["", f"Distribution with the default (`{Path(inference[0]['model']).name}`):", "",
                  *inference[0]["rows"]["default"]["histogram"]]
    best = min(a["ratio"], u["ratio"], *(m["ratio"] for m in longer),
               *(m["rows"]["default"]["ratio"] for m in inference))
    verdict = "MET" if best <= 0.5 else "NOT MET"
    worst = max((m["rows"]["default"]["ratio"] for m in inference), default=None)
    lines += ["", f"Target (halve the mean misregistration): **{verdict}** (best after/before = {best:.2f}"
              + (f"; with the default inference every saved chain: {best:.2f}-{worst:.2f}" if inference else "") + ").", "",
              "What was checked and fixed (issue #6 follow-up): the conventions agree (the truth field warps the "
              "misregistered map back onto the true polygons; `tests/align/test_data.py`) and the chain overfits "
              "one batch (loss 25 -> 0.3 px^2 in 125 steps), so the nets can fit the task; three training defects "
              "were fixed: (1) each chain step's L2 was in its own pixels, so the 1/8 step weighed 64x less than the "
              "full-resolution one (now all in input pixels); (2) the AlignUpdateNet's field L2 was in pixels^2 and "
              "outweighed its segmentation term ~40:1 (now in units of its bound `max_displacement`, the paper's "
              "normalised field); (3) ~84% of the train mosaics is black (no tiles) and about a third of their "
              "polygons lie there, with no image evidence of their shift (the aligners now train on polygons over "
              "imagery only). Before (1)-(3) the chain learned nothing (after/before 1.00); with them, short trials "
              "(90-120 s, 300-550 steps, even with constant shifts) still showed a flat training loss, and the "
              "budget above only starts the chain reading the image-map offset: in one plain pass the target needs "
              "far more steps than a shared 2-core CPU gives in minutes (the papers train for hours on a GPU). "
              + ("What met it is inference (D4 averaging, field pooling, two passes; above), not longer training. "
                 if inference else "")
              + (f"Longer training of the same chain (table above), after/before: "
                 f"{a['ratio']:.2f} after {a['epochs'] * 10} steps, "
                 + ", ".join(f"{m['ratio']:.2f} after {m['epochs'] * 10}" for m in longer)
                 + ". "
                 if longer else "Not tested here: longer training. ")
              + "Note also that the real OSM polygons are "
              "themselves off the imagery (crude per-building best edge-match shift: median 1.0-1.4 px, mean "
              "1.9-3.0 px over the three cities), which bounds how low 'after' can go against OSM truth. "
              "Tried and dropped: training each step of the chain alone on crops at its own scale (the paper's "
              "schedule: wide context for the coarse steps at the price of a small crop), 600 s at 16 px: 0.94, "
              "and it moved OSM as drawn by 4.33 px: a coarse step's error is multiplied by its factor at full "
              "resolution (0.5 px at 1/8 is 4 px), which the end-to-end loss in input pixels keeps in check; "
              "with fields of 8-16 px the coarse steps have under 2 of their own pixels to correct."]
    lines += ["", f"Distribution, MultiscaleAligner ({a['vertices']} vertices x trials):", "", *a["histogram"], "",
              "Distribution, AlignUpdateNet:", "", *u["histogram"], "",
              "## B. Align-and-update: buildings dropped from the input map",
              "",
              f"Half the polygons were dropped from the (misregistered) input map; the net's fill output "
              f"over them: pixel IoU **{u['dropped_iou']:.3f}**, share of dropped buildings at least half "
              f"covered **{u['dropped_recall_50']:.1%}** ({u['dropped_buildings']} dropped buildings over all trials).",
              "",
              "## C. Recurrent refinement (learned PDE, T=5)",
              "",
              "| model | building IoU on held-out city |", "|---|---|",
              f"| base U-Net (depth 3, width 16, {c['base_train_s']:.0f} s) | {c['base_iou']:.3f} |",
              f"| base + RNN refinement ({c['refine_train_s']:.0f} s on {c['clean_set']}) | {c['refined_iou']:.3f} |",
              "",
              "## D. mapupdate with known truth (15% of buildings removed, 15% shifted by 4-8 px)",
              "",
              "| probabilities from | new P | new R | shifted P | shifted R | shift error (px) | counts | .osc |",
              "|---|---|---|---|---|---|---|---|"]
    for name, key in (("oracle (true raster)", "mapupdate_oracle"), ("AlignUpdateNet (image + existing map)",
                                                                     "mapupdate_align_update"),
                      ("U-Net + RNN (image only)", "mapupdate_unet_rnn")):
        m = r[key]
        err = "-" if m["shift_error_px_mean"] is None else f"{m['shift_error_px_mean']:.2f}"
        osc = "valid" if not m["osc_problems"] else "; ".join(m["osc_problems"][:2])
        lines.append(
            f"| {name} | {m['new_precision']:.2f} | {m['new_recall']:.2f} | {m['shifted_precision']:.2f} | "
            f"{m['shifted_recall']:.2f} | {err} | {m['counts']} | {osc} ({m['osc_creates']} created, "
            f"{m['osc_modifies']} modified ways) |"
        )
    fell_back = c["refined_iou"] == c["base_iou"]
    lines += ["", "Reading C: the refinement is fitted on 3/4 of the labelled chips and kept only if it beats the "
              "identity on the other 1/4 (`train_rnn_refine`); "
              + ("here it did not, so it is the identity and cannot hurt the base." if fell_back else
                 "here it did, and was kept."),
              "", "Reading D: the oracle row feeds the true building raster, so it measures the diff logic alone "
              "(the 'new' buildings it misses are probably removed buildings touching a kept one, whose pixels are "
              "then explained by the neighbour's footprint; not checked one by one). The model rows inherit the "
              "models' quality (A-C): the image-only U-Net's false positives become false 'new' buildings."]
    lines += ["", "Outputs of D (GeoJSON with `status`, .osc, summary, preview) are under "
              "`benchmarks/results/alignment-mapupdate/`.", ""]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")
    main()
