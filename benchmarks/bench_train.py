"""Training throughput of the segmentation models in float32 and bfloat16 vs this machine's conv peaks.

For each model and precision: median time of the training step `geolabel train` runs
(`SegmentationTask.train_step` under Keras' compiled train function: forward, CE - log
soft-IoU loss, backward, AdamW update, pixel scores) on a batch of real Inria Austin crops, as pixels/s,
and the achieved GFLOP/s counting a training step as 3x the forward FLOPs (backward ~ 2x
forward), against the GFLOP/s of a large 3x3 convolution in the same precision measured in
the same run. Writes benchmarks/results/train.md and .json.

    .venv/bin/python benchmarks/bench_train.py [--batch 8] [--crop 256] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GEOLABEL_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CONFIGS = [
    ("fcn", "fcn", {}),
    ("unet", "unet", {}),
    ("unet-w16", "unet", {"width": 16}),
    ("unet-w16-x4", "unet", {"width": 16, "downsample": 4}),
    ("mlp", "mlp", {}),
]


def real_batch(batch: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    import rasterio

    data = ROOT.parent / "shared" / "data" / "inria-austin"
    with rasterio.open(data / "image.tif") as src:
        image = src.read().transpose(1, 2, 0)
    with rasterio.open(data / "buildings-mask.tif") as src:
        mask = (src.read(1) > 127).astype("uint8")
    rng = np.random.default_rng(0)
    corners = rng.integers(0, image.shape[0] - crop, size=(batch, 2))
    x = np.stack([image[r : r + crop, c : c + crop] for r, c in corners]).astype("float32")
    y = np.stack([mask[r : r + crop, c : c + crop] for r, c in corners])
    return x, y


def time_training(name: str, config: dict, x: np.ndarray, y: np.ndarray, steps: int, precision: str) -> dict:
    """Median time of the step `geolabel train` runs: `SegmentationTask.train_step` compiled by Keras'
    `fit` machinery (loss, backward, AdamW, the logged pixel scores)."""
    import keras
    import tensorflow as tf

    from geolabel.losses import CrossEntropyJaccard
    from geolabel.models import build_model
    from geolabel.perf import flops_per_pixel
    from geolabel.precision import precision_scope
    from geolabel.train.task import SegmentationTask

    with precision_scope(precision):
        model = build_model(name, 2, **config)
    task = SegmentationTask(model, CrossEntropyJaccard(), num_classes=2)
    task.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False)  # as geolabel train compiles it
    task.optimizer.build(task.other_variables)
    batches = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    task.make_train_function()
    train_function = task.train_function

    def step():
        return train_function(batches)["loss"]

    step().numpy()  # trace + warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    pixels = x.shape[0] * x.shape[1] * x.shape[2]
    fpp = flops_per_pixel(model)
    return {
        "params": int(model.count_params()),
        "forward_kflop_per_px": fpp / 1e3,
        "step_s_median": seconds,
        "step_s_best": float(min(times)),
        "px_per_s": pixels / seconds,
        "train_gflops": 3 * fpp * pixels / seconds / 1e9,
    }


PRECISIONS = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    from geolabel.perf import measure_conv_peak

    load_before = os.getloadavg()[0]
    x, y = real_batch(args.batch, args.crop)
    peaks = {p: [measure_conv_peak(dtype=p)] for p in PRECISIONS}
    rows = {}
    for label, name, config in CONFIGS:
        rows[label] = {"model": name, "config": config}
        for precision in PRECISIONS:
            rows[label][precision] = time_training(name, config, x, y, args.steps, precision)
            print(label, precision, json.dumps({k: round(v, 3) for k, v in rows[label][precision].items()
                                                if isinstance(v, float)}), flush=True)
    for p in PRECISIONS:
        peaks[p].append(measure_conv_peak(dtype=p))
    peak = {p: max(m["best_gflops"] for m in peaks[p]) for p in PRECISIONS}
    for row in rows.values():
        for p in PRECISIONS:
            row[p]["fraction_of_conv_peak"] = row[p]["train_gflops"] / peak[p]
            row[p]["fraction_of_float32_peak"] = row[p]["train_gflops"] / peak["float32"]
        row["bfloat16_speedup"] = row["bfloat16"]["px_per_s"] / row["float32"]["px_per_s"]
    command = f".venv/bin/python benchmarks/bench_train.py --batch {args.batch} --crop {args.crop} --steps {args.steps}"
    report = {
        "command": command,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "conv_peak": {"runs": peaks, "used_gflops": peak},
        "batch": args.batch,
        "crop": args.crop,
        "models": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(report, indent=1))
    lines = [
        "# Training throughput, float32 and bfloat16, vs measured conv peaks",
        "",
        f"Command: `{command}`  ",
        f"Machine: {report['machine']}; 1-min load {load_before:.1f} before, {report['load_1min']['after']:.1f} after  ",
        "Conv peak (3x3 conv 128->128 on 8x96x96, TF, best of 5, measured before and after the models): "
        + ", ".join(f"{p} {peak[p]:.0f} GFLOP/s" for p in PRECISIONS)
        + f" (bfloat16 / float32 = {peak['bfloat16'] / peak['float32']:.1f}x).",
        "",
        f"One training step = `SegmentationTask.train_step` as `fit` compiles it (forward + CE-log(soft IoU) + "
        f"backward + AdamW + pixel scores) on {args.batch} real crops of "
        f"{args.crop}x{args.crop}; GFLOP/s counts 3x the forward conv FLOPs; bfloat16 = Keras `mixed_bfloat16` "
        "(float32 weights, loss and softmax), what `TrainConfig.precision: auto` picks on this CPU.",
        "",
        "| model | config | params | fwd kFLOP/px | px/s float32 | px/s bfloat16 | bf16 speed-up | GFLOP/s fp32 (of fp32 peak) "
        "| GFLOP/s bf16 (of bf16 peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        f32, b16 = r["float32"], r["bfloat16"]
        lines.append(
            f"| {label} | `{json.dumps(r['config'])}` | {f32['params']:,} | {f32['forward_kflop_per_px']:.1f} "
            f"| {f32['px_per_s']:,.0f} | {b16['px_per_s']:,.0f} | {r['bfloat16_speedup']:.2f}x "
            f"| {f32['train_gflops']:.0f} ({f32['fraction_of_conv_peak']:.0%}) | {b16['train_gflops']:.0f} ({b16['fraction_of_conv_peak']:.0%}) |"
        )
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
