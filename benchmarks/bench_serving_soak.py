"""Soak: the embedded TF-Serving-compatible server under 64 concurrent clients, with hostile requests mixed in.

The shipped building model (`pretrained`) is exported with `geolabel export`'s code and
served by `geolabel serve` in its own process on 127.0.0.1 with explicit limits
(`SERVER`). `--clients` threads then send requests for `--seconds`: valid REST `:predict`
requests with real 256 x 256 tiles of the Inria Austin image (JSON "instances" floats to
`serving_default`, and `{"b64"}` PNGs to `serving_bytes`, on keep-alive connections) and,
with probability `--hostile` each, a hostile request on a raw socket (seeded): malformed
JSON, a non-HTTP request line, wrong shapes, a Content-Length over the limit with no body,
a real body over the limit, half a header then silence, a body slower than the body
timeout, a disconnect mid-body. One more thread asks for the model status on a new
connection every 2 s (how long a new connection waits to be served).

Checked (exit status 1, with the reasons, when one fails): every valid request gets 200
and a well-formed prediction; every hostile one gets a 4xx/5xx answer or is closed by the
server (a slow one within its deadline + `SLACK_S` counts "in time", later "late", and
not closed `HARD_S` after its deadline fails); the server's peak RSS (the kernel's VmHWM,
reset after the warm-up; also sampled every 0.5 s by a separate process) stays under the
stated bound: RSS after warm-up + memory budget + max_connections x `PER_CONNECTION_BYTES`;
its threads stay under threads after warm-up + max_connections and are back to the
warm-up count, with no REST connection left open, once the clients are gone.

Usage: .venv/bin/python benchmarks/bench_serving_soak.py [--seconds 120] [--clients 64] [--hostile 0.1] [--seed 0]
Writes benchmarks/results/serving-soak.md and .json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_predict import SOURCE, git_commit  # noqa: E402  (the real Inria Austin image; commit + dirty flag)
from bench_serving import IMAGE, start_server  # noqa: E402  (the bundled 1000 px sample; `geolabel serve` runner)

from geolabel.atomic import write_text_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "pretrained"  # the shipped building FCN: the default model users serve
TILE = 256
MiB = 1 << 20

# `geolabel serve` limits under test (option name without the dashes -> value)
SERVER = {
    "memory_budget_bytes": 512 * MiB,  # requests in flight: bodies, parsed JSON, tensors, responses
    "memory_wait_ms": 5000,  # a request waits this long for budget before its 429
    "max_body_bytes": 8 * MiB,  # largest REST body (a 256^2 JSON-float tile is ~1.4 MB)
    "max_connections": 192,  # 64 keep-alive clients + 64 hostile sockets + 64 closing or lingering
    "max_concurrent_requests": 128,
    "rest_header_timeout_s": 10.0,  # the CLI defaults: valid 1.4 MB bodies took up to 4.7 s to read on this
    "rest_body_timeout_s": 30.0,  # 2-core machine under load, and the body deadline counts the server's own lag
    "rest_idle_timeout_s": 30.0,
    "max_batch_size": 32,  # the default, stated: the warm-up runs one full batch
}
# RSS allowance per open connection beyond what the memory budget counts: its thread's
# stack pages, the 64 KiB read buffer, the handler's Python objects. 180 idle connections
# measured ~28 KiB each on this machine; 1 MiB leaves room for the per-thread malloc
# state of a connection that has served requests.
PER_CONNECTION_BYTES = 1 * MiB
SLACK_S = 5.0  # a slow client closed within its deadline + this counts "in time"
HARD_S = 60.0  # ... and one still open this long after its deadline was never closed: a failure
CLIENT_TIMEOUT_S = 300.0  # a request not answered within this (between bytes) fails
SAMPLE_S = 0.5
STATUS_EVERY_S = 2.0
PREDICT_PATH = "/v1/models/seg:predict"
STATUS_PATH = "/v1/models/seg"

VALID_KINDS = ("valid_json_floats", "valid_png_b64", "valid_status_new_connection")
HOSTILE_KINDS = (
    "malformed_json",  # truncated / broken JSON, bytes that are not UTF-8
    "not_http",  # a TLS ClientHello on the plain-HTTP port
    "wrong_shape",  # 4 bands, ragged rows, a 2-D tile, strings for floats
    "oversized_claim",  # Content-Length over the limit (just over, 10x, 1 TB), no body
    "oversized_body",  # a real 768^2 JSON-float tile (~12 MB) over the 8 MiB limit, sent in full
    "slow_header",  # half a header then silence
    "slow_body",  # the body trickles a byte a second
    "disconnect_mid_body",  # half the body, then the client closes (half with a reset, half with a FIN)
)
SLOW_KINDS = {"slow_header": "rest_header_timeout_s", "slow_body": "rest_body_timeout_s"}
EXPECTED = {
    "valid_json_floats": "200",
    "valid_png_b64": "200",
    "valid_status_new_connection": "200",
    "malformed_json": "400",
    "not_http": "400",
    "wrong_shape": "400",
    "oversized_claim": "429",
    "oversized_body": "429 (or a reset while still sending)",
    "slow_header": f"closed at the {SERVER['rest_header_timeout_s']:g} s header deadline",
    "slow_body": f"408 at the {SERVER['rest_body_timeout_s']:g} s body deadline",
    "disconnect_mid_body": "client closed",
}

# The server's RSS, VmHWM, threads and open REST connections (with the clients' ports: when
# a connection first shows up, the server has accepted it) every SAMPLE_S, from its own
# process (threads of the client process can wait seconds for the GIL under this load).
SAMPLER = r"""
import json, sys, time
import psutil
pid, port, every = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
proc = psutil.Process(pid)
while True:
    try:
        status = open(f"/proc/{pid}/status").read()
        hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
        peers = sorted(c.raddr.port for c in proc.net_connections(kind="tcp")
                       if c.laddr and c.laddr.port == port and c.raddr)
        row = {"t": time.monotonic(), "rss": proc.memory_info().rss, "hwm": hwm, "threads": proc.num_threads(),
               "rest_connections": len(peers), "peers": peers}
    except (OSError, IndexError, psutil.Error):
        break
    print(json.dumps(row), flush=True)
    time.sleep(every)
"""


# ------------------------------------------------------------------------ request bodies


def read_tiles(count: int, size: int, seed: int) -> np.ndarray:
    """`count` real `size` px RGB tiles (uint8) at seeded random windows of the Inria Austin image."""
    import rasterio
    from rasterio.windows import Window

    path = SOURCE if SOURCE.is_file() else IMAGE
    rng = np.random.default_rng(seed)
    with rasterio.open(path) as src:
        tiles = []
        for _ in range(count):
            row = int(rng.integers(0, src.height - size + 1))
            col = int(rng.integers(0, src.width - size + 1))
            tiles.append(src.read([1, 2, 3], window=Window(col, row, size, size)).transpose(1, 2, 0))
    return np.stack(tiles)


def json_floats_body(tile: np.ndarray) -> bytes:
    """Row format, one instance of float pixel values (`123.0`), for `serving_default`."""
    return json.dumps({"instances": [tile.astype(np.float64).tolist()]}).encode()


def png_body(tiles: np.ndarray) -> bytes:
    """Row format, `{"b64": PNG}` instances for `serving_bytes` (the PNGs `ServingClient(encoding="png")` sends)."""
    from geolabel.serving.client import _png_b64

    return json.dumps({"signature_name": "serving_bytes", "instances": [{"b64": _png_b64(t)} for t in tiles]}).encode()


def request_head(length: int, path: str = PREDICT_PATH) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


class Bodies:
    """Every request body, built once before the clock starts (the clients only send bytes)."""

    def __init__(self, seed: int):
        tiles = read_tiles(8, TILE, seed)
        self.json = [json_floats_body(t) for t in tiles]
        self.png = [png_body(t[None]) for t in tiles]
        batch = SERVER["max_batch_size"]
        self.full_batch_png = png_body(np.concatenate([tiles] * (batch // len(tiles) + 1))[:batch])
        self.oversized = json_floats_body(read_tiles(1, 3 * TILE, seed + 1)[0])  # ~12 MB of real pixels
        assert len(self.oversized) > SERVER["max_body_bytes"], len(self.oversized)
        self.malformed = [
            self.json[0][: len(self.json[0]) // 2],  # cut in the middle of the numbers
            b'{"instances": [[[1.0, 2.0, 3.0]]',  # unbalanced brackets
            b'{"instances": [NaN, Infinity, }',
            b"\xff\xfe\x00garbage\x00" * 64,  # not UTF-8
            b'{"instances": "' + b"A" * 50_000 + b'"',  # unterminated string
        ]
        rng = np.random.default_rng(seed)
        self.wrong_shape = [
            json.dumps({"instances": [rng.integers(0, 255, (64, 64, 4)).astype(float).tolist()]}).encode(),  # 4 bands
            json.dumps({"instances": [[[1.0, 2.0, 3.0]] * 8 + [[1.0, 2.0]]]}).encode(),  # ragged
            json.dumps({"instances": [tiles[0, :, :, 0].astype(float).tolist()]}).encode(),  # 2-D, no bands
            json.dumps({"instances": [[["a", "b", "c"]] * 4]}).encode(),  # strings for floats
        ]
        # a TLS 1.3 ClientHello's first bytes, as a client configured for https would send them
        self.tls_hello = bytes.fromhex("16030100c4010000c00303") + bytes(range(32)) + b"\x00\x00\x02\x13\x01\x01\x00"


# ------------------------------------------------------------------------ raw-socket clients


def read_answer(sock: socket.socket, deadline: float) -> tuple[str, int | None]:
    """Read an HTTP answer until it is complete, the server closes, or `deadline` (monotonic).

    Returns (outcome, status): outcome "answered" (a whole response), "closed" (EOF),
    "reset", or "open" (nothing conclusive by the deadline); status from a status line.
    """
    data = b""
    status = need = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "open", status
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return "open", status
        except ConnectionResetError:
            return "reset", status
        if not chunk:
            return "closed", status
        data += chunk
        if status is None and b"\r\n" in data:
            try:
                status = int(data.split(b" ", 2)[1])
            except (IndexError, ValueError):
                status = -1
        if need is None and b"\r\n\r\n" in data:
            head = data.partition(b"\r\n\r\n")[0]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value.strip())
            need = len(head) + 4 + length
        if need is not None and len(data) >= need:
            return "answered", status


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def error_answer(outcome: str, status: int | None) -> bool:
    return outcome == "answered" and status is not None and 400 <= status < 600


class Hostile:
    """The hostile requests: each returns (outcome, status, ok)."""

    def __init__(self, port: int, bodies: Bodies, rng: random.Random):
        self.port = port
        self.bodies = bodies
        self.rng = rng
        self.trace: dict = {}  # slow kinds: the client's port, when it connected and when it saw the answer/close

    def _send_and_read(self, payload: bytes) -> tuple[str, int | None]:
        with connect(self.port) as sock:
            try:
                sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                return read_answer(sock, time.monotonic() + 1.0)
            return read_answer(sock, time.monotonic() + CLIENT_TIMEOUT_S)

    def malformed_json(self) -> tuple[str, int | None, bool]:
        body = self.rng.choice(self.bodies.malformed)
        outcome, status = self._send_and_read(request_head(len(body)) + body)
        return outcome, status, error_answer(outcome, status)

    def not_http(self) -> tuple[str, int | None, bool]:
        outcome, status = self._send_and_read(self.bodies.tls_hello + b"\r\n\r\n")
        return outcome, status, error_answer(outcome, status) or (outcome in ("closed", "reset") and status is None)

    def wrong_shape(self) -> tuple[str, int | None, bool]:
        body = self.rng.choice(self.bodies.wrong_shape)
        outcome, status = self._send_and_read(request_head(len(body)) + body)
        return outcome, status, error_answer(outcome, status)

    def oversized_claim(self) -> tuple[str, int | None, bool]:
        claimed = self.rng.choice([SERVER["max_body_bytes"] + 1, 10 * SERVER["max_body_bytes"], 10**12])
        outcome, status = self._send_and_read(request_head(claimed))
        return outcome, status, error_answer(outcome, status)

    def oversized_body(self) -> tuple[str, int | None, bool]:
        body = self.bodies.oversized
        with connect(self.port) as sock:
            sock.sendall(request_head(len(body)))
            sent_all = True
            try:
                sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                sent_all = False  # the server stopped draining after its answer and closed
            outcome, status = read_answer(sock, time.monotonic() + (CLIENT_TIMEOUT_S if sent_all else 1.0))
        ok = error_answer(outcome, status) or (outcome in ("closed", "reset") and status in (None, 429))
        return outcome, status, ok

    def slow_header(self) -> tuple[str, int | None, bool]:
        started = time.monotonic()
        with connect(self.port) as sock:
            self.trace = {"port": sock.getsockname()[1], "connected": started}
            sock.sendall(b"POST /v1/models/seg:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            outcome, status = read_answer(sock, started + SERVER["rest_header_timeout_s"] + HARD_S)
            self.trace["closed"] = time.monotonic()
        return outcome, status, outcome in ("closed", "reset") and status is None

    def slow_body(self) -> tuple[str, int | None, bool]:
        body = self.rng.choice(self.bodies.json)
        started = time.monotonic()
        deadline = started + SERVER["rest_body_timeout_s"] + HARD_S
        with connect(self.port) as sock:
            self.trace = {"port": sock.getsockname()[1], "connected": started}
            sock.sendall(request_head(len(body)) + body[:100])
            sent = 100
            outcome, status = "open", None
            while time.monotonic() < deadline:
                outcome, status = read_answer(sock, min(deadline, time.monotonic() + 1.0))
                if outcome != "open" or status is not None:
                    break
                try:
                    sock.sendall(body[sent : sent + 1])  # a byte a second: 16 days for the whole body
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    outcome, status = read_answer(sock, time.monotonic() + 1.0)
                    outcome = "reset" if outcome == "open" else outcome
                    break
            self.trace["closed"] = time.monotonic()
        return outcome, status, error_answer(outcome, status) or (outcome in ("closed", "reset") and status is None)

    def disconnect_mid_body(self) -> tuple[str, int | None, bool]:
        body = self.rng.choice(self.bodies.json)
        with connect(self.port) as sock:
            sock.sendall(request_head(len(body)) + body[: len(body) // 2])
            if self.rng.random() < 0.5:  # SO_LINGER on, 0 s: the close sends a reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + bytes(4))
        return "client closed", None, True


# ------------------------------------------------------------------------ valid clients


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[dict] = []  # kind, outcome, status, ok, seconds, t_done, error

    def add(self, **row) -> None:
        with self.lock:
            self.rows.append(row)


def check_prediction(data: bytes) -> str | None:
    """None when `data` is a 256 x 256 prediction of one instance (classes + probabilities summing to 1)."""
    try:
        (pred,) = json.loads(data)["predictions"]
        classes, probs = pred["classes"], pred["probabilities"]
        if len(classes) != TILE or len(classes[0]) != TILE or len(probs) != TILE or len(probs[-1]) != TILE:
            return f"shape {len(classes)} x {len(classes[0])}"
        pixel = probs[TILE // 2][TILE // 3]
        if len(pixel) != 2 or abs(sum(pixel) - 1) > 1e-3:
            return f"probabilities {pixel}"
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return f"{type(err).__name__}: {str(err)[:120]}"
    return None


def client(index: int, port: int, bodies: Bodies, args: argparse.Namespace, stop_at: float, stats: Stats,
           max_requests: int | None = None) -> None:
    """One client until `stop_at`: a keep-alive connection for valid requests, raw sockets for hostile ones."""
    rng = random.Random(args.seed * 1_000_003 + index)
    hostile = Hostile(port, bodies, rng)
    conn: http.client.HTTPConnection | None = None
    last_used = 0.0
    sent = 0
    while time.monotonic() < stop_at and (max_requests is None or sent < max_requests):
        sent += 1
        if rng.random() < args.hostile:
            kind = rng.choice(HOSTILE_KINDS)
            started = time.monotonic()
            hostile.trace = {}
            try:
                outcome, status, ok = getattr(hostile, kind)()
                error = None
            except OSError as err:  # e.g. a refused connection
                outcome, status, ok, error = "client error", None, False, repr(err)[:200]
            stats.add(kind=kind, outcome=outcome, status=status, ok=ok, seconds=time.monotonic() - started,
                      t_done=time.monotonic(), error=error, trace=hostile.trace)
            continue
        kind = "valid_png_b64" if rng.random() < args.png_share else "valid_json_floats"
        body = rng.choice(bodies.png if kind == "valid_png_b64" else bodies.json)
        # a keep-alive connection idle near the server's idle timeout may be closed under us: start afresh
        if conn is not None and time.monotonic() - last_used > SERVER["rest_idle_timeout_s"] - SLACK_S:
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
        started = time.monotonic()
        status, error, data = None, None, b""
        try:
            conn.request("POST", PREDICT_PATH, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            error = repr(err)[:200]
            conn.close()
            conn = None
        last_used = done = time.monotonic()
        if status is not None:
            error = check_prediction(data) if status == 200 else data[:300].decode("utf-8", "replace")
        stats.add(kind=kind, outcome="answered" if status is not None else "failed", status=status,
                  ok=status == 200 and error is None, seconds=done - started, t_done=done, error=error)
    if conn is not None:
        conn.close()


def status_prober(port: int, stop_at: float, stats: Stats) -> None:
    """GET the model status on a new connection every STATUS_EVERY_S: how long a new connection waits."""
    while time.monotonic() < stop_at:
        started = time.monotonic()
        status, error = None, None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
        try:
            conn.request("GET", STATUS_PATH)
            response = conn.getresponse()
            data = response.read()
            status = response.status
            if status != 200 or b"AVAILABLE" not in data:
                error = data[:300].decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as err:
            error = repr(err)[:200]
        finally:
            conn.close()
        done = time.monotonic()
        stats.add(kind="valid_status_new_connection", outcome="answered" if status is not None else "failed",
                  status=status, ok=status == 200 and error is None, seconds=done - started, t_done=done, error=error)
        time.sleep(max(0.0, STATUS_EVERY_S - (done - started)))


# ------------------------------------------------------------------------ the soak


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    arr = np.asarray(values)
    return {"p50_s": float(np.percentile(arr, 50)), "p99_s": float(np.percentile(arr, 99)), "max_s": float(arr.max())}


def server_args() -> tuple[str, ...]:
    args: list[str] = []
    for key, value in SERVER.items():
        args += [f"--{key}", f"{value:g}" if isinstance(value, float) else str(value)]
    return tuple(args)


class Server:
    """One-off readings of the server process (the time series comes from SAMPLER)."""

    def __init__(self, pid: int, rest_port: int):
        import psutil

        self.pid = pid
        self.proc = psutil.Process(pid)
        self.rest_port = rest_port

    def reading(self) -> dict:
        conns = [c for c in self.proc.net_connections(kind="tcp")
                 if c.laddr and c.laddr.port == self.rest_port and c.status != "LISTEN"]
        return {"t": time.monotonic(), "rss": self.proc.memory_info().rss, "hwm": self.hwm(),
                "threads": self.proc.num_threads(), "rest_connections": len(conns)}

    def hwm(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024

    def reset_hwm(self) -> bool:
        """Reset the kernel's peak-RSS mark (VmHWM) so it reads the peak from now on."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


def warm_up(port: int, bodies: Bodies, args: argparse.Namespace) -> int:
    """One full batch (max_batch_size PNG tiles in one request), then a round of valid requests through the batcher."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    conn.request("POST", PREDICT_PATH, body=bodies.full_batch_png, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"warm-up full batch answered {response.status}")
    warm = Stats()
    quiet = argparse.Namespace(**{**vars(args), "hostile": 0.0})
    threads = [threading.Thread(target=client, args=(i, port, bodies, quiet, float("inf"), warm, 1))
               for i in range(max(2, args.clients // 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [r for r in warm.rows if not r["ok"]]
    if bad:
        raise RuntimeError(f"warm-up request failed: {bad[0]}")
    return 1 + len(warm.rows)


def soak(proc: subprocess.Popen, rest_port: int, bodies: Bodies, args: argparse.Namespace, samples_path: Path) -> dict:
    from geolabel.serving.client import ServingClient

    server = Server(proc.pid, rest_port)
    with open(samples_path, "w") as out:
        sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, str(proc.pid), str(rest_port), str(SAMPLE_S)],
                                   stdout=out, stderr=subprocess.DEVNULL)
    try:
        with ServingClient(f"http://127.0.0.1:{rest_port}/v1/models/seg") as probe:
            probe.wait_available(120)
        start = server.reading()
        t_warm = time.monotonic()
        warmup_requests = warm_up(rest_port, bodies, args)
        time.sleep(2.0)
        after = []
        for _ in range(3):
            after.append(server.reading())
            time.sleep(SAMPLE_S)
        baseline_rss = max(r["rss"] for r in after)
        baseline_threads = max(r["threads"] for r in after)
        hwm_reset = server.reset_hwm()
        bound = baseline_rss + SERVER["memory_budget_bytes"] + SERVER["max_connections"] * PER_CONNECTION_BYTES
        thread_bound = baseline_threads + SERVER["max_connections"]
        print(f"warm: RSS {baseline_rss / MiB:.0f} MiB, {baseline_threads} threads; RSS bound {bound / MiB:.0f} MiB; "
              f"{args.clients} clients for {args.seconds:g} s", flush=True)

        stats = Stats()
        load_start = time.monotonic()
        stop_at = load_start + args.seconds
        threads = [threading.Thread(target=client, args=(i, rest_port, bodies, args, stop_at, stats), daemon=True)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=status_prober, args=(rest_port, stop_at, stats), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_end = time.monotonic()
        peak_hwm = server.hwm()  # the peak RSS since the reset (the drain only frees)

        # drain: the server must close every connection the clients left (its idle timeout at most)
        limit = load_end + SERVER["rest_idle_timeout_s"] + SERVER["rest_header_timeout_s"] + SLACK_S
        while True:
            end = server.reading()
            if (end["rest_connections"] == 0 and end["threads"] <= baseline_threads) or time.monotonic() > limit:
                break
            time.sleep(SAMPLE_S)
        drain_s = time.monotonic() - load_end
        peak_hwm = max(peak_hwm, server.hwm())
        alive = proc.poll() is None
    finally:
        sampler.terminate()
        sampler.wait(10)

    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    for row in samples:
        row["phase"] = ("start" if row["t"] < t_warm else "warm-up" if row["t"] < load_start else
                        "load" if row["t"] < load_end else "drain")
    loaded = [s for s in samples if s["phase"] in ("load", "drain")] + [{**end, "phase": "drain"}]
    half = load_start + args.seconds / 2
    first_half = [s["rss"] for s in loaded if s["phase"] == "load" and s["t"] < half]
    second_half = [s["rss"] for s in loaded if s["phase"] == "load" and s["t"] >= half]
    sampled_peak = max(s["rss"] for s in loaded)

    rows = stats.rows
    kinds: dict[str, dict] = {}
    for kind in (*VALID_KINDS, *HOSTILE_KINDS):
        mine = [r for r in rows if r["kind"] == kind]
        late, waits, holds = [], [], []
        if kind in SLOW_KINDS:  # closed later than the deadline + slack after the server accepted
            allowed = SERVER[SLOW_KINDS[kind]] + SLACK_S
            for r in mine:
                wait, hold = queue_wait_and_hold(r["trace"], samples)
                waits.append(wait)
                holds.append(hold)
                if r["ok"] and hold > allowed:
                    late.append(hold - allowed)
        outcomes = Counter(str(r["status"]) if r["outcome"] == "answered"
                           else f"{r['outcome']} after {r['status']}" if r["status"] else r["outcome"] for r in mine)
        kinds[kind] = {
            "count": len(mine), "ok": sum(r["ok"] for r in mine), "failed": sum(not r["ok"] for r in mine),
            "late": len(late), "late_by_max_s": max(late) if late else None,
            "outcomes": dict(outcomes.most_common()), "expected": EXPECTED[kind],
            **percentiles([r["seconds"] for r in mine]),
            "listen_queue_s": percentiles(waits) if kind in SLOW_KINDS else None,
            "server_hold_s": percentiles(holds) if kind in SLOW_KINDS else None,
            "first_failure": next(({k: r[k] for k in ("outcome", "status", "seconds", "error")}
                                   for r in mine if not r["ok"]), None),
        }
    predict = [r for r in rows if r["kind"] in VALID_KINDS[:2]]
    valid = [r for r in rows if r["kind"] in VALID_KINDS]
    return {
        "kinds": kinds,
        "valid": {"count": len(valid), "ok": sum(r["ok"] for r in valid), "failed": sum(not r["ok"] for r in valid)},
        "predict": {"count": len(predict), "ok": sum(r["ok"] for r in predict),
                    "rps": sum(r["ok"] for r in predict) / (load_end - load_start),
                    **percentiles([r["seconds"] for r in predict if r["ok"]])},
        "hostile": {"count": len(rows) - len(valid), "share": (len(rows) - len(valid)) / max(1, len(rows)),
                    "failed": sum(not r["ok"] for r in rows if r["kind"] in HOSTILE_KINDS),
                    "late": sum(k["late"] for k in kinds.values())},
        "load_s": load_end - load_start, "drain_s": drain_s, "server_alive": alive, "warmup_requests": warmup_requests,
        "rss": {
            "start_mib": start["rss"] / MiB, "after_warmup_mib": baseline_rss / MiB,
            "peak_mib": max(peak_hwm if hwm_reset else 0, sampled_peak) / MiB, "peak_sampled_mib": sampled_peak / MiB,
            "peak_hwm_mib": peak_hwm / MiB, "hwm_reset_after_warmup": hwm_reset,
            "peak_first_half_mib": max(first_half) / MiB if first_half else None,
            "peak_second_half_mib": max(second_half) / MiB if second_half else None,
            "end_mib": end["rss"] / MiB, "bound_mib": bound / MiB,
        },
        "threads": {"start": start["threads"], "after_warmup": baseline_threads,
                    "peak": max(s["threads"] for s in loaded), "end": end["threads"], "bound": thread_bound},
        "rest_connections": {"peak": max(s["rest_connections"] for s in loaded), "end": end["rest_connections"],
                             "limit": SERVER["max_connections"]},
        "samples": [{"t": round(s["t"] - start["t"], 2), "phase": s["phase"], "rss_mib": round(s["rss"] / MiB, 1),
                     "hwm_mib": round(s["hwm"] / MiB, 1),
                     "threads": s["threads"], "rest_connections": s["rest_connections"]} for s in samples],
    }


def queue_wait_and_hold(trace: dict, samples: list[dict]) -> tuple[float, float]:
    """A slow connection's time in the listen queue (at least) and held by the server after accepting it (at most).

    The server accepted it between the last sample that does not list the client's port
    and the first that does; when no sample lists it, all its time counts as held.
    """
    if "closed" not in trace:
        return 0.0, float("inf")
    accepted = trace["connected"]
    previous = None
    for row in samples:
        if row["t"] < trace["connected"]:
            continue
        if trace["port"] in row["peers"]:
            accepted = max(trace["connected"], previous if previous is not None else trace["connected"])
            break
        previous = row["t"]
    return accepted - trace["connected"], trace["closed"] - accepted


def verdict(r: dict) -> list[str]:
    """Why the soak failed (empty: it passed)."""
    failures = []
    if not r["server_alive"]:
        failures.append("the server process exited during the soak")
    if r["predict"]["ok"] == 0:
        failures.append("no valid prediction completed")
    if r["valid"]["failed"]:
        first = next(k for k in VALID_KINDS if r["kinds"][k]["failed"])
        failures.append(f"{r['valid']['failed']} of {r['valid']['count']} valid requests failed (first, {first}: "
                        f"{r['kinds'][first]['first_failure']})")
    if r["hostile"]["failed"]:
        first = next(k for k in HOSTILE_KINDS if r["kinds"][k]["failed"])
        failures.append(f"{r['hostile']['failed']} hostile requests were neither answered 4xx/5xx nor closed by the "
                        f"server (first, {first}: {r['kinds'][first]['first_failure']})")
    if r["rss"]["peak_mib"] > r["rss"]["bound_mib"]:
        failures.append(f"peak RSS {r['rss']['peak_mib']:.0f} MiB exceeds the bound {r['rss']['bound_mib']:.0f} MiB")
    t = r["threads"]
    if t["peak"] > t["bound"]:
        failures.append(f"peak threads {t['peak']} exceed the bound {t['bound']}")
    if r["rest_connections"]["end"] or t["end"] > t["after_warmup"]:
        failures.append(f"{r['rest_connections']['end']} REST connections and {t['end']} threads "
                        f"(after warm-up: {t['after_warmup']}) left {r['drain_s']:.0f} s after the clients stopped")
    return failures


def fmt(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "-"


def markdown(r: dict) -> str:
    s, rss, th, conns, p = r["server"], r["rss"], r["threads"], r["rest_connections"], r["predict"]
    status = ("FAILED: " + "; ".join(r["failures"])) if r["failures"] else (
        "PASSED: every valid request answered 200 (predictions well-formed), every hostile one answered "
        "4xx/5xx or closed by the server, RSS and threads within their bounds and back down after the drain")
    lines = [
        "# Serving soak: concurrent clients with hostile requests mixed in",
        "",
        f"Command: `{r['command']}` (niceness {r['niceness']}); commit {r['commit']}; seed {r['seed']}; "
        f"{r['cpu_count']} cores, 1-min load average {r['load_avg_1min_before']:.2f} before, "
        f"{r['load_avg_1min_after']:.2f} after.",
        "",
        f"Model: the shipped building FCN (`{r['model']}`), exported with `geolabel export`'s code "
        f"({r['export_s']:.0f} s) and served by `geolabel serve` in its own process on 127.0.0.1 "
        "(REST; the gRPC port is open, unused). "
        f"{r['clients']} client threads start requests for {r['seconds']:g} s, then finish those in flight: "
        f"valid REST `:predict` requests of one real {r['tile']} x {r['tile']} tile of `{Path(r['image']).name}` "
        f"({100 * (1 - r['png_share']):.0f} % JSON `instances` floats to `serving_default`, ~1.4 MB; "
        f"{100 * r['png_share']:.0f} % `{{\"b64\"}}` PNGs to `serving_bytes`, ~0.2 MB; keep-alive connections; "
        "answers ~1.9 MB) and, with probability "
        f"{r['hostile_share']:g} each, a hostile request on a raw socket ({r['hostile']['count']} sent, "
        f"{100 * r['hostile']['share']:.1f} % of all requests). One more thread GETs the model status on a new "
        f"connection every {STATUS_EVERY_S:g} s.",
        "",
        f"**{status}.**",
        "",
        "## Server settings",
        "",
        f"`geolabel serve --model_base_path BASE --model_name seg {' '.join(r['server_args'])}`",
        "",
        "| limit | value |",
        "|---|---|",
        f"| memory budget: requests in flight (bodies, parsed JSON, tensors, responses); 429 beyond | "
        f"{s['memory_budget_bytes'] / MiB:g} MiB, a request waits up to {s['memory_wait_ms']} ms for it |",
        f"| max REST body (also at most budget / 14, the JSON parse) | {s['max_body_bytes'] / MiB:g} MiB |",
        f"| max connections: one thread each; 503 beyond | {s['max_connections']} |",
        f"| max concurrent predict calls; 429 beyond | {s['max_concurrent_requests']} |",
        f"| header / body / keep-alive idle deadlines | {s['rest_header_timeout_s']:g} / "
        f"{s['rest_body_timeout_s']:g} / {s['rest_idle_timeout_s']:g} s |",
        f"| max batch size (batching on) | {s['max_batch_size']} |",
        "",
        "## Memory and threads",
        "",
        f"RSS bound = RSS after warm-up ({rss['after_warmup_mib']:.0f} MiB) + memory budget "
        f"({s['memory_budget_bytes'] / MiB:g} MiB) + max connections ({s['max_connections']}) x "
        f"{r['per_connection_bytes'] / MiB:g} MiB = **{rss['bound_mib']:.0f} MiB**. The warm-up sends one "
        f"request of {s['max_batch_size']} tiles (a full batch: the model's largest activations, which the "
        f"budget does not count, are in the baseline) and {r['warmup_requests'] - 1} valid requests at once "
        "through the batcher. The budget bounds what requests hold (bodies, parsed JSON, tensors, JSON "
        "responses); a connection adds a thread and a 64 KiB read buffer (180 idle ones measured ~28 KiB each; "
        "1 MiB allows for a busy one's malloc state). Peak = the kernel's VmHWM of the server process, reset "
        f"after the warm-up ({'done' if rss['hwm_reset_after_warmup'] else 'not possible: VmHWM since start'}), "
        f"and the highest 0.5 s sample ({rss['peak_sampled_mib']:.0f} MiB). Thread bound = threads after "
        f"warm-up + max connections = {th['bound']}.",
        "",
        "| | RSS MiB | threads | open REST connections |",
        "|---|---|---|---|",
        f"| server started, model loaded | {rss['start_mib']:.0f} | {th['start']} | |",
        f"| after warm-up (baseline) | {rss['after_warmup_mib']:.0f} | {th['after_warmup']} | |",
        f"| highest sample, first / second half of the load | {rss['peak_first_half_mib'] or 0:.0f} / "
        f"{rss['peak_second_half_mib'] or 0:.0f} | | |",
        f"| peak (load and drain) | **{rss['peak_mib']:.0f}** | {th['peak']} | {conns['peak']} |",
        f"| bound / limit | **{rss['bound_mib']:.0f}** | {th['bound']} | {conns['limit']} |",
        f"| {r['drain_s']:.0f} s after the clients stopped | {rss['end_mib']:.0f} | {th['end']} | {conns['end']} |",
        "",
        "## Requests",
        "",
        "Time = from connecting (or sending, on a kept-alive connection) to the whole answer, the server's "
        "close, or the client's own close. ok = valid: 200 and a 256 x 256 prediction (classes, "
        "probabilities summing to 1) or an AVAILABLE status; hostile: a 4xx/5xx answer, or closed by the "
        "server. Late = a slow client the server held more than its deadline + "
        f"{r['slack_s']:g} s after accepting it (accept time from the 0.5 s samples of the server's connections, "
        "taken early: the hold is an upper bound); its time before that is spent in the kernel's listen queue "
        f"(see below). A slow client still open {r['hard_s']:g} s after its deadline fails.",
        "",
        "| kind | count | expected | outcomes | ok | failed | late | p50 s | p99 s | max s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, k in r["kinds"].items():
        outcomes = ", ".join(f"{key}: {n}" for key, n in k["outcomes"].items()) or "-"
        late = f"{k['late']} (by <= {k['late_by_max_s']:.1f} s)" if k["late"] else ("0" if kind in SLOW_KINDS else "")
        lines.append(f"| {kind} | {k['count']} | {k['expected']} | {outcomes} | {k['ok']} | {k['failed']} | {late} | "
                     f"{fmt(k['p50_s'])} | {fmt(k['p99_s'])} | {fmt(k['max_s'])} |")
    status_row = r["kinds"]["valid_status_new_connection"]
    lines += [""]
    for kind, deadline in SLOW_KINDS.items():
        k = r["kinds"][kind]
        if k["count"]:
            q, h = k["listen_queue_s"], k["server_hold_s"]
            lines.append(f"- {kind}: held by the server p50 {fmt(h['p50_s'])} s, max {fmt(h['max_s'])} s after "
                         f"accepting (deadline {s[deadline]:g} s); before that in the listen queue p50 "
                         f"{fmt(q['p50_s'])} s, max {fmt(q['max_s'])} s.")
    lines += [
        "",
        f"Predictions: {p['ok']} of {p['count']} answered 200, {p['rps']:.2f} requests/s over the "
        f"{r['load_s']:.0f} s load; latency p50 **{fmt(p['p50_s'])} s**, p99 **{fmt(p['p99_s'])} s**, max "
        f"{fmt(p['max_s'])} s. With {r['clients']} clients on {r['cpu_count']} cores the latency is mostly "
        "queueing (clients / throughput): the server is CPU- and GIL-bound (JSON parsing and formatting run "
        "in Python), and refuses no valid work. A new connection waited p50 "
        f"{fmt(status_row['p50_s'])} s, max {fmt(status_row['max_s'])} s for a status answer: the accept loop "
        "starts a thread per connection and needs the GIL several times per accept, so under this load "
        "connections queue in the kernel's listen backlog (no thread, no memory held) before the server's "
        "header deadline starts (the slow clients' listen-queue times above). Server log lines with a "
        f"traceback or error: {len(r['server_log_problem_lines'])}.",
        "",
        "## Over time",
        "",
        "| t s | phase | RSS MiB | threads | open REST connections |",
        "|---|---|---|---|---|",
    ]
    samples = r["samples"]
    step = max(1, len(samples) // 30)
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    for row in shown:
        lines.append(f"| {row['t']:.0f} | {row['phase']} | {row['rss_mib']:.0f} | {row['threads']} | "
                     f"{row['rest_connections']} |")
    lines += ["", f"All {len(samples)} samples (every {SAMPLE_S:g} s) are in serving-soak.json."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long clients start new requests")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client threads")
    parser.add_argument("--hostile", type=float, default=0.10, help="probability that a request is hostile")
    parser.add_argument("--png-share", type=float, default=0.5, help="share of valid requests sent as PNG b64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "cd /work/main && .venv/bin/python benchmarks/bench_serving_soak.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    commit = git_commit()
    print(f"commit {commit}, load {load_before:.2f}; building request bodies", flush=True)
    bodies = Bodies(args.seed)

    from geolabel.serving.export import export_run

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        base = Path(tmp) / "seg"
        started = time.monotonic()
        export_run(MODEL, base, 1)
        export_s = time.monotonic() - started
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            proc, rest_port, _ = start_server(base, server_args(), stderr=log)
        try:
            results = soak(proc, rest_port, bodies, args, Path(tmp) / "samples.jsonl")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_lines = log_path.read_text(errors="replace").splitlines()
    results.update({
        "command": command, "commit": commit, "seed": args.seed, "seconds": args.seconds, "clients": args.clients,
        "hostile_share": args.hostile, "png_share": args.png_share, "model": MODEL, "tile": TILE,
        "image": str(SOURCE if SOURCE.is_file() else IMAGE), "export_s": export_s,
        "server": SERVER, "server_args": list(server_args()), "per_connection_bytes": PER_CONNECTION_BYTES,
        "slack_s": SLACK_S, "hard_s": HARD_S, "client_timeout_s": CLIENT_TIMEOUT_S, "niceness": os.nice(0),
        "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "server_log_problem_lines": [line for line in log_lines if "Traceback" in line or "ERROR" in line][:20],
    })
    results["failures"] = verdict(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "serving-soak.json", json.dumps(results, indent=2))
    md = markdown(results)
    write_text_atomic(RESULTS / "serving-soak.md", md)
    print(md)
    if results["failures"]:
        print("FAILED:\n- " + "\n- ".join(results["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
