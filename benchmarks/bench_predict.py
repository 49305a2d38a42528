"""End-to-end `predict_raster` throughput (Mpx/s) and peak memory on 16-256 Mpx rasters of real imagery.

The rasters are the real Inria Austin crop (1000 x 1000 px, 0.3 m) mirrored into a
seamless mosaic, built once under benchmarks/data/ (git-ignored), plus the real z21 Zanzibar
OAM raster (`--sizes ...,real`). Each (model, size) runs
in its own subprocess so its peak RSS (ru_maxrss) is its own. In the same run the
script measures this machine's 3x3-conv peak (`geolabel.perf.measure_conv_peak`) and the
model's FLOPs per pixel (`geolabel.perf.flops_per_pixel`), and reports throughput as a
fraction of the FLOP-bound limit, and against the PyTorch baseline pipeline (0.57 Mpx/s;
target >= 1.5x). Outputs: benchmarks/results/predict.md and .json.

    .venv/bin/python benchmarks/bench_predict.py [--sizes 16,64,256,real] [--models fcn,unet-x4,unet]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
OUT = ROOT / "benchmarks" / "out" / "predict"
RESULTS = ROOT / "benchmarks" / "results"
SOURCE = ROOT.parent / "shared" / "data" / "inria-austin" / "image.tif"
BASELINE_MPX_S = 0.57  # the PyTorch baseline pipeline's end-to-end throughput
# label -> (registry name, builder config). Throughput does not depend on the weights, so the
# models are built with random weights; "unet-x4" is the architecture of the generalisation
# recipe (benchmarks/results/generalisation.md), whose unseen-city IoU the README reports.
MODELS = {
    "shipped": ("pretrained", {}),  # the building model inside the package (geolabel/weights/buildings)
    "fcn": ("fcn", {}),
    "unet": ("unet", {"width": 16}),
    "unet-x4": ("unet", {"width": 16, "downsample": 4}),
}
Z21_CITY, Z21_BLOCK = "kampala-ug", (0, 6144, 2048)  # a fully imaged 2048 px block of real z21 imagery (row, col, side)
REAL_RASTER = ROOT / "benchmarks" / "data" / "oam" / "zanzibar-tz" / "imagery.tif"  # z21 OAM, made by make_oam_datasets.py
CLI = "cli"  # rows that run `geolabel predict IMAGE --out OUT --polygons` itself (`cli_run`)
CLI_RASTER = "cli-raster"  # the same without --polygons
WINDOW, OVERLAP, BATCH = 1024, 64, 1  # defaults; --window / --batch change them
MODEL_ONLY_CALLS = 5  # back-to-back model calls timed for the "model only" rate

sys.path.insert(0, str(ROOT))


def build_raster(mpx: int) -> Path:
    """A square ~`mpx` Mpx RGB GeoTIFF mosaicking the real Austin crop with mirror flips (no seams)."""
    import rasterio
    from rasterio.windows import Window

    side = int(round(np.sqrt(mpx * 1024 * 1024) / 512)) * 512
    path = DATA / f"austin-mosaic-{side}.tif"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SOURCE) as src:
        tile = src.read()
        profile = src.profile
    h, w = tile.shape[1:]
    row_tiles = [tile, tile[:, ::-1, :]]
    profile.update(width=side, height=side, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER", interleave="pixel")
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, side, 512):
            strip = np.empty((3, 512, side), np.uint8)
            for rr in range(512):
                y = r0 + rr
                src_row = row_tiles[(y // h) % 2][:, y % h, :]
                reps = np.concatenate([src_row, src_row[:, ::-1]], axis=1)
                strip[:, rr, :] = np.tile(reps, (1, side // (2 * w) + 1))[:, :side]
            dst.write(strip, window=Window(0, r0, side, 512))
    tmp.rename(path)
    return path


def build_z21_raster(mpx: int) -> Path:
    """A square ~`mpx` Mpx z21 (7.5 cm) GeoTIFF mirroring a real, fully imaged Kampala block: the
    imagery the shipped model was trained for, so `geolabel predict` runs it without resampling."""
    import rasterio
    from rasterio.windows import Window

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from oam_cities import _tile_range, load_city

    side = int(round(np.sqrt(mpx * 1024 * 1024) / 512)) * 512
    path = DATA / f"kampala-z21-mosaic-{side}.tif"
    if path.exists():
        return path
    r0, c0, n = Z21_BLOCK
    block = load_city(Z21_CITY)[0][r0 : r0 + n, c0 : c0 + n].transpose(2, 0, 1)
    transform = _tile_range(Z21_CITY, 21).transform() * rasterio.Affine.translation(c0, r0)
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:3857",
                   transform=transform, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER", interleave="pixel", photometric="RGB")
    mirrored = np.concatenate([np.concatenate([block, block[:, :, ::-1]], 2),
                               np.concatenate([block[:, ::-1], block[:, ::-1, ::-1]], 2)], 1)  # seamless 2n tile
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, side, 512):
            rows = mirrored[:, (np.arange(r, r + 512) % (2 * n))]
            dst.write(np.tile(rows, (1, 1, side // (2 * n) + 1))[:, :, :side], window=Window(0, r, side, 512))
    tmp.rename(path)
    return path


def child(model_name: str, raster: str, out: str, window: int, batch: int, precision: str) -> None:
    """Run one prediction end to end; print a JSON line with time and peak RSS."""
    import keras

    import rasterio

    from geolabel.models import build_model, load_model, stride_of
    from geolabel.predict import keras_predict_fn, predict_raster, window_geometry

    keras.utils.set_random_seed(0)
    name, config = MODELS[model_name]
    model = load_model(name) if name == "pretrained" else build_model(name, 2, **config)
    fn = keras_predict_fn(model, precision=precision)
    with rasterio.open(raster) as src:  # the window side predict_raster will run
        side, _ = window_geometry(src.width, src.height, window, OVERLAP, stride_of(model))
    x = np.random.default_rng(0).uniform(0, 255, (batch, side, side, 3)).astype("float32")
    fn(x)  # compile outside the timed run
    t0 = time.perf_counter()
    for _ in range(MODEL_ONLY_CALLS):
        fn(x)
    model_only = MODEL_ONLY_CALLS * batch * side * side / (time.perf_counter() - t0) / 1e6
    # one model pass per window (tta=1): these rows measure the model inside the predictor; the CLI rows
    # run `geolabel predict`'s defaults, test-time mirror included
    result = predict_raster(fn, raster, out, window=window, overlap=OVERLAP, batch_size=batch, tta=1, preview=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from geolabel.perf import flops_per_pixel

    # per pixel of the windows actually run: the fcn's internal padding costs more on small windows
    assert result.window == side, (result.window, side)
    print(json.dumps({"flops_per_pixel": flops_per_pixel(model, side), "precision": fn.precision,
                      "seconds": result.seconds, "mpx": result.width * result.height / 1e6,
                      "data_mpx": data_pixels(result.classes) / 1e6, "window_run": result.window,
                      "mpx_s": result.megapixels_per_second, "model_only_window_mpx_s": model_only,
                      "peak_rss_mb": rss_mb, "windows": result.windows, "timings": result.timings}))


def cli_run(raster: Path, out: Path, polygons: bool = True) -> dict:
    """`geolabel predict RASTER --out OUT [--polygons]` as a user runs it (shipped model, default
    polygoniser, separation and filters, precision auto): wall clock from process start to the
    last file written, and the process's peak RSS."""
    import pyogrio
    import rasterio

    cmd = [str(Path(sys.executable).with_name("geolabel")), "predict", str(raster), "--out", str(out)]
    cmd += ["--polygons"] if polygons else []
    log = OUT / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GEOLABEL_NO_PROGRESS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    with rasterio.open(out / "classes.tif") as src:
        mpx = src.width * src.height / 1e6
    return {"seconds": seconds, "mpx": mpx, "data_mpx": data_pixels(out / "classes.tif") / 1e6, "mpx_s": mpx / seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "objects": pyogrio.read_info(out / "polygons.gpkg")["features"] if polygons else None,
            "cli": "geolabel predict IMAGE --out OUT" + (" --polygons" if polygons else "")}


def data_pixels(classes: Path) -> int:
    """Pixels holding data (not nodata) in a predicted class raster: the useful work."""
    import rasterio

    from geolabel.classes import IGNORE

    with rasterio.open(classes) as src:
        return sum(int((src.read(1, window=w) != IGNORE).sum()) for _, w in src.block_windows(1))


def git_commit() -> str:
    """Short hash of the code measured (with '+' when the working tree differs from it)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!benchmarks/results"], capture_output=True, text=True, cwd=ROOT)
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def measure_reference(precision: str) -> dict:
    """Conv peak of this machine in `precision` (in a child, to keep the parent small)."""
    code = (
        "import json; from geolabel.perf import measure_conv_peak; from geolabel.precision import resolve_precision; "
        f"p = resolve_precision({precision!r}); print(json.dumps({{'peak': measure_conv_peak(dtype=p), 'precision': p}}))"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256,real",
                        help="raster sizes in Mpx (2^20 px) of the Austin mosaic; 'real' = the z21 Zanzibar OAM raster")
    parser.add_argument("--models", default="fcn,unet-x4,unet")
    parser.add_argument("--max-mpx", default="unet:256",
                        help="largest mosaic per model, e.g. unet:64 (the full-resolution U-Net takes ~4 min at 256 Mpx)")
    parser.add_argument("--window", type=int, default=WINDOW, help="window side in pixels")
    parser.add_argument("--batch", type=int, default=BATCH, help="windows per model call")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="compute precisions to run (auto = what geolabel predict picks here)")
    parser.add_argument("--append", action="store_true", help="add the rows to the existing results")
    parser.add_argument("--child", nargs=6, metavar=("MODEL", "RASTER", "OUT", "WINDOW", "BATCH", "PRECISION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child[:3], int(args.child[3]), int(args.child[4]), args.child[5])
        return
    command = " ".join(["cd /work/main && .venv/bin/python benchmarks/bench_predict.py", *sys.argv[1:]])
    sizes = args.sizes.split(",")
    limits = {k: int(v) for k, v in (item.split(":") for item in args.max_mpx.split(",") if item)}
    rasters = {s: REAL_RASTER if s == "real" else build_z21_raster(int(s[1:])) if s.startswith("z")
               else build_raster(int(s)) for s in sizes}
    if "real" in rasters and not REAL_RASTER.exists():
        raise SystemExit(f"{REAL_RASTER} is missing: run benchmarks/make_oam_datasets.py first, or leave 'real' out")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEOLABEL_NO_PROGRESS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    runs = json.loads((RESULTS / "predict.json").read_text())["runs"] if args.append else []
    shipped_flops = {}  # window side -> FLOPs per pixel of the shipped model, from its own rows
    for model_name, precision in [(m, p) for m in args.models.split(",") for p in args.precisions.split(",")]:
        cli = model_name in (CLI, CLI_RASTER)
        if cli and precision != args.precisions.split(",")[0]:
            continue  # the CLI picks its precision itself (auto)
        ref = measure_reference("auto" if cli else precision)
        for size in sizes:
            if size[0] != "z" and size != "real" and int(size) > limits.get(model_name, 10**9):
                continue
            out = OUT / f"{model_name}-{size}"
            shutil.rmtree(out, ignore_errors=True)
            load_before = os.getloadavg()[0]
            if cli:
                row = cli_run(rasters[size], out, polygons=model_name == CLI)
                row.update({"precision": f"auto ({ref['precision']})", "window_run": None, "windows": None,
                            "flops_per_pixel": shipped_flops.get(size), "model_only_window_mpx_s": None})
            else:
                cmd = [sys.executable, __file__, "--child", model_name, str(rasters[size]), str(out), str(args.window),
                       str(args.batch), precision]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"{model_name} {size} Mpx failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                if model_name == "shipped":
                    shipped_flops[size] = row["flops_per_pixel"]
            shutil.rmtree(out, ignore_errors=True)
            fpp = row["flops_per_pixel"]
            peak = ref["peak"]["best_gflops"]
            row.update({
                "model": model_name, "model_config": MODELS.get(model_name, ("", {}))[1], "raster": rasters[size].name,
                "commit": git_commit(),
                "window": args.window, "batch": args.batch, "command": command,
                "size_mpx_nominal": size, "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
                "conv_peak_gflops_best": peak,
                "conv_peak_gflops_median": ref["peak"]["median_gflops"],
                "vs_baseline": row["mpx_s"] / BASELINE_MPX_S,
            })
            if fpp:
                # useful work: the pixels holding data (the z21 rasters are mostly nodata, never run)
                row.update({"flop_bound_mpx_s": peak * 1e9 / fpp / 1e6,
                            "utilisation_end_to_end": row["data_mpx"] / row["seconds"] * fpp / (peak * 1e3)})
            if row.get("window_run"):
                # every window the model ran is run at full size (edges padded); all-nodata ones are skipped
                computed_px = (row["windows"] - row["timings"].get("windows_skipped", 0)) * row["window_run"] ** 2
                row.update({"utilisation_predict_stage": computed_px * fpp / row["timings"]["predict"] / (peak * 1e9),
                            "utilisation_model_only": row["model_only_window_mpx_s"] * fpp / (peak * 1e3)})
            runs.append(row)
            print(json.dumps(row), flush=True)
            write_results(runs)  # after every run, so a cut-short run still reports


def write_results(runs: list[dict]) -> None:
    from geolabel.atomic import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "predict.json", json.dumps({"overlap": OVERLAP, "baseline_mpx_s": BASELINE_MPX_S,
                                                            "runs": runs}, indent=2))
    commands = list(dict.fromkeys(r["command"] for r in runs))
    lines = [
        "# predict: end-to-end throughput and peak memory", "",
        "Commands:", "", *[f"    {c}" for c in commands], "",
        "Rasters: the real Inria Austin crop (0.3 m) mirrored into 16/64/256 Mpx mosaics, and the real z21 "
        "(0.075 m) OpenAerialMap raster of Zanzibar (8192 x 37888 px). "
        f"Overlap {OVERLAP} px, in the precision of each row (conv peak measured in it) on this machine's 2-core CPU "
        "(TensorFlow, no XLA: XLA was slower on this CPU); outputs classes.tif + probabilities.tif COGs + "
        "preview.png. Each run in its own process; peak RSS = ru_maxrss. Conv peak = best of "
        "`geolabel.perf.measure_conv_peak()` (3x3, 128->128 channels) measured in the same run just before "
        "each model's rows. Utilisation = FLOP/s / conv peak, three ways: end to end (the raster's pixels x "
        "FLOPs per pixel over the wall clock from opening the input to the last COG and preview, counting only "
        "the pixels that hold data: useful work only), predict stage (FLOPs executed, every window at full size with its overlap, over the time inside "
        "the model calls while the reader and writer threads run beside them), and model only (back-to-back "
        "batches of random windows).", "",
        "| model | precision | raster | Mpx | data Mpx | window x batch (run) | seconds | Mpx/s | x baseline 0.57 | peak RSS MB "
        "| kFLOP/px | conv peak GFLOP/s | utilisation end-to-end | predict stage | model only | load avg | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def pct(r: dict, key: str) -> str:
        return f"{r[key]:.0%}" if r.get(key) is not None else ""

    for r in runs:
        cli = r["model"] in (CLI, CLI_RASTER)
        label = f"`{r['cli']}` (shipped model)" if cli else f"{r['model']} {r['model_config'] or ''}"
        window = "default" if cli else f"{r['window']} x {r['batch']} ({r.get('window_run', r['window'])})"
        kflops = f"{r['flops_per_pixel'] / 1e3:.1f}" if r.get("flops_per_pixel") else ""
        lines.append(f"| {label} | {r.get('precision', 'float32')} | {r['raster']} | {r['mpx']:.1f} | "
                     f"{r.get('data_mpx', r['mpx']):.1f} | {window} | {r['seconds']:.1f} | "
                     f"{r['mpx_s']:.3f} | {r['vs_baseline']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{kflops} | {r['conv_peak_gflops_best']:.0f} | "
                     f"{pct(r, 'utilisation_end_to_end')} | {pct(r, 'utilisation_predict_stage')} | "
                     f"{pct(r, 'utilisation_model_only')} | {r['load_avg_before']:.1f} | {r.get('commit', '')} |")
    lines += ["", NOTES, ""]
    # sections written by hand below the notes (one-off experiments) are kept
    previous = (RESULTS / "predict.md").read_text() if (RESULTS / "predict.md").is_file() else ""
    kept = previous[previous.index(NOTES) + len(NOTES):].strip() if NOTES in previous else ""
    write_text_atomic(RESULTS / "predict.md", "\n".join(lines + ([kept, ""] if kept else [])))


NOTES = (
    "Notes. `shipped` is the building model inside the package (since 5ca96cf the multi-resolution MLP "
    "network, before it the FCN; both with 4x average pooling in and bilinear logit upsampling out, 2.5-2.7 "
    "kFLOP per input pixel) on real z21 Kampala imagery mirrored into 16 and 268 Mpx mosaics. Its model-only rate counts the whole model call, whose full-resolution ends "
    "(pooling the input, upsampling the logits, the softmax) are memory-bound; the predictor runs them at the "
    "coarse resolution where that is exact (`geolabel.predict.fused.with_coarse_ends`: 24 -> 14 ms per 880 px "
    "window in bf16), and the convolutions on 220 px coarse windows are small for the bf16 kernels. The "
    "`geolabel predict IMAGE --out OUT --polygons` rows run the CLI as a user does: process start with the "
    "TensorFlow import (~3-4 s), scene normalisation, prediction, COGs, preview, the default polygons (mesh, "
    "touching buildings separated, objects under mean probability 0.8 dropped; blocks streamed from the class "
    "raster to one worker process per core), gpkg + geojson, STAC item; wall clock from process start to exit, "
    "peak RSS of the process tree (`os.wait4`). The Austin row is 0.3 m imagery: the shipped model resamples "
    "it to 7.4 cm (x4.05: 275 Mpx through the model) and writes back on the 0.3 m grid. "
    "`unet` is the full-resolution U-Net (depth 4, width 16, GroupNorm): on these 0.3 m mosaics "
    "it is the network of the generalisation recipe at the ground resolution it was trained at (mean "
    "unseen-city building IoU 0.477 over 3 seeds in benchmarks/results/generalisation.md, above the "
    "PyTorch baseline's 0.31-0.39), so its rows are the ones to compare with the baseline's 0.57 Mpx/s "
    "(not measured on this machine). `unet-x4` is the same network with the 4x average pooling and "
    "logit upsampling inside the model, as trained on z21 tiles: 5.8 kFLOP per pixel, so reading, "
    "blending and compressing weigh as much as its convolutions (model alone ~45 % of the peak), hence "
    "its low utilisation end to end. What brought the compute-bound models to >= 50 % end to end: "
    "fcn: its 9x9 80->2 classifier as a 1x9 convolution plus 9 row sums (`RowSumConv2D`, same weights, "
    "3.5x faster: oneDNN's direct algorithm is slow for 2 output filters), the two-class softmax as a "
    "sigmoid (half the cost). U-Net: Keras' GroupNormalization reduces a 5-D (B, H, W, groups, "
    "C/groups) view and took half of the full-resolution U-Net's inference time; `GroupNorm` (same "
    "weights and outputs) takes per-channel moments first, and the TensorFlow predictor runs a copy whose "
    "norms take a single image through two fused batch-norm kernels (`FusedGroupNorm`: moments, then "
    "the per-channel affine, chosen at trace time so grappler fuses it with the ReLU): 21-26 % (commit "
    "f93fc6e) -> 49-51 % (46f3b6b) -> 52-53 % end to end (9841a72, with the blending below; the conv "
    "peak varies by ~10 % between runs). Both: one window per call (`--batch-size 1`, now the default: "
    "faster than 2 for every model here, and less memory), windows fitted to the raster (`fit_window`: "
    "968 px instead of 1024 on the 8192 px mosaic, 1.13x instead of 1.27x the pixels computed), COGs at "
    "deflate level 3 instead of 6 (2.3x faster, files ~15 % larger), the preview sampled from the "
    "windows as they stream, and the tile writer's argmax over class planes (`argmax_planes`, 5x "
    "faster than numpy's), and blending that weights each window once into a reused buffer and recycles "
    "finished tiles' buffers (writer CPU per 64 Mpx 2.05 -> 1.16 s, at 9841a72). The rest is the reader and writer threads (decoding, blending, ZSTD "
    "staging) sharing the 2 cores with the model, and the COG conversion with overviews after the last "
    "window. FLOPs per pixel are counted at the window side run (the fcn's internal 34 px reflection "
    "padding costs more on small windows: 32.1k at 1024 px, 34.9k at 512). The real z21 Zanzibar raster "
    "holds data in 48 of its 310 Mpx: all-nodata windows are skipped (hence its high raster Mpx/s), but "
    "the windows along the irregular imagery edge run in full, so per pixel of data it uses the machine "
    "less. Memory holds one row of output tiles and a few windows, so peak RSS depends on the raster "
    "width and the model's activations, not on the raster's area: flat from 16 to 310 Mpx for every model."
)


if __name__ == "__main__":
    main()
