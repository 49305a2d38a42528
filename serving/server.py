"""An embedded TF-Serving-compatible model server: REST (8501) and gRPC (8500).

It serves SavedModels from `BASE/<integer version>/` exactly as `tensorflow_model_server`
does on the points of `docs/tf-serving-contract.md`: the REST routes, JSON formats and
error messages and codes, gRPC `PredictionService` and `ModelService` (stubs from the
`tensorflow-serving-api` wheel), text `ModelServerConfig` files, version policies
(latest N, all, specific) and labels, file-system polling where a new version is
loaded before the old one is unloaded, and warm-up requests. On top of that it
batches concurrent small requests, bounds request sizes, connections, concurrency and
request memory (`MemoryBudget`), times out slow or stalled clients (header, body and
keep-alive idle deadlines), and never turns a model name into a path (names are looked
up in the configuration only).
"""

from __future__ import annotations

import os
import re
import socket
import socketserver
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import numpy as np

from geolabel.errors import InputError
from geolabel.progress import logger
from geolabel.serving import json_tensor as jt

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# gRPC status code name -> HTTP status (model_servers/http_server.cc ToHTTPStatusCode)
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
V1_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
VALID_NAME = re.compile(r"[^/:\s]+")
INT64_MAX = (1 << 63) - 1


class ServingError(Exception):
    """An error with a gRPC status code name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


# ---------------------------------------------------------------- memory budget

# What a request costs in memory, per phase (see MemoryBudget). Parsing a JSON body builds
# Python objects (~9 bytes per body byte for pixel values in nested lists) next to the
# body, its text and the decoded arrays: one 66 MB `{"instances": [...]}` of float pixels
# raised the server's peak RSS by 886 MB (13.4 x; 2.3 GB before the response formatting
# was chunked and the parsed JSON freed before the model runs).
JSON_BYTES_PER_BODY_BYTE = 14
# decoded input tensors: the numpy arrays and the TF tensors made from them
TENSOR_COPIES = 2
# a JSON response: its text pieces, the joined text and its bytes (x3) next to the output arrays
RESPONSE_TEXT_COPIES = 3


class MemoryBudget:
    """A bound on the memory held by requests in flight (REST bodies, parsed JSON, tensors, responses).

    Every request holds a `Lease` that it resizes at each phase: while a REST body is
    read, the bytes received; while it is parsed, `JSON_BYTES_PER_BODY_BYTE` x its size;
    then its decoded tensors (`TENSOR_COPIES` x their bytes); then its outputs and their
    JSON text. gRPC requests lease their message and tensors the same way. The sum of all
    leases never exceeds `limit_bytes`: a lease that would not fit waits up to `wait_s` for
    others to finish, then the request is refused with RESOURCE_EXHAUSTED (HTTP 429, TF
    Serving's JSON error) and frees what it held; a request that could never fit is
    refused at once. Model activations inside `run_signature` are not counted.
    """

    def __init__(self, limit_bytes: int, wait_s: float = 2.0):
        self.limit_bytes = int(limit_bytes)
        self.wait_s = float(wait_s)
        self._cond = threading.Condition()
        self.in_use = 0
        self.peak = 0
        self.refused = 0

    def lease(self) -> Lease:
        return Lease(self)

    def _resize(self, lease: Lease, size: int, what: str) -> None:
        size = max(0, int(size))
        with self._cond:
            delta = size - lease.size
            if delta <= 0:
                self.in_use += delta
                lease.size = size
                self._cond.notify_all()
                return
            if size > self.limit_bytes:
                self.refused += 1
                raise ServingError(
                    "RESOURCE_EXHAUSTED",
                    f"{what} needs about {size} bytes of memory, more than the server's memory budget of "
                    f"{self.limit_bytes} bytes",
                )
            deadline = time.monotonic() + self.wait_s
            while self.in_use + delta > self.limit_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.refused += 1
                    raise ServingError(
                        "RESOURCE_EXHAUSTED",
                        f"Server memory budget exhausted: {what} needs {delta} more bytes but {self.in_use} of "
                        f"{self.limit_bytes} bytes are held by requests in flight; retry later",
                    )
                self._cond.wait(remaining)
            self.in_use += delta
            lease.size = size
            self.peak = max(self.peak, self.in_use)


class Lease:
    """One request's share of a `MemoryBudget` (resize it per phase; release it at the end)."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.size = 0

    def resize(self, size: int, what: str = "This request") -> None:
        self.budget._resize(self, size, what)

    def release(self) -> None:
        self.budget._resize(self, 0, "")

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def tensor_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of a tensor map (strings: their lengths plus a pointer each)."""
    total = 0
    for arr in arrays.values():
        if arr.dtype == object:
            total += arr.size * 64 + sum(len(x) for x in arr.reshape(-1) if isinstance(x, bytes | str))
        else:
            total += arr.nbytes
    return total


def response_json_bytes(outputs: dict[str, np.ndarray]) -> int:
    """An estimate of the memory of formatting `outputs` as JSON (arrays + text copies)."""
    text = 0
    for arr in outputs.values():
        per_item = 12 if arr.dtype.kind == "f" else 6 if arr.dtype.kind in "iub" else 0
        text += arr.size * per_item
        if arr.dtype == object:
            text += sum(len(x) * 4 // 3 + 16 for x in arr.reshape(-1) if isinstance(x, bytes | str))
    return tensor_bytes(outputs) + RESPONSE_TEXT_COPIES * text


# --------------------------------------------------------------------- servables


@dataclass
class Signature:
    """One signature of a loaded SavedModel."""

    name: str
    method_name: str
    inputs: dict[str, tuple[np.dtype, list[int] | None]]  # alias -> (dtype, dims with -1; None = unknown rank)
    outputs: dict[str, tuple[np.dtype, list[int] | None]]
    fn: Any = None

    @property
    def input_dtypes(self) -> dict[str, np.dtype]:
        return {k: v[0] for k, v in self.inputs.items()}


@dataclass
class Servable:
    """One loaded version of a model."""

    name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    signature_def_map: Any  # get_model_metadata_pb2.SignatureDefMap
    loaded: Any = field(default=None, repr=False)


def _np_dtype(enum: int) -> np.dtype:
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(enum)
    return np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)


def _dims(shape_proto: Any) -> list[int] | None:
    return None if shape_proto.unknown_rank else [int(d.size) for d in shape_proto.dim]


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Load `path` (a SavedModel folder) and index its signatures like TF Serving does."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise ServingError(
            "NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
        )
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    meta = proto.meta_graphs[0]
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in meta.signature_def.items():
        if key == "__saved_model_init_op":
            continue
        sig_map.signature_def[key].CopyFrom(sig)
    loaded = tf.saved_model.load(str(path))
    signatures = {}
    for key, sig in sig_map.signature_def.items():
        signatures[key] = Signature(
            name=key,
            method_name=sig.method_name,
            inputs={k: (_np_dtype(v.dtype), _dims(v.tensor_shape)) for k, v in sig.inputs.items()},
            outputs={k: (_np_dtype(v.dtype), _dims(v.tensor_shape)) for k, v in sig.outputs.items()},
            fn=loaded.signatures.get(key),
        )
    return Servable(name, version, path, signatures, sig_map, loaded)


def _check_inputs(sig: Signature, inputs: dict[str, np.ndarray]) -> None:
    """TF Serving's request checks: input names (`VerifyRequestInputsSize`), dtypes and shapes."""
    expected = set(sig.inputs)
    given = set(inputs)
    if len(given) != len(expected) or given != expected:
        if len(given) == len(expected):
            alias = sorted(given - expected)[0]
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}.",
            )
        raise ServingError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(given)}!={len(expected)} "
            f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(given - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - given))}}}.",
        )
    for i, alias in enumerate(sorted(expected)):
        dtype, dims = sig.inputs[alias]
        arr = inputs[alias]
        same_kind = (dtype.kind in "OSU") == (arr.dtype.kind in "OSU")
        if not same_kind or (dtype.kind not in "OSU" and arr.dtype != dtype):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expects arg[{i}] to be {jt.type_name(dtype)} but {jt.type_name(arr.dtype)} is provided",
            )
        if dims is not None and (
            arr.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, arr.shape, strict=True))
        ):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input '{alias}' of signature '{sig.name}' has shape [{','.join(map(str, arr.shape))}] "
                f"but the signature expects [{','.join('?' if d < 0 else str(d) for d in dims)}]",
            )


_ROOT_ERROR_PREFIX = re.compile(r"^\s*\(\d+\) [A-Z_]+:\s*")


def op_error_message(message: str) -> str:
    """The failing op's own message from a TF error, as a session reports it.

    Errors raised while a graph function runs read `Graph execution error:`, the node's
    Python traceback (or `<stack traces unavailable>`), then the op's message and
    `[[{{node ...}}]]`: their first line alone would be the useless `Graph execution error:`.
    """
    lines = [line for line in message.strip().split("\n") if line.strip()]
    if not lines:
        return message
    text = lines[0]
    for i, line in enumerate(lines):
        if line.lstrip().startswith("[[") and i > 0:
            text = lines[i - 1]
            break
    else:
        if text.startswith("Graph execution error"):
            text = lines[-1]
    text = _ROOT_ERROR_PREFIX.sub("", text).strip()
    return re.sub(r"\s*\[Op:[^\]]*\](\s+name:.*)?$", "", text)


def run_signature(sig: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a signature function on numpy inputs; TF errors become INVALID_ARGUMENT like a session's."""
    import tensorflow as tf

    try:
        out = sig.fn(**{k: tf.constant(v) for k, v in inputs.items()})
    except tf.errors.OpError as err:
        code = {
            tf.errors.InvalidArgumentError: "INVALID_ARGUMENT",
            tf.errors.ResourceExhaustedError: "RESOURCE_EXHAUSTED",
            tf.errors.UnimplementedError: "UNIMPLEMENTED",
        }.get(type(err), "INTERNAL")
        raise ServingError(code, op_error_message(err.message)) from err
    except (ValueError, TypeError) as err:
        raise ServingError("INVALID_ARGUMENT", str(err).split("\n")[0]) from err
    return {k: v.numpy() for k, v in out.items()}


# ---------------------------------------------------------------------- batching


class _Batch:
    def __init__(self) -> None:
        self.items: list[dict[str, np.ndarray]] = []
        self.sizes: list[int] = []
        self.full = threading.Event()
        self.done = threading.Event()
        self.results: list[Any] = []


class Batcher:
    """Merge concurrent small requests to one signature into one batched call.

    The first request of a batch leads: when other requests for the same signature are
    in flight it waits up to `timeout_s` for them to join (or until `max_batch_size`
    rows), runs the concatenated batch and hands every caller its slice. A lone request
    runs at once. A failing batch is re-run request by request so one bad request never
    fails the others.
    """

    def __init__(self, max_batch_size: int = 32, timeout_s: float = 0.002):
        self.max_batch_size = int(max_batch_size)
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._open: dict[Any, _Batch] = {}
        self._in_flight: dict[Any, int] = {}
        self.batches_run = 0
        self.requests_batched = 0

    def run(self, servable: Servable, sig: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes = {v.shape[0] if v.ndim else -1 for v in inputs.values()}
        n = sizes.pop() if len(sizes) == 1 else -1
        if n <= 0 or n >= self.max_batch_size:
            return run_signature(sig, inputs)
        key = (id(servable), sig.name, tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items())))
        sig_key = (id(servable), sig.name)
        with self._lock:
            self._in_flight[sig_key] = self._in_flight.get(sig_key, 0) + 1
            others = self._in_flight[sig_key] > 1
            batch = self._open.get(key)
            leader = batch is None or sum(batch.sizes) + n > self.max_batch_size
            if leader:
                batch = _Batch()
                self._open[key] = batch
            index = len(batch.items)
            batch.items.append(inputs)
            batch.sizes.append(n)
            if sum(batch.sizes) >= self.max_batch_size:
                batch.full.set()
                if self._open.get(key) is batch:
                    del self._open[key]
        try:
            if leader:
                if others:
                    batch.full.wait(self.timeout_s)
                with self._lock:
                    if self._open.get(key) is batch:
                        del self._open[key]
                self._execute(sig, batch)
            else:
                batch.done.wait()
        finally:
            with self._lock:
                self._in_flight[sig_key] -= 1
                if not self._in_flight[sig_key]:
                    del self._in_flight[sig_key]
        result = batch.results[index]
        if isinstance(result, BaseException):
            raise result
        return result

    def _execute(self, sig: Signature, batch: _Batch) -> None:
        try:
            if len(batch.items) == 1:
                batch.results = [self._safe(sig, batch.items[0])]
                return
            merged = {k: np.concatenate([item[k] for item in batch.items]) for k in batch.items[0]}
            total = sum(batch.sizes)
            try:
                out = run_signature(sig, merged)
                if any(v.ndim == 0 or v.shape[0] != total for v in out.values()):
                    raise ValueError("outputs do not share the batch dimension")
            except (ServingError, ValueError):
                batch.results = [self._safe(sig, item) for item in batch.items]
                return
            bounds = np.cumsum([0, *batch.sizes])
            batch.results = [{k: v[a:b] for k, v in out.items()} for a, b in zip(bounds[:-1], bounds[1:])]
            self.batches_run += 1
            self.requests_batched += len(batch.items)
        finally:
            batch.done.set()

    @staticmethod
    def _safe(sig: Signature, inputs: dict[str, np.ndarray]) -> Any:
        try:
            return run_signature(sig, inputs)
        except ServingError as err:
            return err


# ------------------------------------------------------------------ model manager


@dataclass
class VersionState:
    state: str = "START"
    error_code: str = "OK"
    error_message: str = ""
    failures: int = 0


class ModelManager:
    """The versions of one model: polling its base path, loading and unloading per policy."""

    def __init__(self, config: Any, max_load_retries: int = 5):
        self.name = config.name
        self.base_path = Path(config.base_path)
        self.max_load_retries = max_load_retries
        self._lock = threading.RLock()
        self.loaded: dict[int, Servable] = {}
        self.states: dict[int, VersionState] = {}
        self.update_config(config)

    def update_config(self, config: Any) -> None:
        policy = config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        with self._lock:
            if which == "all":
                self.policy: tuple[str, Any] = ("all", None)
            elif which == "specific":
                self.policy = ("specific", {int(v) for v in policy.specific.versions})
            else:
                n = policy.latest.num_versions if which == "latest" else 1
                self.policy = ("latest", max(1, int(n)))
            self.labels = {str(k): int(v) for k, v in config.version_labels.items()}

    def on_disk(self) -> dict[int, Path]:
        """Numeric version folders directly under the base path (others are ignored)."""
        found: dict[int, Path] = {}
        try:
            entries = list(os.scandir(self.base_path))
        except OSError:
            return found
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir() and int(entry.name) <= INT64_MAX:
                found[int(entry.name)] = Path(entry.path)
        return found

    def aspired(self, on_disk: dict[int, Path]) -> set[int]:
        kind, arg = self.policy
        if kind == "all":
            return set(on_disk)
        if kind == "specific":
            return set(on_disk) & arg
        return set(sorted(on_disk, reverse=True)[:arg])

    def poll(self, warmup: Any = None) -> None:
        """Load aspired versions first, then unload the others: no gap in availability."""
        on_disk = self.on_disk()
        aspired = self.aspired(on_disk)
        for version in sorted(aspired - set(self.loaded), reverse=True):
            state = self.states.get(version)
            if state is not None and state.state == "END" and state.failures >= self.max_load_retries:
                continue
            self._load(version, on_disk[version], warmup)
        # availability preserving: old versions go only once an aspired one serves (or none is aspired),
        # so a newer version that fails to load leaves the previous one serving
        if not aspired or aspired & set(self.loaded):
            for version in sorted(set(self.loaded) - aspired):
                self._unload(version)

    def _load(self, version: int, path: Path, warmup: Any) -> None:
        with self._lock:
            previous = self.states.get(version)
            self.states[version] = VersionState("LOADING", failures=previous.failures if previous else 0)
        try:
            servable = load_servable(self.name, version, path)
            if warmup is not None:
                warmup(servable)
        except Exception as err:  # any load failure is reported in the version status
            code = err.code if isinstance(err, ServingError) else "UNKNOWN"
            message = err.message if isinstance(err, ServingError) else f"{type(err).__name__}: {err}"
            logger.warning("model %s version %d failed to load: %s", self.name, version, message)
            with self._lock:
                failures = self.states[version].failures + 1
                self.states[version] = VersionState("END", code, message, failures)
            return
        with self._lock:
            self.loaded[version] = servable
            self.states[version] = VersionState("AVAILABLE")
        logger.info("model %s version %d AVAILABLE", self.name, version)

    def _unload(self, version: int) -> None:
        with self._lock:
            self.states[version] = VersionState("UNLOADING")
            self.loaded.pop(version, None)
            self.states[version] = VersionState("END")
        logger.info("model %s version %d unloaded", self.name, version)

    def unload_all(self) -> None:
        for version in list(self.loaded):
            self._unload(version)

    def resolve_label(self, label: str) -> int:
        with self._lock:
            if label not in self.labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            return self.labels[label]

    def servable(self, version: int | None) -> Servable | None:
        with self._lock:
            if version is None:
                return self.loaded[max(self.loaded)] if self.loaded else None
            return self.loaded.get(version)


# -------------------------------------------------------------------- server core


def _spec_text(name: str, version: int | None) -> str:
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


def parse_model_config(text: str, source: str = "model config") -> Any:
    """Parse a text-format `ModelServerConfig`."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise InputError(source, f"not a text ModelServerConfig ({err})") from err
    return config


def single_model_config(name: str, base_path: str | os.PathLike) -> Any:
    """The config of `--model_name NAME --model_base_path BASE` (latest version)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = os.fspath(base_path)
    model.model_platform = "tensorflow"
    return config


class ServerCore:
    """Models by name, their versions, and predict/status/metadata with TF Serving's semantics."""

    def __init__(
        self,
        config: Any,
        *,
        enable_batching: bool = True,
        max_batch_size: int = 32,
        batch_timeout_s: float = 0.002,
        max_concurrent_requests: int = 256,
        memory_budget_bytes: int = 2 << 30,
        memory_wait_s: float = 2.0,
    ):
        self._lock = threading.RLock()
        self.models: dict[str, ModelManager] = {}
        self.batcher = Batcher(max_batch_size, batch_timeout_s) if enable_batching else None
        self._slots = threading.BoundedSemaphore(max_concurrent_requests)
        self.max_concurrent_requests = max_concurrent_requests
        self.budget = MemoryBudget(memory_budget_bytes, memory_wait_s)
        self.reload_config(config)

    # -- configuration
    def reload_config(self, config: Any) -> None:
        """Apply a `ModelServerConfig`: add, update and remove models (new ones poll at once)."""
        which = config.WhichOneof("config")
        if which != "model_config_list":
            raise ServingError("INVALID_ARGUMENT", "ServerCore only supports model_config_list")
        seen: set[str] = set()
        for model in config.model_config_list.config:
            if model.name in seen:
                raise ServingError("INVALID_ARGUMENT", f"Illegal to list model {model.name} multiple times in config list")
            if not VALID_NAME.fullmatch(model.name or ""):
                raise ServingError("INVALID_ARGUMENT", f"Illegal model name {model.name!r}: no '/', ':' or spaces")
            if not model.base_path:
                raise ServingError("INVALID_ARGUMENT", f"Model {model.name} has no base_path")
            if model.model_platform not in ("", "tensorflow"):
                raise ServingError("INVALID_ARGUMENT", f"Model {model.name} has unsupported platform {model.model_platform}")
            seen.add(model.name)
        with self._lock:
            for name in list(self.models):
                if name not in seen:
                    self.models.pop(name).unload_all()
            for model in config.model_config_list.config:
                manager = self.models.get(model.name)
                if manager is not None and manager.base_path == Path(model.base_path):
                    manager.update_config(model)
                else:
                    if manager is not None:
                        manager.unload_all()
                    self.models[model.name] = ModelManager(model)
            self.config = config
        self.poll()

    def poll(self) -> None:
        with self._lock:
            managers = list(self.models.values())
        for manager in managers:
            manager.poll(self._warmup)

    def _warmup(self, servable: Servable) -> None:
        """Replay `assets.extra/tf_serving_warmup_requests` (PredictionLog records) before serving."""
        path = servable.path / WARMUP_PATH
        if not path.is_file():
            return
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        for i, record in enumerate(tf.data.TFRecordDataset(str(path))):
            if i >= MAX_WARMUP_RECORDS:
                break
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ServingError("UNIMPLEMENTED", "Unsupported log_type for warmup: only predict_log is replayed")
            request = log.predict_log.request
            sig = self.signature(servable, request.model_spec.signature_name, rest=False)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            _check_inputs(sig, inputs)
            run_signature(sig, inputs)

    # -- lookup
    def manager(self, name: str) -> ModelManager | None:
        with self._lock:
            return self.models.get(name)

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """`GetServableHandle`: the latest, a specific or a labelled version."""
        manager = self.manager(name)
        if label is not None:
            if manager is None:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = manager.resolve_label(label)
        servable = manager.servable(version) if manager is not None else None
        if servable is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: {_spec_text(name, version)}")
        return servable

    @staticmethod
    def signature(servable: Servable, name: str, rest: bool) -> Signature:
        key = name or DEFAULT_SIGNATURE
        sig = servable.signatures.get(key)
        if sig is None:
            if rest:
                raise ServingError("INVALID_ARGUMENT", f'Serving signature name: "{key}" not found in signature def')
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
        return sig

    # -- API
    def acquire(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise ServingError(
                "RESOURCE_EXHAUSTED",
                f"Too many concurrent requests (limit {self.max_concurrent_requests}); retry later",
            )

    def release(self) -> None:
        self._slots.release()

    def predict(
        self,
        servable: Servable,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: Iterable[str] = (),
    ) -> tuple[Signature, dict[str, np.ndarray]]:
        """`RunPredict`: signature, input checks, the (batched) call and the output filter."""
        sig = self.signature(servable, signature_name, rest=False)
        if sig.method_name != PREDICT_METHOD:
            raise ServingError(
                "INTERNAL",
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
                f"{REGRESS_METHOD}}}. Was: {sig.method_name}",
            )
        _check_inputs(sig, inputs)
        wanted = list(output_filter)
        seen: set[str] = set()
        for alias in wanted:
            if alias not in sig.outputs:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(sig.outputs))}}}.",
                )
            if alias in seen:
                raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        outputs = self.batcher.run(servable, sig, inputs) if self.batcher else run_signature(sig, inputs)
        if wanted:
            outputs = {k: outputs[k] for k in wanted}
        return sig, outputs

    def classify_or_regress(self, servable: Servable, signature_name: str, method: str) -> None:
        """Classify/Regress: TF Serving's signature checks; Keras exports only have predict signatures."""
        key = signature_name or DEFAULT_SIGNATURE
        sig = servable.signatures.get(key)
        if sig is None:
            raise ServingError("INVALID_ARGUMENT", f"No signature was found with the name: {key}")
        expected = CLASSIFY_METHOD if method == "classify" else REGRESS_METHOD
        kind = "classification" if method == "classify" else "regression"
        if sig.method_name != expected:
            raise ServingError(
                "INVALID_ARGUMENT", f"Expected {kind} signature method_name to be {expected}. Was: {sig.method_name}"
            )
        raise ServingError("UNIMPLEMENTED", f"{kind} signatures over tf.Example are not served by geolabel's server")

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionState]]:
        """`GetModelStatus`: (version, state) pairs, newest first. Like TF Serving's
        `GetModelStatusWithModelSpec`, a version label in the request is not looked at: every
        version is listed."""
        manager = self.manager(name)
        states = dict(manager.states) if manager is not None else {}
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)


# --------------------------------------------------------------------------- REST


def status_json(states: list[tuple[int, VersionState]]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": state.state,
                "status": {"error_code": state.error_code, "error_message": state.error_message},
            }
            for version, state in states
        ]
    }


def metadata_json(servable: Servable) -> dict[str, Any]:
    from google.protobuf import json_format

    sig_map = json_format.MessageToDict(
        servable.signature_def_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": sig_map},
    }


MAX_HEADER_BYTES = 64 << 10  # request line + headers of one request
RECV_BYTES = 1 << 16  # one socket read
SERVER_NAME = "geolabel-serving"
BODY_PIECE = 1 << 20  # a REST body is read (and leased) in pieces of this size
# CORS headers of every /v1 answer and of preflights (TF Serving's AddCORSHeaders)
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
ORIGIN_RE = re.compile(r"https?://")


class _BodyTimeout(Exception):
    def __init__(self, received: int, expected: int | None):
        super().__init__(received, expected)
        self.received = received
        self.expected = expected


class _Answered(Exception):
    """The answer has been sent already (a deadline passed while the model ran)."""


class _ClientGone(Exception):
    pass


ALLOWED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


def _in_thread(fn: Any, *args: Any) -> futures.Future:
    """`fn(*args)` in a thread of its own (it ends with the call, so idle servers hold no extra threads)."""
    future: futures.Future = futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001  (re-raised by future.result in the caller)
            future.set_exception(err)

    threading.Thread(target=run, name="geolabel-predict", daemon=True).start()
    return future


class RestHandler(socketserver.BaseRequestHandler):
    """TF Serving's REST API (`http_rest_api_handler.cc`) over h11, with deadlines and bounded request memory.

    h11 (the sans-I/O HTTP/1.1 state machine under httpcore and uvicorn) parses request lines,
    headers, Content-Length and chunked bodies and keep-alive; this class owns the socket and its
    deadlines. Per connection: the first request's header must arrive within
    `header_timeout_s` of the connection, a keep-alive connection may stay idle
    `idle_timeout_s` between requests (then its next header has `header_timeout_s`), and a
    body must arrive within `body_timeout_s` of its header (else 408 and the connection is
    closed). Headers are limited to `MAX_HEADER_BYTES` (431), bodies to `max_body_bytes` (429,
    TF Serving's JSON error). A request refused before its body is read is answered at once and
    the connection is closed after a short lingering drain (`linger_s`), so the client reads the
    answer instead of a reset.
    """

    core: ServerCore
    max_body_bytes: int
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    predict_timeout_s: float | None = 30.0
    linger_s: float = 2.0

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.deadline = time.monotonic() + self.header_timeout_s
        self.close_connection = False
        self.method = ""
        self.headers: dict[str, str] = {}

    @property
    def body_limit(self) -> int:
        """The largest body accepted: `max_body_bytes`, and what the memory budget can ever parse."""
        return min(self.max_body_bytes, self.core.budget.limit_bytes // JSON_BYTES_PER_BODY_BYTE)

    # -- connection
    def handle(self) -> None:
        first = True
        while not self.close_connection:
            try:
                if not first and not self._await_next_request():
                    return
                first = False
                self._handle_one()
            except (TimeoutError, OSError) as err:  # a deadline passed, or the client went away
                logger.debug("rest %s: connection closed (%s)", self.client_address, err)
                return
            if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
                self.http.start_next_cycle()
            else:
                return

    def _await_next_request(self) -> bool:
        """Wait up to `idle_timeout_s` for the next request to start; then its header has `header_timeout_s`."""
        if not self.http.trailing_data[0]:
            self.sock.settimeout(self.idle_timeout_s)
            try:
                data = self.sock.recv(RECV_BYTES)
            except (TimeoutError, OSError):
                return False
            if not data:
                return False
            self.http.receive_data(data)
        self.deadline = time.monotonic() + self.header_timeout_s
        return True

    def _next_event(self) -> Any:
        """The next h11 event, reading the socket until `self.deadline` (TimeoutError after it)."""
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(remaining)
            self.http.receive_data(self.sock.recv(RECV_BYTES))

    def _handle_one(self) -> None:
        try:
            request = self._next_event()
        except h11.RemoteProtocolError as err:  # not HTTP, a malformed header, or one too large
            if err.error_status_hint == 431:
                message = f"Request header too large (limit {MAX_HEADER_BYTES} bytes)"
            else:
                message = f"Bad request: {err}"
            self._refuse(err.error_status_hint, message)
            return
        if not isinstance(request, h11.Request):  # the client closed the connection
            self.close_connection = True
            return
        self.method = request.method.decode("ascii", "replace").upper()
        self.headers = {}
        for name, value in request.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        if self.method not in ALLOWED_METHODS:
            self._refuse(501, f"Unsupported method ({self.method!r})")
            return
        self._handle(urllib.parse.urlsplit(request.target.decode("latin-1")).path)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot be read (TF Serving's JSON error) and close after a drain."""
        self.close_connection = True
        try:
            self._reply(status, jt.error_json(message))
        except (OSError, h11.LocalProtocolError):
            return
        self._linger()

    # -- body
    def _read_body(self, lease: Lease) -> bytes:
        """The request body, leased piece by piece as it arrives (a slow client holds only what it sent)."""
        self.deadline = time.monotonic() + self.body_timeout_s
        limit = self.body_limit
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        # h11 has checked the framing headers: a repeated Content-Length is one value repeated
        length = None if chunked else int(self.headers.get("content-length", "0").split(",")[-1])
        if length is not None and length > limit:
            raise ServingError("RESOURCE_EXHAUSTED", f"Request body too large: {length} bytes (limit {limit} bytes)")
        if self.http.they_are_waiting_for_100_continue:  # only once the body is known to be accepted
            self.sock.sendall(self.http.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        body = bytearray(length or 0)  # a known length fills one buffer: no second copy of a large body
        received = leased = 0
        try:
            while True:
                if received + RECV_BYTES > leased:
                    waited = time.monotonic()
                    leased = received + (min(BODY_PIECE, length - received) if length is not None else BODY_PIECE)
                    lease.resize(max(leased, received + RECV_BYTES), "This request's body")
                    self.deadline += time.monotonic() - waited  # the server's wait is not the client's delay
                event = self._next_event()
                if isinstance(event, h11.EndOfMessage):
                    break
                if not isinstance(event, h11.Data):  # closed mid-body
                    raise _ClientGone()
                if received + len(event.data) > limit:
                    raise ServingError("RESOURCE_EXHAUSTED", f"Request body too large: more than {limit} bytes")
                if length is None:
                    chunks.append(event.data)
                else:
                    body[received:received + len(event.data)] = event.data
                received += len(event.data)
        except TimeoutError as err:
            raise _BodyTimeout(received, length) from err
        except h11.RemoteProtocolError as err:
            if length is not None and received < length:  # the client closed before its Content-Length
                raise _ClientGone() from err
            raise ServingError("INVALID_ARGUMENT", f"Malformed request body: {err}") from err
        if length is not None:
            return bytes(body) if length < BODY_PIECE else body  # small bodies as bytes; large ones uncopied
        return b"".join(chunks)

    def _linger(self) -> None:
        """Close after an early answer: stop sending, then drain what the client still sends, briefly.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the answer before the client reads it; draining (up to `linger_s` seconds and
        4 x max_body_bytes) lets the client finish sending and read the answer.
        """
        self.close_connection = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + self.linger_s
        drained = 0
        try:
            while drained < 4 * self.max_body_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.sock.settimeout(remaining)
                got = self.sock.recv(RECV_BYTES)
                if not got:
                    break
                drained += len(got)
        except (TimeoutError, OSError):
            pass

    def _inflated(self, body: bytes, lease: Lease) -> bytes:
        """The body as TF Serving's handlers read it: inflated when its Content-Encoding names gzip
        (`EvHTTPRequest::NeedUncompressGzipContent`), and empty when it does not inflate (as
        there: the JSON error then says the document is empty). Inflated piece by piece under
        the memory budget and `body_limit`, so a small compressed bomb is refused, not expanded."""
        if "gzip" not in self.headers.get("content-encoding", "").lower() or not body:
            return body
        limit = self.body_limit
        inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # gzip or zlib header, as zlib's inflate detects
        out, pending = bytearray(), body
        try:
            while not inflater.eof:
                lease.resize(len(body) + len(out) + BODY_PIECE, "This request's inflated body")
                piece = inflater.decompress(pending, BODY_PIECE)
                if not piece and not inflater.unconsumed_tail:  # the input ended before the stream did
                    break
                out += piece
                if len(out) > limit:
                    raise ServingError("RESOURCE_EXHAUSTED", f"Request body too large: more than {limit} bytes once inflated")
                pending = inflater.unconsumed_tail
        except zlib.error:
            return b""
        return out if inflater.eof else b""  # bytearray: parsed as it is, no second copy

    # -- dispatch
    def _handle(self, path: str) -> None:
        method = self.method
        lease = self.core.budget.lease()
        try:
            try:
                body = self._inflated(self._read_body(lease), lease)
            except ServingError as err:
                self._refuse(err.http_status, err.message)
                return
            except _BodyTimeout as err:
                expected = f" of {err.expected}" if err.expected is not None else ""
                self.close_connection = True
                self._reply(
                    408,
                    jt.error_json(
                        f"Timed out reading the request body: {err.received}{expected} bytes received in "
                        f"{self.body_timeout_s:g} s"
                    ),
                )
                return
            except _ClientGone:
                self.close_connection = True
                return
            if not V1_RE.fullmatch(path):
                self._reply(404, jt.error_json(f"Not found: {method} {path}"), cors=False)
                return
            if method == "OPTIONS":
                self._preflight()
                return
            try:
                payload = self._dispatch(method, path, body, lease)
            except _Answered:
                return
            except ServingError as err:
                self._reply(err.http_status, jt.error_json(err.message))
                return
            except jt.JsonTensorError as err:
                self._reply(HTTP_STATUS.get(err.code, 500), jt.error_json(str(err)))
                return
            except Exception as err:  # an unexpected failure is an INTERNAL error, not a dropped connection
                logger.exception("REST request %s %s failed", method, path)
                self._reply(500, jt.error_json(f"{type(err).__name__}: {err}"))
                return
            del body
            self._reply(200, payload)
        finally:
            lease.release()

    def _preflight(self) -> None:
        """A CORS preflight (TF Serving's `http_server.cc`): OK with the CORS headers when it names an http(s) Origin."""
        if ORIGIN_RE.search(self.headers.get("origin", "")):
            self._reply(200, b"")
            return
        err = ServingError("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")
        self._reply(err.http_status, jt.error_json(err.message))

    def _reply(self, status: int, payload: bytes, cors: bool = True) -> None:
        # a client that never reads cannot hold the thread: the answer must go out at >= 1 MB/s after body_timeout_s
        self.sock.settimeout(max(self.body_timeout_s, 1.0) + len(payload) / 1e6)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), ("Server", SERVER_NAME)]
        if cors:
            headers += CORS_HEADERS
        if self.close_connection:
            headers.append(("Connection", "close"))
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        self.sock.sendall(self.http.send(h11.Response(status_code=status, headers=headers, reason=reason)))
        if self.method != "HEAD":  # h11 frames a HEAD answer without its body
            for part in self.http.send_with_data_passthrough(h11.Data(data=payload)):
                self.sock.sendall(part)
        self.sock.sendall(self.http.send(h11.EndOfMessage()))

    def _dispatch(self, method: str, path: str, body: bytes, lease: Lease) -> bytes:
        malformed = ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        match = None
        if method == "POST":
            match = PREDICT_RE.fullmatch(path)
        elif method == "GET":
            match = STATUS_RE.fullmatch(path)
        if match is None:
            raise malformed
        name = urllib.parse.unquote(match.group(1) or "")
        version_text, label = match.group(2), match.group(3)
        version = None
        if version_text:
            version = int(version_text)
            if version > INT64_MAX:
                raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: {version_text} to numeric.")
        if label is not None:
            label = urllib.parse.unquote(label)
        if method == "POST":
            verb = match.group(4)
            if verb not in ("predict", "classify", "regress"):
                raise malformed
            self.core.acquire()
            try:
                if verb == "predict":
                    return self._predict(name, version, label, body, lease)
                return self._classify_regress(name, version, label, body, verb, lease)
            finally:
                self.core.release()
        if not name:
            raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
        if match.group(4) and match.group(4) == "metadata":
            servable = self.core.servable(name, version, label)
            return _dumps(metadata_json(servable))
        return _dumps(status_json(self.core.status(name, version)))

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes, lease: Lease) -> bytes:
        lease.resize(JSON_BYTES_PER_BODY_BYTE * len(body), "Parsing this request's JSON")
        doc = jt.parse_json(body)
        signature_name = jt.signature_name_of(doc)
        servable = self.core.servable(name, version, label)
        sig = self.core.signature(servable, signature_name, rest=True)
        if not sig.inputs:
            raise ServingError("INVALID_ARGUMENT", f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        inputs, fmt = jt.predict_request_arrays(doc, sig.input_dtypes)
        del doc  # the parsed JSON (the largest part of a request) goes before the model runs
        lease.resize(len(body) + TENSOR_COPIES * tensor_bytes(inputs), "This request's tensors")
        _, outputs = self._within_deadline(self.core.predict, servable, signature_name, inputs)
        in_bytes = tensor_bytes(inputs)
        del inputs
        lease.resize(len(body) + in_bytes + response_json_bytes(outputs), "This request's response")
        return jt.outputs_to_json(outputs, fmt)

    def _within_deadline(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)`, or TF Serving's 504 once `predict_timeout_s` (its `--rest_api_timeout_in_ms`)
        has passed. A model call cannot be interrupted: after the 504 this thread waits for it, so
        its memory lease and concurrency slot stay taken until the model returns."""
        if not self.predict_timeout_s:  # no deadline: no thread of its own
            return fn(*args)
        run = _in_thread(fn, *args)
        try:
            return run.result(timeout=self.predict_timeout_s)
        except futures.TimeoutError:
            self.close_connection = True
            self._reply(504, jt.error_json(
                f"Deadline exceeded: the model did not answer within {self.predict_timeout_s * 1000:g} ms"))
            futures.wait([run])
            raise _Answered() from None

    def _classify_regress(
        self, name: str, version: int | None, label: str | None, body: bytes, verb: str, lease: Lease
    ) -> bytes:
        lease.resize(JSON_BYTES_PER_BODY_BYTE * len(body), "Parsing this request's JSON")
        doc = jt.parse_json(body)
        signature_name = jt.signature_name_of(doc)
        if "context" in doc and not isinstance(doc["context"], dict):
            raise ServingError(
                "INVALID_ARGUMENT", f"Example must be JSON object but got JSON {jt.json_type(doc['context'])}"
            )
        if "examples" not in doc:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"JSON Value: {jt.value_to_string(doc)} When method is classify, key 'examples' is expected and "
                "was not found",
            )
        if not isinstance(doc["examples"], list):
            raise ServingError(
                "INVALID_ARGUMENT", f"JSON Value: {jt.value_to_string(doc)} Expecting 'examples' value to be an list/array"
            )
        if not doc["examples"]:
            raise ServingError("INVALID_ARGUMENT", f"JSON Value: {jt.value_to_string(doc)} 'examples' value is an empty array")
        servable = self.core.servable(name, version, label)
        self.core.classify_or_regress(servable, signature_name, verb)
        raise ServingError("INTERNAL", "unreachable")


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj, indent=2).encode("utf-8")


class _RestServer(socketserver.ThreadingTCPServer):
    """One thread per connection, at most `max_connections` of them (more are answered 503 and closed)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int = 512):
        super().__init__(address, handler)
        self.max_connections = int(max_connections)
        self._conn_lock = threading.Lock()
        self.connections = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._conn_lock:
                self.connections -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self.connections -= 1

    def _refuse(self, request: Any) -> None:
        payload = jt.error_json(f"Too many open connections (limit {self.max_connections}); retry later")
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        try:
            request.setblocking(False)
            request.send(head + payload)
        except OSError:
            pass
        self.shutdown_request(request)


# --------------------------------------------------------------------------- gRPC


def _grpc_abort(context: Any, err: ServingError) -> None:
    import grpc

    context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN), err.message)


def _spec_args(spec: Any) -> tuple[str, int | None, str | None]:
    which = spec.WhichOneof("version_choice")
    version = int(spec.version.value) if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    return spec.name, version, label


def make_grpc_servicers(core: ServerCore) -> tuple[Any, Any]:
    """PredictionService and ModelService servicers over `core`."""
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    from tensorflow.core.protobuf import error_codes_pb2

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802  (gRPC method names)
            try:
                core.acquire()
            except ServingError as err:
                return _grpc_abort(context, err)
            lease = core.budget.lease()
            try:
                message_bytes = request.ByteSize()
                lease.resize((1 + TENSOR_COPIES) * message_bytes, "This request's tensors")
                servable = core.servable(*_spec_args(request.model_spec))
                try:
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                except (TypeError, ValueError) as err:
                    raise ServingError("INVALID_ARGUMENT", f"Malformed TensorProto in request: {err}") from err
                sig, outputs = core.predict(
                    servable, request.model_spec.signature_name, inputs, request.output_filter
                )
                del inputs
                lease.resize(message_bytes + 3 * tensor_bytes(outputs), "This request's response")
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = sig.name
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
                return response
            except ServingError as err:
                return _grpc_abort(context, err)
            finally:
                lease.release()
                core.release()

        def Classify(self, request: Any, context: Any) -> Any:  # noqa: N802
            return self._classify_regress(request, context, "classify")

        def Regress(self, request: Any, context: Any) -> Any:  # noqa: N802
            return self._classify_regress(request, context, "regress")

        def _classify_regress(self, request: Any, context: Any, verb: str) -> Any:
            try:
                servable = core.servable(*_spec_args(request.model_spec))
                core.classify_or_regress(servable, request.model_spec.signature_name, verb)
            except ServingError as err:
                return _grpc_abort(context, err)

        def MultiInference(self, request: Any, context: Any) -> Any:  # noqa: N802
            return _grpc_abort(context, ServingError("UNIMPLEMENTED", "MultiInference is not served"))

        def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                if not request.metadata_field:
                    raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
                for field_name in request.metadata_field:
                    if field_name != "signature_def":
                        raise ServingError("INVALID_ARGUMENT", f"Metadata field {field_name} is not supported")
                if not request.HasField("model_spec"):
                    raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
                servable = core.servable(*_spec_args(request.model_spec))
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.metadata["signature_def"].Pack(servable.signature_def_map)
                return response
            except ServingError as err:
                return _grpc_abort(context, err)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                if not request.HasField("model_spec"):
                    raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
                states = core.status(*_spec_args(request.model_spec)[:2])
                response = get_model_status_pb2.GetModelStatusResponse()
                for version, state in states:
                    entry = response.model_version_status.add()
                    entry.version = version
                    entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
                    entry.status.error_code = error_codes_pb2.Code.Value(state.error_code)
                    entry.status.error_message = state.error_message
                return response
            except ServingError as err:
                return _grpc_abort(context, err)

        def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
            response = model_management_pb2.ReloadConfigResponse()
            try:
                core.reload_config(request.config)
                response.status.error_code = 0
            except ServingError as err:
                response.status.error_code = error_codes_pb2.Code.Value(err.code)
                response.status.error_message = err.message
            return response

    return PredictionService(), ModelService()


# ------------------------------------------------------------------------- server


class ModelServer:
    """REST + gRPC servers over one `ServerCore`, with file-system and config-file polling.

    Args:
        config: a `ModelServerConfig`; or give `model_name` and `model_base_path`.
        model_config_file: path of a text `ModelServerConfig` (re-read every
            `config_poll_seconds` when that is > 0).
        rest_api_port, port: REST and gRPC ports (0 = any free port; gRPC None = off).
        host: address to bind (`0.0.0.0` in containers, `127.0.0.1` for local use).
        poll_seconds: file-system poll interval for new or removed versions (<= 0: never).
        max_body_bytes: largest accepted request (REST body or gRPC message).
        max_concurrent_requests: predict/classify/regress calls at once (more: 429).
        header_timeout_s: a request line and headers must arrive within this (else the
            connection is closed); for a new connection it counts from the accept.
        body_timeout_s: a REST body must arrive within this after its header (else 408, closed).
        idle_timeout_s: a keep-alive connection with no new request is closed after this.
        predict_timeout_s: a REST prediction not answered within this is answered 504 (TF
            Serving's `--rest_api_timeout_in_ms`); None: no limit.
        max_connections: REST connections open at once (more are answered 503 and closed).
        memory_budget_bytes: bound on the memory of requests in flight (`MemoryBudget`);
            a REST body is also limited to memory_budget_bytes / JSON_BYTES_PER_BODY_BYTE.
        memory_wait_s: how long a request waits for budget before its 429.
    """

    def __init__(
        self,
        *,
        config: Any = None,
        model_name: str | None = None,
        model_base_path: str | os.PathLike | None = None,
        model_config_file: str | os.PathLike | None = None,
        rest_api_port: int | None = 8501,
        port: int | None = 8500,
        host: str = "0.0.0.0",
        poll_seconds: float = 1.0,
        config_poll_seconds: float = 0.0,
        enable_batching: bool = True,
        max_batch_size: int = 32,
        batch_timeout_s: float = 0.002,
        max_body_bytes: int = 64 << 20,
        max_concurrent_requests: int = 256,
        rest_threads: int = 64,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        predict_timeout_s: float | None = 30.0,
        max_connections: int = 512,
        memory_budget_bytes: int = 2 << 30,
        memory_wait_s: float = 2.0,
    ):
        self.model_config_file = Path(model_config_file) if model_config_file else None
        if config is None:
            if self.model_config_file is not None:
                if not self.model_config_file.is_file():
                    raise InputError(self.model_config_file, "model config file not found")
                config = parse_model_config(self.model_config_file.read_text(), os.fspath(self.model_config_file))
            elif model_name and model_base_path:
                if not Path(model_base_path).is_dir():
                    raise InputError(model_base_path, "model base path is not a folder")
                config = single_model_config(model_name, Path(model_base_path).resolve())
            else:
                raise InputError("--model_base_path", "give --model_name and --model_base_path, or --model_config_file")
        self.host = host
        self.poll_seconds = poll_seconds
        self.config_poll_seconds = config_poll_seconds
        self.max_body_bytes = int(max_body_bytes)
        self.rest_threads = rest_threads
        self.header_timeout_s = float(header_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self.predict_timeout_s = predict_timeout_s
        self.max_connections = int(max_connections)
        try:
            self.core = ServerCore(
                config,
                enable_batching=enable_batching,
                max_batch_size=max_batch_size,
                batch_timeout_s=batch_timeout_s,
                max_concurrent_requests=max_concurrent_requests,
                memory_budget_bytes=memory_budget_bytes,
                memory_wait_s=memory_wait_s,
            )
        except ServingError as err:
            raise InputError(model_config_file or "model config", err.message) from err
        self._rest_port_wanted = rest_api_port
        self._grpc_port_wanted = port
        self.rest_port: int | None = None
        self.grpc_port: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: _RestServer | None = None
        self._grpc: Any = None
        self._config_mtime = self.model_config_file.stat().st_mtime if self.model_config_file else None

    def start(self) -> ModelServer:
        """Bind the ports and start serving (non-blocking)."""
        if self._rest_port_wanted is not None:
            handler = type(
                "BoundRestHandler",
                (RestHandler,),
                {
                    "core": self.core,
                    "max_body_bytes": self.max_body_bytes,
                    "header_timeout_s": self.header_timeout_s,
                    "body_timeout_s": self.body_timeout_s,
                    "idle_timeout_s": self.idle_timeout_s,
                    "predict_timeout_s": self.predict_timeout_s,
                },
            )
            self._http = _RestServer((self.host, int(self._rest_port_wanted)), handler, self.max_connections)
            self.rest_port = self._http.server_address[1]
            self._spawn(self._http.serve_forever, "rest")
        if self._grpc_port_wanted is not None:
            import grpc
            from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

            # a message must fit the memory budget with its tensors ((1 + TENSOR_COPIES) x its size)
            max_message = min(self.max_body_bytes, self.core.budget.limit_bytes // (1 + TENSOR_COPIES))
            options = [
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", -1),
            ]
            self._grpc = grpc.server(
                futures.ThreadPoolExecutor(max_workers=self.rest_threads),
                options=options,
                maximum_concurrent_rpcs=self.core.max_concurrent_requests,
            )
            predict, models = make_grpc_servicers(self.core)
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predict, self._grpc)
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, self._grpc)
            bound = self._grpc.add_insecure_port(f"{self.host}:{int(self._grpc_port_wanted)}")
            if not bound:
                raise InputError("--port", f"cannot bind gRPC port {self._grpc_port_wanted}")
            self.grpc_port = bound
            self._grpc.start()
        if self.poll_seconds > 0 or self.config_poll_seconds > 0:
            self._spawn(self._poll_loop, "poll")
        return self

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"geolabel-serving-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_loop(self) -> None:
        last_fs = last_cfg = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            if self.config_poll_seconds > 0 and now - last_cfg >= self.config_poll_seconds:
                last_cfg = now
                self._reload_config_file()
            if self.poll_seconds > 0 and now - last_fs >= self.poll_seconds:
                last_fs = now
                try:
                    self.core.poll()
                except Exception:  # a polling failure must never stop the server
                    logger.exception("file-system poll failed")

    def _reload_config_file(self) -> None:
        assert self.model_config_file is not None
        try:
            mtime = self.model_config_file.stat().st_mtime
            if mtime == self._config_mtime:
                return
            self._config_mtime = mtime
            self.core.reload_config(parse_model_config(self.model_config_file.read_text()))
        except (OSError, InputError, ServingError) as err:
            logger.warning("model config %s not reloaded: %s", self.model_config_file, err)

    def wait_available(self, name: str | None = None, timeout: float = 60.0) -> None:
        """Block until every model (or `name`) has an AVAILABLE version."""
        deadline = time.monotonic() + timeout
        while True:
            names = [name] if name else list(self.core.models)
            if all(self.core.manager(n) is not None and self.core.manager(n).loaded for n in names):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"models {names} not available after {timeout} s")
            time.sleep(0.05)

    @property
    def rest_connections(self) -> int:
        """REST connections open now (each holds one thread)."""
        return self._http.connections if self._http is not None else 0

    def serve_forever(self) -> None:
        """Block until interrupted."""
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()
            self._grpc = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
