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
        # a broken newer version fails to load: reported in the status, version 2 keeps serving
        (base / ".broken").mkdir()
        (base / ".broken" / "saved_model.pb").write_bytes(b"not a protobuf")
        (base / ".broken").rename(base / "3")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = {s["version"]: s for s in requests.get(url, timeout=10).json()["model_version_status"]}
            if status.get("3", {}).get("state") == "END":
                break
            time.sleep(0.1)
        assert status["3"]["state"] == "END" and status["3"]["status"]["error_code"] != "OK"
        assert status["3"]["status"]["error_message"]
        assert status["2"]["state"] == "AVAILABLE"
        assert requests.post(url + ":predict", json=body, timeout=30).status_code == 200


def test_config_file_labels_and_grpc_reload(model_base, tmp_path):
    """A text ModelServerConfig (latest 2, labels), then HandleReloadConfigRequest over gRPC."""
    import grpc
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
    )

    from geolabel.serving.server import ModelServer, parse_model_config

    base = tmp_path / "multi"
    base.mkdir()
    for v in (1, 2):
        copy_version(model_base / "1", base, v)
    (base / "not-a-version").mkdir()
    (base / "3.tmp").mkdir()
    config = tmp_path / "models.config"
    config.write_text(
        f"""model_config_list {{
          config {{ name: 'seg' base_path: '{base}' model_platform: 'tensorflow'
                   model_version_policy {{ latest {{ num_versions: 2 }} }}
                   version_labels {{ key: 'stable' value: 1 }} version_labels {{ key: 'canary' value: 2 }} }}
        }}"""
    )
    with ModelServer(model_config_file=config, rest_api_port=0, port=0, host="127.0.0.1", poll_seconds=0) as srv:
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models/seg"
        status = requests.get(url, timeout=10).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
        # TF Serving's GetModelStatusWithModelSpec reads no label: every version is listed
        assert requests.get(f"{url}/labels/stable", timeout=10).json()["model_version_status"] == status
        assert requests.get(f"{url}/labels/canary/metadata", timeout=10).json()["model_spec"]["version"] == "2"
        body = {"inputs": np.zeros((1, 8, 8, 3)).tolist()}
        assert requests.post(f"{url}/labels/stable:predict", json=body, timeout=30).status_code == 200
        assert requests.post(f"{url}/versions/1:predict", json=body, timeout=30).status_code == 200

        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            pinned = parse_model_config(
                f"""model_config_list {{ config {{ name: 'seg' base_path: '{base}'
                      model_version_policy {{ specific {{ versions: 2 }} }} version_labels {{ key: 'stable' value: 2 }} }} }}"""
            )
            reply = models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=pinned), timeout=60)
            assert reply.status.error_code == 0, reply.status.error_message
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "seg"
            states = models.GetModelStatus(request, timeout=30).model_version_status
            assert [(s.version, s.state) for s in states] == [
                (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
                (1, get_model_status_pb2.ModelVersionStatus.END),
            ]
            request.model_spec.version_label = "stable"
            assert [s.version for s in models.GetModelStatus(request, timeout=30).model_version_status] == [2, 1]
            bad = parse_model_config(
                f"model_config_list {{ config {{ name: 'x' base_path: '{base}' }} "
                f"config {{ name: 'x' base_path: '{base}' }} }}"
            )
            reply = models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), timeout=60)
            assert reply.status.error_code == 3  # INVALID_ARGUMENT
            assert reply.status.error_message == "Illegal to list model x multiple times in config list"
        assert requests.post(f"{url}/versions/1:predict", json=body, timeout=30).status_code == 404
        assert requests.post(f"{url}/labels/stable:predict", json=body, timeout=30).status_code == 200


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
