"""Training throughput of the segmentation models vs this machine's measured conv peak.

For each model: median time of a full training step (forward, CE - log soft-IoU loss,
backward, AdamW update) on a batch of real Inria Austin crops, as pixels/s, and the
achieved GFLOP/s counting a training step as 3x the forward FLOPs (backward ~ 2x
forward), against the GFLOP/s of a large 3x3 convolution measured in the same run.
Writes benchmarks/results/train.md and .json.

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


def time_training(name: str, config: dict, x: np.ndarray, y: np.ndarray, steps: int) -> dict:
    import keras
    import tensorflow as tf

    from geolabel.losses import CrossEntropyJaccard
    from geolabel.models import build_model
    from geolabel.perf import flops_per_pixel

    model = build_model(name, 2, **config)
    optimizer = keras.optimizers.AdamW(1e-3)
    loss_fn = CrossEntropyJaccard()
    xs, ys = tf.constant(x), tf.constant(y)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(ys, model(xs, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    from geolabel.perf import measure_conv_peak

    x, y = real_batch(args.batch, args.crop)
    peak_before = measure_conv_peak()
    rows = {}
    for label, name, config in CONFIGS:
        rows[label] = {"model": name, "config": config, **time_training(name, config, x, y, args.steps)}
        print(label, json.dumps({k: round(v, 3) for k, v in rows[label].items() if isinstance(v, float)}), flush=True)
    peak_after = measure_conv_peak()
    peak = max(peak_before["best_gflops"], peak_after["best_gflops"])
    for row in rows.values():
        row["fraction_of_conv_peak"] = row["train_gflops"] / peak
        row["px_per_s_vs_unet"] = row["px_per_s"] / rows["unet"]["px_per_s"]
    command = f".venv/bin/python benchmarks/bench_train.py --batch {args.batch} --crop {args.crop} --steps {args.steps}"
    report = {
        "command": command,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared; load {os.getloadavg()[0]:.1f})",
        "conv_peak": {"before": peak_before, "after": peak_after, "used_gflops": peak},
        "batch": args.batch,
        "crop": args.crop,
        "models": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(report, indent=1))
    lines = [
        "# Training throughput vs measured conv peak",
        "",
        f"Command: `{command}`  ",
        f"Machine: {report['machine']}  ",
        f"Conv peak (3x3 conv 128->128 on 8x96x96, TF, best of 5): before {peak_before['best_gflops']:.1f}, "
        f"after {peak_after['best_gflops']:.1f} GFLOP/s; utilisation uses the higher.",
        "",
        f"One training step = forward + CE-log(soft IoU) + backward + AdamW on {args.batch} real crops of "
        f"{args.crop}x{args.crop}; GFLOP/s counts 3x the forward conv FLOPs.",
        "",
        "| model | config | params | fwd kFLOP/px | step s (median) | px/s | x unet px/s | train GFLOP/s | of conv peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | `{json.dumps(r['config'])}` | {r['params']:,} | {r['forward_kflop_per_px']:.1f} | {r['step_s_median']:.3f} "
            f"| {r['px_per_s']:,.0f} | {r['px_per_s_vs_unet']:.2f} | {r['train_gflops']:.1f} | {r['fraction_of_conv_peak']:.0%} |"
        )
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
