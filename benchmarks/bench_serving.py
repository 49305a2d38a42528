"""Serving overhead: the embedded TF-Serving-compatible server vs in-process inference.

A U-Net is exported with `geolabel export`'s code and served by `geolabel serve` in its
own process on 127.0.0.1. For 256^2 and 512^2 tiles cut from the real Inria Austin
image, the benchmark measures for a fixed time each:
- in-process baselines: the Keras model as local `geolabel predict` runs it
  (`keras_predict_fn`, a compiled step), and the exported
  SavedModel's `serving_default` called in-process (no network, no JSON);
- served: `CONCURRENCY` clients sending one tile per request over REST JSON floats
  (`ServingClient`), REST PNG `{"b64"}` to `serving_bytes`, and gRPC tensors.
Reported: requests/s, p50/p99 latency, the ratio of served to in-process Keras
throughput (the serving overhead: 1.0 = free), and FLOP-based utilisation of the
machine's measured conv peak.

Usage: .venv/bin/python benchmarks/bench_serving.py [--seconds 8] [--concurrency 4] [--width 16] [--depth 4]
Writes benchmarks/results/serving.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geolabel.atomic import write_text_atomic  # noqa: E402

IMAGE = ROOT / "geolabel" / "sample" / "inria-austin" / "image.tif"
RESULTS = ROOT / "benchmarks" / "results"


def real_tiles(size: int, count: int = 8) -> np.ndarray:
    """`count` real tiles of `size` px from the Inria Austin sample (wrapping around its 1000 px)."""
    import rasterio

    with rasterio.open(IMAGE) as src:
        image = src.read().transpose(1, 2, 0).astype("float32")
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(count):
        r, c = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        tiles.append(image[r : r + size, c : c + size])
    return np.stack(tiles)


def timed_loop(fn, tiles: np.ndarray, seconds: float, concurrency: int = 1) -> dict:
    """Call `fn(tile[None])` from `concurrency` threads for `seconds`; requests/s and latency percentiles."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    fn(tiles[:1])  # warm-up
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        n = i
        while time.perf_counter() < stop_at:
            tile = tiles[n % len(tiles)][None]
            n += concurrency
            start = time.perf_counter()
            try:
                fn(tile)
            except Exception as err:  # counted, reported
                with lock:
                    errors.append(repr(err)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "concurrency": concurrency,
        "seconds": elapsed,
    }


def start_server(
    base: Path, extra_args: tuple[str, ...] = (), stderr=subprocess.DEVNULL
) -> tuple[subprocess.Popen, int, int]:
    """`geolabel serve` in its own process on free ports; returns (process, rest port, grpc port).

    `extra_args` are more `geolabel serve` options (limits, timeouts, ...); `stderr` where its log goes.
    """
    env = dict(os.environ, GEOLABEL_NO_PROGRESS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "geolabel.cli", "serve", "--model_base_path", str(base), "--model_name", "seg",
         "--rest_api_port", "0", "--port", "0", "--host", "127.0.0.1", *extra_args],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT,
    )
    rest = grpc_port = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"REST http://[^:]+:(\d+)/", line):
            rest = int(m.group(1))
        if m := re.match(r"gRPC [^:]+:(\d+)", line):
            grpc_port = int(m.group(1))
        if line.startswith("serving"):
            break
    if rest is None or grpc_port is None:
        proc.kill()
        raise RuntimeError("geolabel serve did not start")
    return proc, rest, grpc_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per configuration")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients for the served runs")
    parser.add_argument("--width", type=int, default=16, help="U-Net first-level width")
    parser.add_argument("--depth", type=int, default=4, help="U-Net depth")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    command = "cd /work/main && .venv/bin/python benchmarks/bench_serving.py " + " ".join(sys.argv[1:])

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from geolabel.models import build_model
    from geolabel.perf import flops_per_pixel, measure_conv_peak
    from geolabel.serving.client import ServingClient
    from geolabel.serving.export import export_saved_model

    from geolabel.predict import keras_predict_fn

    model = build_model("unet", 2, depth=args.depth, width=args.width)
    fpp = flops_per_pixel(model)
    peak = measure_conv_peak()
    results: dict = {"command": command, "model": f"unet depth {args.depth} width {args.width}, 2 classes",
                     "flops_per_pixel": fpp, "conv_peak_gflops": peak["best_gflops"],
                     "machine": f"{platform.machine()} {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}",
                     "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "seg"
        export_saved_model(model, base, 1)
        loaded = tf.saved_model.load(str(base / "1"))
        signature = loaded.signatures["serving_default"]
        proc, rest_port, grpc_port = start_server(base)
        try:
            endpoint = f"http://127.0.0.1:{rest_port}/v1/models/seg"
            json_client = ServingClient(endpoint, rows_per_request=1)
            png_client = ServingClient(endpoint, rows_per_request=1, encoding="png")
            json_client.wait_available(120)
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}",
                                            options=[("grpc.max_receive_message_length", -1)])
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def grpc_call(batch: np.ndarray) -> np.ndarray:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "seg"
                request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch.astype(np.float32)))
                request.output_filter.append("probabilities")
                return tf.make_ndarray(stub.Predict(request, timeout=300).outputs["probabilities"])

            for size in args.sizes:
                tiles = real_tiles(size)
                # what `geolabel predict MODEL` runs: a compiled step (a fresh one per tile size, see report)
                keras_in = timed_loop(keras_predict_fn(model), tiles, args.seconds)
                saved_in = timed_loop(lambda b: signature(images=tf.constant(b))["probabilities"].numpy(),
                                      tiles, args.seconds)
                rows = {"in-process Keras (local predict_fn)": keras_in, "in-process SavedModel": saved_in}
                rows["REST JSON"] = timed_loop(json_client, tiles, args.seconds, args.concurrency)
                rows["REST PNG b64"] = timed_loop(png_client, np.rint(tiles), args.seconds, args.concurrency)
                rows["gRPC"] = timed_loop(grpc_call, tiles, args.seconds, args.concurrency)
                for row in rows.values():
                    row["ratio_to_in_process"] = row["rps"] / keras_in["rps"] if keras_in["rps"] else None
                    row["utilisation"] = row["rps"] * fpp * size * size / (peak["best_gflops"] * 1e9)
                results["sizes"][str(size)] = rows
                print(size, {k: round(v["rps"], 2) for k, v in rows.items()}, flush=True)
            json_client.close()
            png_client.close()
            channel.close()
        finally:
            proc.terminate()
            proc.wait(30)

    lines = [
        "# Serving overhead: embedded TF-Serving-compatible server vs in-process",
        "",
        f"Command: `{command}`",
        "",
        f"Model: {results['model']} ({fpp / 1e6:.2f} MFLOP/pixel); machine: {results['machine']}; "
        f"conv peak {peak['best_gflops']:.1f} GFLOP/s (measured in the same run). "
        f"Server: `geolabel serve` in its own process on 127.0.0.1 (batching on); served rows use "
        f"{args.concurrency} concurrent clients, one tile per request; in-process rows one caller. "
        "Tiles: real Inria Austin imagery.",
        "",
        "| tile | path | requests/s | p50 ms | p99 ms | ratio to in-process Keras | FLOP utilisation | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, rows in results["sizes"].items():
        for name, r in rows.items():
            lines.append(
                f"| {size}^2 | {name} | {r['rps']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['ratio_to_in_process']:.2f} | {100 * r['utilisation']:.1f} % | {r['errors']} |"
            )
    lines += [
        "",
        "Ratio = requests/s over the in-process Keras row of the same tile size (1.0 = serving is free).",
        "REST JSON pays for Python JSON encoding/decoding of every float (request pixels and the",
        "(H, W, K) probabilities plus the class ids); the PNG rows send ~10x smaller requests; gRPC ships",
        "raw tensors and shows the server's own overhead. Numbers are noisy on this shared machine",
        "(see the load average above): compare rows of one run only. FLOP utilisation is relative to",
        "the conv peak measured once at the start of the run; when the machine is oversubscribed that",
        "reading is low and values above 100 % only mean more CPU was free later in the run.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "serving.md", "\n".join(lines) + "\n")
    write_text_atomic(RESULTS / "serving.json", json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
