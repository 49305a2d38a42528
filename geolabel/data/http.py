"""Retrying HTTP for tile servers, Overpass and geocoders.

Bounded concurrency (one pooled session per thread, at most `connections` threads),
exponential backoff on timeouts, connection errors (also a body cut off mid-transfer),
429 and 5xx (a `Retry-After` header wins over the computed delay), and on a 2xx body
that the caller's `check` rejects (a truncated image, an HTML error page); 404/410 are
reported as "missing" (None) rather than as a failure.

The retries live in `HttpClient.request`, not in urllib3's `Retry`: requests reads the
body after urllib3 has returned the response, so a `Retry` mounted on the adapter
never sees a transfer cut mid-body.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import requests
from requests.adapters import HTTPAdapter

import geolabel
from geolabel.errors import FetchError
from geolabel.progress import logger

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MISSING_STATUS = frozenset({404, 410})
USER_AGENT = f"geolabel/{geolabel.__version__} (+https://github.com/geolabel)"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class HttpClient:
    """A small retrying HTTP client that is safe to share between threads.

    Args:
        connections: most requests in flight at once (threads in `map`).
        retries: attempts after the first one before giving up with FetchError.
        backoff: first retry delay in seconds; doubles each attempt.
        max_backoff: cap of one delay (also caps a server's Retry-After).
        timeout: seconds to connect and seconds between bytes read.
        headers: extra request headers (a User-Agent naming geolabel is always sent).
    """

    connections: int = 8
    retries: int = 6
    backoff: float = 0.25
    max_backoff: float = 30.0
    timeout: float = 20.0
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("connections must be >= 1")
        self._local = threading.local()
        self.stats = {"requests": 0, "retries": 0, "missing": 0}
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.connections, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            session.headers.update(self.headers or {})
            self._local.session = session
        return session

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def request(self, method: str, url: str, check: Callable[[bytes], str | None] | None = None, **kwargs) -> requests.Response | None:
        """One request with retries; the response (2xx/3xx), or None when the resource is missing.

        Args:
            check: says why a 2xx/3xx body is unusable (None when it is fine); such a body
                is retried like a transient error, since servers under load answer 200 with
                a cut or an error page.

        Raises:
            FetchError: a non-retryable error status, or still failing after all retries.
        """
        last = ""
        for attempt in range(self.retries + 1):
            self._count("requests")
            wait = None
            try:
                response = self._session().request(method, url, timeout=self.timeout, **kwargs)
                if response.status_code in MISSING_STATUS:
                    self._count("missing")
                    return None
                if response.status_code < 400:
                    # Read the body inside the retry loop: a stalled or cut body is retried too.
                    problem = check(response.content) if check else None
                    if problem is None:
                        return response
                    last = f"bad body ({problem})"
                else:
                    last = f"HTTP {response.status_code}"
                    if response.status_code not in RETRY_STATUS:
                        raise FetchError(f"{url}: {last} {response.reason or ''}".strip())
                    wait = retry_after_seconds(response.headers.get("Retry-After"))
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                # ChunkedEncodingError: the connection broke while the body was read (IncompleteRead, reset)
                last = type(err).__name__
            except requests.RequestException as err:
                raise FetchError(f"{url}: {err}") from err
            if attempt == self.retries:
                break
            delay = self.backoff * 2**attempt if wait is None else wait
            delay = min(delay, self.max_backoff)
            self._count("retries")
            logger.debug("retry %d of %s after %s, waiting %.2fs", attempt + 1, url, last, delay)
            time.sleep(delay)
        raise FetchError(f"{url}: failed after {self.retries + 1} attempts (last: {last})")

    def get_bytes(self, url: str, check: Callable[[bytes], str | None] | None = None, **kwargs) -> bytes | None:
        """GET `url`: its body (accepted by `check`, see `request`), or None for 404/410."""
        response = self.request("GET", url, check=check, **kwargs)
        return None if response is None else response.content

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Apply `fn` to `items` on `connections` threads; results in input order, lazily.

        At most 2 x `connections` items are pending at once, so a huge tile list does not
        queue up in memory.
        """
        items = iter(items)
        if self.connections == 1:
            yield from map(fn, items)
            return
        with ThreadPoolExecutor(self.connections, thread_name_prefix="geolabel-http") as pool:
            pending = []
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * self.connections:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()
