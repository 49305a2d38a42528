"""Reliability limits of the REST server: header/body/idle deadlines, request size, connections, memory budget.

Each test talks to the server with a raw socket (or many), the way a slow, stalled or
hostile client would, and checks that the server answers in TF Serving's JSON error
format and closes the connection within its deadline instead of holding a thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import requests

TIMEOUT = 1.0  # header, body and idle deadlines of the server under test
SLACK = 3.0  # scheduling slack on a loaded 2-core machine


@pytest.fixture(scope="module")
def limited(model_base):
    """REST-only server with 1 s deadlines, a 4 MiB body limit and a 16 MiB memory budget."""
    from geolabel.serving.server import ModelServer

    srv = ModelServer(
        model_name="seg",
        model_base_path=model_base,
        rest_api_port=0,
        port=None,
        host="127.0.0.1",
        poll_seconds=0,
        max_body_bytes=4 << 20,
        header_timeout_s=TIMEOUT,
        body_timeout_s=TIMEOUT,
        idle_timeout_s=TIMEOUT,
        memory_budget_bytes=16 << 20,
        memory_wait_s=0.5,
    ).start()
    srv.wait_available(timeout=120)
    yield srv
    srv.stop()


def connect(srv) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.rest_port), timeout=TIMEOUT + 2 * SLACK)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (status, headers, body by Content-Length) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes `sock` (EOF or reset); fails after `seconds`."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"server kept the connection open for more than {seconds} s")
    return time.monotonic() - start


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def predict_body(side: int, value: float = 100.5) -> bytes:
    return json.dumps({"inputs": np.full((1, side, side, 3), value).tolist()}).encode()


def test_half_headers_are_closed_within_the_header_timeout(limited):
    """20 clients that send half a header (and one that trickles a byte every 0.2 s) are dropped at the deadline."""
    wait_for(lambda: limited.rest_connections == 0, SLACK)
    socks = [connect(limited) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"POST /v1/models/seg:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
    trickle = connect(limited)
    stop = threading.Event()

    def drip() -> None:
        try:
            for byte in b"GET /v1/models/seg HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                trickle.send(bytes([byte]))
        except OSError:  # closed by the server: expected
            return

    dripper = threading.Thread(target=drip, daemon=True)
    started = time.monotonic()
    dripper.start()
    assert wait_for(lambda: limited.rest_connections >= 21, SLACK), limited.rest_connections
    try:
        for sock in socks:
            closed_within(sock, TIMEOUT + SLACK)
        closed_within(trickle, TIMEOUT + SLACK)  # bytes keep coming: the deadline is per header, not per recv
        assert time.monotonic() - started < TIMEOUT + SLACK
    finally:
        stop.set()
        for sock in [*socks, trickle]:
            sock.close()
    assert wait_for(lambda: limited.rest_connections == 0, SLACK), limited.rest_connections  # no thread left
    assert requests.get(f"http://127.0.0.1:{limited.rest_port}/v1/models/seg", timeout=10).status_code == 200


@pytest.mark.parametrize("claimed", [200_000_000, 3_000_000])  # far above the limit, and within 4x of it
def test_huge_content_length_without_a_body_is_answered_at_once(limited, claimed):
    """A too-large Content-Length and nothing sent: 429 in TF Serving's JSON at once, connection closed after."""
    with connect(limited) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/models/seg:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % claimed
        )
        status, headers, body = read_response(sock)
        assert time.monotonic() - started < SLACK
        assert status == 429 and headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        message = json.loads(body)["error"]
        assert message == f"Request body too large: {claimed} bytes (limit 1198372 bytes)"  # 16 MiB budget / 14
        closed_within(sock, 2.0 + SLACK)  # the lingering drain ends without a body
    assert wait_for(lambda: limited.rest_connections == 0, SLACK)


def test_short_body_times_out_with_408(limited):
    """A body shorter than its Content-Length: 408 (JSON error) at the body deadline, then the connection is closed."""
    with connect(limited) as sock:
        sock.sendall(
            b"POST /v1/models/seg:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"inputs": [1'
        )
        started = time.monotonic()
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - started
        assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + SLACK
        assert status == 408 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "Timed out reading the request body: 13 of 100 bytes received in 1 s"}
        closed_within(sock, SLACK)


def test_waiting_for_memory_does_not_count_against_the_body_deadline(model_base):
    """A body the server is slow to take (its memory budget held by requests in flight for twice the
    body deadline) is still read: the body deadline measures the client, not the server's wait."""
    from geolabel.serving.server import ModelServer

    srv = ModelServer(model_name="seg", model_base_path=model_base, rest_api_port=0, port=None, host="127.0.0.1",
                      poll_seconds=0, body_timeout_s=TIMEOUT, memory_budget_bytes=16 << 20,
                      memory_wait_s=TIMEOUT + 2 * SLACK).start()
    try:
        srv.wait_available(timeout=120)
        held = srv.core.budget.lease()  # what other requests in flight hold
        held.resize(srv.core.budget.limit_bytes)
        threading.Timer(2 * TIMEOUT, held.release).start()
        body = json.dumps({"instances": np.full((1, 8, 8, 3), 100).tolist()}).encode()
        with connect(srv) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /v1/models/seg:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.2)  # the body comes in its own packets, not buffered with the header
            sock.sendall(body)
            status, _, answer = read_response(sock)
        assert status == 200, answer
        assert time.monotonic() - started >= 1.5 * TIMEOUT  # it did wait for the memory
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "line",
    [
        bytes.fromhex("16030100c4010000c00303") + bytes(range(32)),  # a TLS ClientHello on the plain-HTTP port
        b"GARBAGE",
        b"\x16\x03\x01 x y z",  # three words, not an HTTP version
    ],
)
def test_unparsable_request_line_gets_a_400_with_a_status_line(limited, line):
    """Not HTTP at all: a 400 with a status line, headers and TF Serving's JSON error, then the connection is closed."""
    with connect(limited) as sock:
        sock.sendall(line + b"\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 400 and headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert json.loads(body)["error"].startswith("Bad request")
        closed_within(sock, 2.0 + SLACK)


def test_idle_keep_alive_connection_is_closed(limited):
    """Keep-alive works between requests, and an idle connection is closed after the idle timeout."""
    with connect(limited) as sock:
        for _ in range(2):
            sock.sendall(b"GET /v1/models/seg HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200 and json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"
        idle = closed_within(sock, TIMEOUT + SLACK)
        assert idle >= TIMEOUT * 0.8


def test_header_size_and_connection_limits(limited):
    """A header over 64 KiB is refused with 431; connections beyond max_connections get 503 and are closed."""
    with connect(limited) as sock:
        lines = b"".join(b"X-Field-%d: %s\r\n" % (i, b"a" * 4000) for i in range(40))  # 160 KB, lines < 64 KiB
        sock.sendall(b"GET /v1/models/seg HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        status, headers, body = read_response(sock)
        assert status == 431 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "Request header too large (limit 65536 bytes)"}
    wait_for(lambda: limited.rest_connections == 0, SLACK)
    limit = limited._http.max_connections
    limited._http.max_connections = 2
    held = [connect(limited) for _ in range(2)]
    try:
        assert wait_for(lambda: limited.rest_connections == 2, SLACK)
        with connect(limited) as extra:
            status, headers, body = read_response(extra)
            assert status == 503
            assert json.loads(body) == {"error": "Too many open connections (limit 2); retry later"}
    finally:
        limited._http.max_connections = limit
        for sock in held:
            sock.close()


def test_memory_budget_refuses_beyond_it_while_normal_requests_succeed(limited, real_tiles):
    """Requests beyond the memory budget get 429 (TF Serving's JSON error); normal requests in parallel get 200."""
    url = f"http://127.0.0.1:{limited.rest_port}/v1/models/seg:predict"
    good = {"inputs": real_tiles[:1, :16, :16].tolist()}
    stop, codes = threading.Event(), []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            codes.append(session.post(url, json=good, timeout=60).status_code)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # a body whose parse alone would exceed the budget: refused before it is read
        big = predict_body(260)  # ~1.4 MB > 16 MiB / 14
        r = requests.post(url, data=big, timeout=60)
        assert r.status_code == 429 and r.headers["Content-Type"] == "application/json"
        assert list(r.json()) == ["error"] and r.json()["error"].startswith("Request body too large")
        assert r.json()["error"].endswith("(limit 1198372 bytes)")  # the budget / JSON_BYTES_PER_BODY_BYTE
        # the budget held by other requests in flight: a request that does not fit waits, then is refused,
        # while small requests in parallel still run
        hog = limited.core.budget.lease()
        hog.resize(limited.core.budget.limit_bytes - (1 << 20))
        try:
            medium = predict_body(150)  # ~0.5 MB: ~7 MB to parse, more than the 1 MiB left
            refused = requests.post(url, data=medium, timeout=60)
            assert refused.status_code == 429
            assert refused.json()["error"].startswith("Server memory budget exhausted: Parsing this request's JSON")
            small = requests.post(url, json=good, timeout=60)
            assert small.status_code == 200, small.text
        finally:
            hog.release()
        ok = requests.post(url, data=medium, timeout=60)
        assert ok.status_code == 200, ok.text[:300]
        assert np.asarray(ok.json()["outputs"]["probabilities"]).shape == (1, 150, 150, 2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert codes and set(codes) == {200}, sorted(set(codes))
    assert limited.core.budget.in_use == 0 and limited.core.budget.refused >= 1
    assert limited.core.budget.peak <= limited.core.budget.limit_bytes


def test_prediction_past_the_rest_deadline_is_answered_504(model_base):
    """TF Serving's --rest_api_timeout_in_ms: a prediction not done in time is answered 504 at its
    deadline, not when the model returns; the request's memory is held until the model returns."""
    from geolabel.serving.server import ModelServer

    srv = ModelServer(model_name="seg", model_base_path=model_base, rest_api_port=0, port=None, host="127.0.0.1",
                      poll_seconds=0, predict_timeout_s=0.001).start()
    try:
        srv.wait_available(timeout=120)
        r = requests.post(f"http://127.0.0.1:{srv.rest_port}/v1/models/seg:predict", data=predict_body(512), timeout=60)
        assert r.status_code == 504
        assert r.json()["error"].startswith("Deadline exceeded: the model did not answer within 1 ms")
        assert wait_for(lambda: srv.core.budget.in_use == 0, 30)
        assert requests.get(f"http://127.0.0.1:{srv.rest_port}/v1/models/seg", timeout=10).status_code == 200
    finally:
        srv.stop()
