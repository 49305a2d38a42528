"""Beam scale-out: `predict_raster_beam` (what `geolabel predict --beam` runs) with 1 vs 2 DirectRunner workers.

The raster is bench_predict's mosaic of the real Inria Austin crop (256 Mpx by default);
the model is the FCN with random weights (throughput does not depend on the weights),
saved once as a .keras file. Each configuration runs in its own process, one after the
other: the in-process default (`in_memory`, 1 worker), then `multi_processing` with 1 and
with 2 worker processes (one Beam element per block; the merge into one COG stays in the
launching process). The outputs must be identical: the decoded pixels of classes.tif and
probabilities.tif are hashed per run. The speed-up is 2 workers over 1 in the same mode;
the load average before and after each run is recorded (the machine must be idle for the
ratio to mean anything). Outputs: benchmarks/results/beam.md and .json.

    .venv/bin/python benchmarks/bench_beam.py [--mpx 256] [--block 2048] [--work DIR] [--results DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_predict import build_raster, git_commit  # noqa: E402

# label -> Beam flags; "1 worker" and "2 workers" differ only in --direct_num_workers
CONFIGS = {
    "in_memory x1 (default)": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "multi_processing x1": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    "multi_processing x2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
WINDOW, OVERLAP = 1024, 64


def pixel_digest(path: Path) -> str:
    """sha256 of a raster's decoded pixels, block by block (independent of compression and tags)."""
    import rasterio

    digest = hashlib.sha256()
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            digest.update(src.read(window=window).tobytes())
    return digest.hexdigest()


def child(model: str, raster: str, out: str, block: int, beam_args: list[str]) -> None:
    """One Beam prediction; print a JSON line with its wall time and output digests."""
    from geolabel.pipelines.beam_predict import predict_raster_beam

    start = time.perf_counter()
    paths = predict_raster_beam(model, raster, out, block_size=block, window=WINDOW, overlap=OVERLAP, preview=False,
                                beam_args=beam_args)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, **{f"sha256_{k}": pixel_digest(paths[k]) for k in ("classes", "probabilities")},
                      "beam": json.loads((Path(out) / "beam.json").read_text())}))


def save_model(path: Path) -> Path:
    """The FCN with random weights (seed 0) as a .keras file."""
    if not path.exists():
        import keras

        from geolabel.models import build_model

        keras.utils.set_random_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        build_model("fcn", 2).save(path)
    return path


def run(model: Path, raster: Path, out: Path, block: int, beam_args: list[str]) -> dict:
    """One configuration in its own process; wall time, children's CPU time and load around it."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}", "GEOLABEL_NO_PROGRESS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    shutil.rmtree(out, ignore_errors=True)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--child", str(model), str(raster), str(out), str(block), *beam_args],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{beam_args} failed:\n{proc.stderr[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    row.update({"beam_args": beam_args, "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
                "cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)})
    return row


def write_results(results: Path, payload: dict) -> None:
    """beam.json and beam.md under `results`."""
    from geolabel.atomic import write_text_atomic

    runs = payload["runs"]
    identical = len({(r["sha256_classes"], r["sha256_probabilities"]) for r in runs.values()}) == 1
    one, two = runs.get("multi_processing x1"), runs.get("multi_processing x2")
    first = next(iter(runs.values()))
    lines = [
        "# Beam scale-out: `geolabel predict --beam`, DirectRunner 1 vs 2 workers", "",
        f"Command: `{payload['command']}` (code {payload['commit']})", "",
        f"Raster: {payload['raster']} ({payload['mpx']:.0f} Mpx, real Inria Austin imagery mirrored), FCN with random "
        f"weights, windows {first['beam']['window']} px (overlap {first['beam']['overlap']}), blocks of {payload['block']} px "
        f"({first['beam']['blocks']} Beam elements); machine: {payload['machine']}.", "",
        "| configuration | seconds | Mpx/s | CPU s (reaped processes) | load avg before / after | same output as the first |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        same = r["sha256_classes"] == first["sha256_classes"] and r["sha256_probabilities"] == first["sha256_probabilities"]
        lines.append(f"| {label} | {r['seconds']:.1f} | {payload['mpx'] / r['seconds']:.2f} | {r['cpu_seconds']:.0f} | "
                     f"{r['load_avg_before']:.1f} / {r['load_avg_after']:.1f} | {'yes' if same else 'NO'} |")
    lines.append("")
    if one and two:
        lines.append(f"Speed-up, 2 workers over 1 (multi_processing): **{one['seconds'] / two['seconds']:.2f}x**.")
    lines.append(f"Outputs (decoded pixels of classes.tif and probabilities.tif) identical across runs: "
                 f"**{'yes' if identical else 'NO'}**.")
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "beam.json", json.dumps(payload, indent=2))
    write_text_atomic(results / "beam.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpx", type=int, default=256, help="size of the Austin mosaic in Mpx (2^20 px)")
    parser.add_argument("--block", type=int, default=2048, help="Beam block side in pixels (one element per block)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "beam", help="model and outputs (deleted after each run)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, raster, out, block, *beam_args = args.child
        child(model, raster, out, int(block), beam_args)
        return
    raster = build_raster(args.mpx)
    model = save_model(args.work / "fcn-random.keras")
    import rasterio

    with rasterio.open(raster) as src:
        mpx = src.width * src.height / 1e6
    payload = {"command": " ".join(["cd /work/main && .venv/bin/python benchmarks/bench_beam.py", *sys.argv[1:]]),
               "commit": git_commit(), "raster": raster.name, "mpx": mpx, "block": args.block,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": {}}
    for label, beam_args in CONFIGS.items():
        payload["runs"][label] = run(model, raster, args.work / "out", args.block, beam_args)
        print(label, json.dumps(payload["runs"][label]), flush=True)
        write_results(args.results, payload)  # after every run, so a cut-short run still reports


if __name__ == "__main__":
    main()
