"""Retrying HTTP for tile servers, Overpass, geocoders and TF Serving, on urllib3's `Retry`.

One `Retry` policy, mounted on each thread's requests session (`HTTPAdapter`), retries
connection errors, read timeouts (`timeout` is the most seconds between two bytes, so a
stalled server fails too) and 429/5xx answers of any method, with exponential backoff; a
`Retry-After` header (seconds or an HTTP date, capped at `max_backoff`) wins over the
computed delay. requests reads a body only after urllib3 has handed over the response, so
`HttpClient.send` reads it under the same budget: a body cut or stalled mid-transfer, or one
the caller's `check` rejects (a truncated image, an HTML error page), is one more attempt
(`Retry.increment`). `HttpClient.request` reports 404/410 as "missing" (None).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

import geolabel
from geolabel.errors import FetchError
from geolabel.progress import logger

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MISSING_STATUS = frozenset({404, 410})
USER_AGENT = f"geolabel/{geolabel.__version__} (+https://github.com/geolabel)"


class BadBody(Exception):
    """A 2xx/3xx body that the caller's `check` rejected (retried like a transient error)."""


class _Retry(Retry):
    """urllib3's `Retry`, except that a malformed Retry-After falls back to the backoff
    (urllib3 raises InvalidHeader), as a misbehaving server must not end the job."""

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None


@dataclass
class HttpClient:
    """A retrying HTTP client that is safe to share between threads.

    Args:
        connections: most requests in flight at once (threads in `map`, pooled connections).
        retries: attempts after the first one before giving up with FetchError.
        backoff: urllib3's backoff factor: the first retry goes at once, then 2, 4, 8...
            times `backoff` seconds.
        max_backoff: cap of one delay (also caps a server's Retry-After).
        timeout: seconds to connect and seconds between bytes read.
        headers: extra request headers (a User-Agent naming geolabel is always sent).
        retry_status: answers retried like a transient error.
    """

    connections: int = 8
    retries: int = 6
    backoff: float = 0.25
    max_backoff: float = 30.0
    timeout: float = 20.0
    headers: dict[str, str] | None = None
    retry_status: frozenset[int] = RETRY_STATUS
    policy: Retry = field(init=False, repr=False)  # the whole budget of one request
    stats: dict[str, int] = field(init=False)  # attempts, retries and 404/410 answers so far

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("connections must be >= 1")
        self.policy = _Retry(
            total=self.retries, connect=None, read=None, status=None, other=None, redirect=None,
            allowed_methods=None, status_forcelist=self.retry_status, backoff_factor=self.backoff,
            backoff_max=self.max_backoff, retry_after_max=self.max_backoff, raise_on_status=False,
        )
        self.stats = {"requests": 0, "retries": 0, "missing": 0}
        self._local = threading.local()
        self._lock = threading.Lock()

    def _session(self) -> tuple[requests.Session, HTTPAdapter]:
        """This thread's session and its adapter (whose `max_retries` carries one request's budget)."""
        if not hasattr(self._local, "session"):
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.connections, max_retries=self.policy)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            session.headers.update(self.headers or {})
            self._local.session, self._local.adapter = session, adapter
        return self._local.session, self._local.adapter

    def _tally(self, retries: int, missing: bool = False) -> None:
        with self._lock:
            self.stats["requests"] += retries + 1
            self.stats["retries"] += retries
            self.stats["missing"] += missing

    def send(self, method: str, url: str, check: Callable[[bytes], str | None] | None = None, **kwargs: Any) -> requests.Response:
        """One request under the retry policy; the final response, its body read.

        Args:
            check: says why a 2xx/3xx body is unusable (None when it is fine); such a body
                is retried like a transient error, since servers under load answer 200 with
                a cut or an error page.
            kwargs: passed to `requests.Session.request` (`timeout` defaults to the client's).

        Raises:
            FetchError: a `retry_status` answer or a network error after all attempts, or a
                request that cannot be sent at all.
        """
        session, adapter = self._session()
        kwargs.setdefault("timeout", self.timeout)
        retry = self.policy
        while True:
            adapter.max_retries = retry  # this thread's adapter: the budget left for this request
            try:
                response = session.request(method, url, stream=True, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as err:  # urllib3 used up every attempt
                self._tally(self.retries)
                raise FetchError(f"{url}: failed after {self.retries + 1} attempts (last: {_reason(err)})") from err
            except requests.RequestException as err:
                raise FetchError(f"{url}: {err}") from err
            retry = response.raw.retries or retry
            if response.status_code in self.retry_status:  # urllib3 gave up on it (raise_on_status=False)
                response.close()
                self._tally(len(retry.history))
                raise FetchError(f"{url}: failed after {len(retry.history) + 1} attempts (last: HTTP {response.status_code})")
            try:
                body = response.content
                problem = check(body) if check and response.status_code < 400 else None
                if problem is None:
                    self._tally(len(retry.history), missing=response.status_code in MISSING_STATUS)
                    return response
                error: Exception = BadBody(problem)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                error = err  # the body was cut (IncompleteRead, reset) or stalled past the timeout
            response.close()
            try:
                retry = retry.increment(method, url, error=error)
            except MaxRetryError:
                self._tally(self.retries)
                raise FetchError(f"{url}: failed after {self.retries + 1} attempts (last: {_reason(error)})") from error
            logger.debug("retry %d of %s after %s", len(retry.history), url, _reason(error))
            retry.sleep()

    def request(self, method: str, url: str, check: Callable[[bytes], str | None] | None = None, **kwargs: Any) -> requests.Response | None:
        """`send`, for a resource that must be there: the 2xx/3xx response, or None for 404/410.

        Raises:
            FetchError: another error status, or still failing after all retries.
        """
        response = self.send(method, url, check=check, **kwargs)
        if response.status_code in MISSING_STATUS:
            return None
        if response.status_code >= 400:
            raise FetchError(f"{url}: HTTP {response.status_code} {response.reason or ''}".strip())
        return response

    def get_bytes(self, url: str, check: Callable[[bytes], str | None] | None = None, **kwargs: Any) -> bytes | None:
        """GET `url`: its body (accepted by `check`, see `send`), or None for 404/410."""
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


def _reason(err: BaseException) -> str:
    """A short name for why an attempt failed: the error urllib3 gave up on, or the bad body."""
    cause = err.args[0] if err.args and isinstance(err.args[0], MaxRetryError) else None
    if cause is not None and cause.reason is not None:
        err = cause.reason
    return f"bad body ({err})" if isinstance(err, BadBody) else type(err).__name__
