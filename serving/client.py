"""REST client for TF Serving (real or geolabel's embedded server), usable as a `predict_fn`.

`ServingClient("http://HOST:8501/v1/models/NAME")(batch)` sends a float32 batch of
windows (B, H, W, C) in concurrent requests of a few rows each and returns the
probabilities (B, H, W, K), so `geolabel.predict.predict_raster` tiles, blends and
writes the same way whether the model runs in-process or behind an endpoint.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from geolabel.data.http import HttpClient
from geolabel.errors import FetchError, InputError
from geolabel.serving.json_tensor import array_json

ENDPOINT_RE = re.compile(r"/v1/models/[^/:]+(?:/versions/\d+|/labels/[^/:]+)?")
RETRY_STATUS = frozenset({429, 502, 503, 504})  # TF Serving's "busy"/"restarting" answers; a 500 is the model's error


class ServingClient:
    """Call a TF Serving REST endpoint.

    Args:
        endpoint: `http(s)://HOST:PORT/v1/models/NAME[/versions/N | /labels/L]`
            (a trailing `:predict` is accepted).
        signature_name: signature for float batches (default `serving_default`).
        output: output returned by `__call__` (`probabilities`).
        concurrency: requests in flight at once.
        rows_per_request: windows per request (small requests batch on the server).
        encoding: `json` (float values) or `png` (uint8 windows as `{"b64"}` PNGs to the
            `serving_bytes` signature: ~10x smaller requests; values are rounded to uint8).
        timeout: seconds to connect and between bytes read; retries: attempts after the first
            on connection errors, cut bodies and 429/502/503/504 (`geolabel.data.http.HttpClient`).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        signature_name: str = "serving_default",
        output: str = "probabilities",
        concurrency: int = 4,
        rows_per_request: int = 2,
        encoding: str = "json",
        timeout: float = 120.0,
        retries: int = 2,
    ):
        url = endpoint.strip()
        if url.endswith(":predict"):
            url = url[: -len(":predict")]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(endpoint, "endpoint must be an http(s) URL like http://HOST:8501/v1/models/NAME")
        if not ENDPOINT_RE.fullmatch(parts.path.rstrip("/")):
            raise InputError(endpoint, "endpoint path must be /v1/models/NAME[/versions/N|/labels/LABEL]")
        if encoding not in ("json", "png"):
            raise InputError("encoding", f"must be 'json' or 'png', got {encoding!r}")
        self.endpoint = url.rstrip("/")
        self.signature_name = signature_name
        self.output = output
        self.concurrency = max(1, int(concurrency))
        self.rows_per_request = max(1, int(rows_per_request))
        self.encoding = encoding
        self.http = HttpClient(
            connections=self.concurrency, retries=max(0, int(retries)), backoff=0.1, timeout=timeout, retry_status=RETRY_STATUS
        )
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="geolabel-client")

    # -- what predict_raster asks a predict_fn
    @property
    def stride(self) -> int:
        """The served network's stride (`serving_info`), so that windows are cut as local predict
        cuts them; 1 for exports without it (their signatures pad H and W themselves)."""
        if not hasattr(self, "_stride"):
            self._stride = 1
            if "serving_info" in self.signatures:
                self._stride = int(self.predict({"batch": np.zeros(1, np.int32)}, "serving_info")["stride"][0])
        return self._stride

    @property
    def signatures(self) -> dict[str, Any]:
        """The served signature defs by name (empty when the metadata cannot be read)."""
        if not hasattr(self, "_signatures"):
            try:
                self._signatures = dict(self.metadata()["metadata"]["signature_def"]["signature_def"])
            except (InputError, FetchError, KeyError, TypeError, ValueError):
                self._signatures = {}
        return self._signatures

    @property
    def channels(self) -> int | None:
        """Bands the served model takes (from the signature metadata), or None when unknown."""
        try:
            spec = self.signatures[self.signature_name]["inputs"]["images"]
            last = int(spec["tensor_shape"]["dim"][-1]["size"])
        except (KeyError, ValueError, IndexError, TypeError):
            return None
        return last if last > 0 else None

    @property
    def standardizes_scenes(self) -> bool:
        """Whether the served export standardises scene colours in its graph (`serving_scene`)."""
        return "serving_scene" in self.signatures

    def for_scene(self, stats: Any) -> Any:
        """A predict_fn sending raw windows with the scene's band statistics (`BandStats` of the
        bands sent) to `serving_scene`, whose graph standardises them as local predict does
        (`predict_raster` fills nodata pixels with its `nodata_value`, the export's mark)."""

        def send(chunk: np.ndarray) -> np.ndarray:
            rows = len(chunk)
            inputs = {"images": _json_pixels(chunk),
                      "scene_mean": np.tile(np.asarray(stats.mean, np.float32), (rows, 1)),
                      "scene_std": np.tile(np.asarray(stats.std, np.float32), (rows, 1))}
            return self.predict(inputs, "serving_scene")[self.output].astype(np.float32)

        def predict_fn(batch: np.ndarray) -> np.ndarray:
            return self._chunked(batch, send)

        from geolabel.serving.export import NODATA_MARK

        predict_fn.stride, predict_fn.channels, predict_fn.nodata_value = self.stride, self.channels, NODATA_MARK
        return predict_fn

    # -- plumbing
    def _request(self, method: str, url: str, payload: dict[str, Any] | None = None, body: bytes | None = None) -> Any:
        """The JSON answer of one request (retried by `self.http`); InputError naming `url` on an error answer."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        response = self.http.send(method, url, json=payload, data=body, headers=headers)
        if response.status_code == 200:
            return response.json()
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise InputError(url, f"HTTP {response.status_code}: {message}")

    # -- API
    def status(self) -> dict[str, Any]:
        """The model status (`model_version_status`)."""
        return self._request("GET", self.endpoint)

    def metadata(self) -> dict[str, Any]:
        """The signature metadata."""
        return self._request("GET", self.endpoint + "/metadata")

    def wait_available(self, timeout: float = 60.0) -> None:
        """Wait until some version is AVAILABLE."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.http.send("GET", self.endpoint, timeout=5).json().get("model_version_status", [])
                if any(s.get("state") == "AVAILABLE" for s in states):
                    return
            except (FetchError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise FetchError(f"{self.endpoint}: no AVAILABLE version after {timeout} s")
            time.sleep(0.2)

    def predict(self, inputs: Any, signature_name: str | None = None) -> dict[str, np.ndarray]:
        """One columnar request: `inputs` is an array or {name: array}; returns {output: array}."""
        if isinstance(inputs, dict):
            body_inputs = "{" + ", ".join(f"{json.dumps(k)}: {array_json(np.asarray(v))}" for k, v in inputs.items()) + "}"
        else:
            body_inputs = array_json(np.asarray(inputs))
        name = json.dumps(signature_name or self.signature_name)
        body = '{"signature_name": ' + name + ', "inputs": ' + body_inputs + "}"
        outputs = self._request("POST", self.endpoint + ":predict", body=body.encode("utf-8"))["outputs"]
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        return {k: np.asarray(v) for k, v in outputs.items()}

    def _predict_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """One request to `signature_name` (or PNGs to `serving_bytes`)."""
        if self.encoding == "png":
            payload = {"signature_name": "serving_bytes", "inputs": [{"b64": _png_b64(w)} for w in chunk]}
            outputs = self._request("POST", self.endpoint + ":predict", payload)["outputs"]
            return np.asarray(outputs[self.output], dtype=np.float32)
        return self.predict(_json_pixels(chunk))[self.output].astype(np.float32)

    def _chunked(self, batch: np.ndarray, send: Any) -> np.ndarray:
        """`send` each group of `rows_per_request` windows, concurrently; the results in order."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise InputError("batch", f"expected (B, H, W, C) windows, got shape {batch.shape}")
        chunks = [batch[i : i + self.rows_per_request] for i in range(0, len(batch), self.rows_per_request)]
        if len(chunks) == 1:
            return send(chunks[0])
        return np.concatenate(list(self._pool.map(send, chunks)))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """predict_fn: float32 windows (B, H, W, C) of raw pixel values -> probabilities (B, H, W, K)."""
        return self._chunked(batch, self._predict_chunk)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _json_pixels(chunk: np.ndarray) -> np.ndarray:
    """Integral pixel values as integers (shorter JSON, exact for float inputs)."""
    if chunk.size and np.abs(chunk).max() < (1 << 24) and np.array_equal(chunk, np.rint(chunk)):
        return chunk.astype(np.int64)
    return chunk


def _png_b64(window: np.ndarray) -> str:
    from PIL import Image

    pixels = np.clip(np.rint(window), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
