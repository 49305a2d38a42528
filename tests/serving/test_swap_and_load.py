"""Availability-preserving hot swaps, version policies, and concurrent load with bad requests mixed in."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from tests.serving.conftest import copy_version


def hammer(url: str, body: dict, stop: threading.Event, results: list, versions: set | None = None) -> None:
    session = requests.Session()
    while not stop.is_set():
        try:
            r = session.post(url, json=body, timeout=60)
            results.append(r.status_code)
        except requests.RequestException as err:  # counted as a failure
            results.append(repr(err))


def test_hot_swap_has_no_failed_requests(model_base, tmp_path):
    from geolabel.serving.server import ModelServer

    base = tmp_path / "swap"
    base.mkdir()
    copy_version(model_base / "1", base, 1)
    with ModelServer(
        model_name="m", model_base_path=base, rest_api_port=0, port=None, host="127.0.0.1", poll_seconds=0.2
    ) as srv:
        srv.wait_available()
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models/m"
        body = {"inputs": np.full((1, 16, 16, 3), 90.0).tolist()}
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=hammer, args=(url + ":predict", body, stop, results)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        copy_version(model_base / "1", base, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in requests.get(url, timeout=10).json()["model_version_status"]}
            if states.get("2") == "AVAILABLE" and states.get("1") == "END":
                break
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert states == {"2": "AVAILABLE", "1": "END"}
        assert results and all(code == 200 for code in results), [c for c in results if c != 200][:5]
        r = requests.post(url + ":predict", json=body, timeout=30)
        assert r.status_code == 200
        assert requests.post(url + "/versions/1:predict", json=body, timeout=30).status_code == 404


def test_config_file_policies_and_labels(model_base, tmp_path):
    from geolabel.serving.server import ModelServer

    base = tmp_path / "multi"
    base.mkdir()
    for v in (1, 2, 3):
        copy_version(model_base / "1", base, v)
    (base / "not-a-version").mkdir()
    config = tmp_path / "models.config"
    config.write_text(
        f"""model_config_list {{
          config {{ name: 'latest2' base_path: '{base}' model_platform: 'tensorflow'
                   model_version_policy {{ latest {{ num_versions: 2 }} }}
                   version_labels {{ key: 'stable' value: 2 }} version_labels {{ key: 'canary' value: 3 }} }}
          config {{ name: 'pinned' base_path: '{base}' model_version_policy {{ specific {{ versions: 1 }} }} }}
        }}"""
    )
    with ModelServer(model_config_file=config, rest_api_port=0, port=None, host="127.0.0.1", poll_seconds=0) as srv:
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models"
        status = requests.get(f"{url}/latest2", timeout=10).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("3", "AVAILABLE"), ("2", "AVAILABLE")]
        status = requests.get(f"{url}/pinned", timeout=10).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
        assert requests.get(f"{url}/latest2/labels/stable", timeout=10).json()["model_version_status"][0]["version"] == "2"
        body = {"inputs": np.zeros((1, 8, 8, 3)).tolist()}
        assert requests.post(f"{url}/latest2/labels/canary:predict", json=body, timeout=30).status_code == 200
        assert requests.post(f"{url}/latest2/versions/1:predict", json=body, timeout=30).status_code == 404
        meta = requests.get(f"{url}/latest2/labels/stable/metadata", timeout=10).json()
        assert meta["model_spec"]["version"] == "2"


def test_32_concurrent_clients_with_bad_requests(server, rest_url, real_tiles):
    """32 clients for a bounded time: zero errors for good requests, bad ones rejected, batching used."""
    url = f"{rest_url}/v1/models/seg:predict"
    good = {"inputs": real_tiles[:1, :16, :16].tolist()}
    bad_bodies = [b"{", b'{"instances": []}', b'{"inputs": [[[["x"]]]]}', b'{"instances": [1], "inputs": [1]}']
    batches_before = server.core.batcher.batches_run
    deadline = time.monotonic() + 4.0

    def client(i: int) -> tuple[int, int, list]:
        session = requests.Session()
        ok = rejected = 0
        errors = []
        n = 0
        while time.monotonic() < deadline:
            n += 1
            if i % 8 == 7 and n % 2 == 0:  # a few clients also send malformed requests
                r = session.post(url, data=bad_bodies[n % len(bad_bodies)], timeout=60)
                if r.status_code == 400 and "error" in r.json():
                    rejected += 1
                else:
                    errors.append((r.status_code, r.text[:200]))
                continue
            r = session.post(url, json=good, timeout=60)
            if r.status_code == 200 and len(r.json()["outputs"]["probabilities"]) == 1:
                ok += 1
            else:
                errors.append((r.status_code, r.text[:200]))
        return ok, rejected, errors

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(client, range(32)))
    elapsed = time.monotonic() - started
    errors = [e for _, _, errs in outcomes for e in errs]
    assert not errors, errors[:3]
    assert sum(o for o, _, _ in outcomes) >= 32
    assert sum(r for _, r, _ in outcomes) >= 4
    assert elapsed < 60
    assert server.core.batcher.batches_run > batches_before
