"""REST contract of the embedded server (docs/tf-serving-contract.md), route by route."""

from __future__ import annotations

import base64
import io
import json
import socket

import numpy as np
import pytest
import requests
from PIL import Image


def post(url: str, body, **kw) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(url, data=data, timeout=60, **kw)


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    return body["error"]


def test_status(rest_url):
    r = requests.get(f"{rest_url}/v1/models/seg", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert requests.get(f"{rest_url}/v1/models/seg/versions/1", timeout=10).json() == r.json()


def test_metadata_lists_every_signature(rest_url):
    r = requests.get(f"{rest_url}/v1/models/seg/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": "seg", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "serving_uint8", "serving_bytes", "serving_info", "polygons", "map_update"}
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    images = default["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert default["outputs"]["classes"]["dtype"] == "DT_INT64"
    assert sigs["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(sigs["map_update"]["inputs"]) == {"image", "map"}
    assert requests.get(f"{rest_url}/v1/models/seg/versions/1/metadata", timeout=10).json() == body


def test_row_and_columnar_predict_match_keras(rest_url, tiny_runs, real_tiles):
    import keras

    model = keras.saving.load_model(tiny_runs["seg"], compile=False)
    x = real_tiles[:2]
    expected = np.asarray(model(x))
    row = post(f"{rest_url}/v1/models/seg:predict", {"instances": x.tolist()})
    assert row.status_code == 200, row.text
    preds = row.json()["predictions"]
    assert len(preds) == 2 and set(preds[0]) == {"classes", "probabilities"}
    np.testing.assert_allclose(np.asarray([p["probabilities"] for p in preds]), expected, atol=1e-5)
    assert np.array_equal(np.asarray([p["classes"] for p in preds]), expected.argmax(-1))
    col = post(f"{rest_url}/v1/models/seg/versions/1:predict", {"inputs": x.tolist()})
    assert col.status_code == 200
    outputs = col.json()["outputs"]
    np.testing.assert_allclose(np.asarray(outputs["probabilities"]), expected, atol=1e-5)
    named = post(f"{rest_url}/v1/models/seg:predict", {"inputs": {"images": x.tolist()}})
    np.testing.assert_allclose(np.asarray(named.json()["outputs"]["probabilities"]), expected, atol=1e-5)


def test_padding_to_stride_and_crop_back(rest_url, real_tiles):
    x = real_tiles[:1, :13, :19]  # not multiples of the stride
    r = post(f"{rest_url}/v1/models/seg:predict", {"inputs": x.astype(int).tolist()})  # ints into a float input
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["outputs"]["probabilities"])
    assert probs.shape == (1, 13, 19, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)


def test_b64_png_and_uint8_signatures_agree(rest_url, real_tiles):
    pixels = real_tiles[0].astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    r_bytes = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "serving_bytes", "instances": [{"b64": b64}]})
    assert r_bytes.status_code == 200, r_bytes.text
    r_uint8 = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "serving_uint8", "instances": [pixels.tolist()]})
    assert r_uint8.status_code == 200, r_uint8.text
    a = np.asarray(r_bytes.json()["predictions"][0]["probabilities"])
    b = np.asarray(r_uint8.json()["predictions"][0]["probabilities"])
    np.testing.assert_allclose(a, b, atol=1e-5)
    # b64 only for string inputs
    bad = post(f"{rest_url}/v1/models/seg:predict", {"instances": [{"b64": b64}]})
    assert bad.status_code == 400
    assert "is not of expected type: float" in error_of(bad)


def test_strict_types(rest_url):
    r = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "serving_uint8", "instances": [[[[1.5, 2, 3]]]]})
    assert r.status_code == 400
    assert error_of(r) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 1.5 Type: Number is not of expected type: uint8"
    )
    r = post(f"{rest_url}/v1/models/seg:predict", {"inputs": [[[["a", 2, 3]]]]})
    assert r.status_code == 400
    assert error_of(r) == 'JSON Value: "a" Type: String is not of expected type: float'
    r = post(f"{rest_url}/v1/models/seg:predict", {"inputs": [[[[16777217, 2, 3]]]]})
    assert error_of(r) == "Cannot convert JSON value: 16777217 to float without loss of precision."


def test_multi_input_and_extra_signatures(rest_url, real_tiles):
    image = real_tiles[0, :16, :16]
    amap = np.zeros((16, 16, 3))
    amap[4:10, 4:10, 0] = 1
    r = post(
        f"{rest_url}/v1/models/seg:predict",
        {"signature_name": "map_update", "instances": [{"image": image.tolist(), "map": amap.tolist()}]},
    )
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert np.asarray(pred["displacement"]).shape == (16, 16, 2)
    assert np.asarray(pred["segmentation"]).shape == (16, 16, 4)
    plain = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "map_update", "instances": [image.tolist()]})
    assert plain.status_code == 400
    assert "instances is a plain list, but expecting list of objects" in error_of(plain)
    missing = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "map_update", "inputs": {"image": [image.tolist()]}})
    assert error_of(missing) == "Missing named input: map in 'inputs' object."
    patches = np.full((2, 32, 32, 3), 100.0)
    poly = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "polygons", "inputs": patches.tolist()})
    assert poly.status_code == 200, poly.text
    vertices = np.asarray(poly.json()["outputs"])  # one output: the bare value
    assert vertices.shape == (2, 4, 2) and ((vertices >= 0) & (vertices <= 1)).all()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "JSON Parse error: The document is empty"),
        (b"{", 400, "JSON Parse error: Missing a name for object member. at offset: 1"),
        (b"[1]", 400, "JSON Value: [\n    1\n] Is not object"),
        (b"{}", 400, "Missing 'inputs' or 'instances' key"),
        (b'{"instances": []}', 400, "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
        (
            b'{"instances": [1], "inputs": [1]}',
            400,
            "JSON Value: {\n    \"instances\": [\n        1\n    ],\n    \"inputs\": [\n        1\n    ]\n} "
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        ),
        (b'{"signature_name": 3, "instances": [1]}', 400, None),
        (b'{"signature_name": "nope", "instances": [1]}', 400, 'Serving signature name: "nope" not found in signature def'),
    ],
)
def test_predict_request_errors(rest_url, body, status, message):
    r = post(f"{rest_url}/v1/models/seg:predict", body)
    assert r.status_code == status
    error = error_of(r)
    if message is None:
        assert error.endswith("not formatted correctly. 'signature_name' key must be a string value.")
    else:
        assert error == message


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/seg/versions/7:predict", 404, "Servable not found for request: Specific(seg, 7)"),
        ("POST", "/v1/models/seg/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/seg/versions/7", 404, "Could not find version 7 of model seg"),
        ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v1/foo", 400, "Malformed request: GET /v1/foo"),
        ("POST", "/v1/models/seg:explain", 400, "Malformed request: POST /v1/models/seg:explain"),
        ("GET", "/v1/models/seg:predict", 400, "Malformed request: GET /v1/models/seg:predict"),
        ("DELETE", "/v1/models/seg", 400, "Malformed request: DELETE /v1/models/seg"),
        ("POST", "/v1/models/seg/versions/x:predict", 400, "Malformed request: POST /v1/models/seg/versions/x:predict"),
        (
            "POST",
            "/v1/models/seg/versions/99999999999999999999:predict",
            400,
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
        ("POST", "/v1/models/seg:classify", 400, None),
    ],
)
def test_route_errors(rest_url, method, path, status, message):
    r = requests.request(method, rest_url + path, data=b'{"instances": [1], "examples": [{}]}', timeout=10)
    assert r.status_code == status
    error = error_of(r)
    if message is None:
        assert error == (
            "Expected classification signature method_name to be tensorflow/serving/classify. "
            "Was: tensorflow/serving/predict"
        )
    else:
        assert error == message


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize("name", ["../x", "..%2Fx", "%2e%2e%2fseg", "..%2F..%2Fetc%2Fpasswd", "seg%2F..%2F.."])
def test_model_names_never_reach_files(server, name):
    raw = raw_request(
        server.rest_port, f"GET /v1/models/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (400, 404)
    message = json.loads(body)["error"]
    assert message.startswith(("Could not find any versions of model", "Malformed request"))
    raw = raw_request(
        server.rest_port,
        f"POST /v1/models/{name}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\nConnection: close\r\n\r\n"
        '{"instances":[1]}'.encode(),
    )
    assert int(raw.split()[1]) in (400, 404)


def test_oversized_and_malformed_requests_rejected(server, rest_url):
    big = b'{"instances": [' + b"1," * (3 << 20) + b"1]}"  # > the 4 MiB limit of the fixture
    r = requests.post(f"{rest_url}/v1/models/seg:predict", data=big, timeout=30)
    assert r.status_code == 429
    assert error_of(r).startswith("Request body too large")
    raw = raw_request(
        server.rest_port,
        b"POST /v1/models/seg:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n",
    )
    assert int(raw.split()[1]) == 400
    # the server is fine afterwards
    assert requests.get(f"{rest_url}/v1/models/seg", timeout=10).status_code == 200


def test_unknown_top_level_path_is_json(rest_url):
    r = requests.get(f"{rest_url}/healthz", timeout=10)
    assert r.status_code == 404
    assert error_of(r)


def test_cors_preflight_and_headers(rest_url):
    """OPTIONS with an http(s) Origin is a CORS preflight: 200 with TF Serving's CORS headers; answers carry them too."""
    cors = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "POST, GET",
        "Access-Control-Allow-Headers": "Content-Type",
    }
    r = requests.options(
        f"{rest_url}/v1/models/seg:predict",
        headers={"Origin": "https://maps.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
        timeout=10,
    )
    assert r.status_code == 200 and r.content == b""
    assert {k: r.headers[k] for k in cors} == cors
    no_origin = requests.options(f"{rest_url}/v1/models/seg:predict", timeout=10)
    assert no_origin.status_code == 400
    assert error_of(no_origin) == "Origin header is missing in CORS preflight"
    for response in (requests.get(f"{rest_url}/v1/models/seg", timeout=10), no_origin):
        assert {k: response.headers[k] for k in cors} == cors


def test_head_is_a_malformed_request_without_body(server, rest_url):
    """HEAD is not a TF Serving route: 400 "Malformed request: HEAD ..." (JSON headers, no body), not 501 HTML."""
    r = requests.head(f"{rest_url}/v1/models/seg", timeout=10)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json" and r.content == b""
    expected = json.dumps({"error": "Malformed request: HEAD /v1/models/seg"}, indent=4).encode()
    assert int(r.headers["Content-Length"]) == len(expected)
    # the connection stays usable (no body was sent after the HEAD answer)
    raw = raw_request(
        server.rest_port,
        b"HEAD /v1/models/seg HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models/seg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400") and raw.count(b"HTTP/1.1 ") == 2 and b'"AVAILABLE"' in raw


def test_quoted_payload_is_cut_to_256_bytes(rest_url):
    """Errors that quote the request body quote at most 256 bytes of it; short payloads are quoted whole."""
    big = {"instances": np.full((1, 64, 64, 3), 1.5).tolist(), "inputs": [1]}
    r = post(f"{rest_url}/v1/models/seg:predict", big)
    assert r.status_code == 400
    message = error_of(r)
    prefix, suffix = "JSON Value: ", " Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
    assert message.startswith(prefix) and message.endswith(suffix)
    quoted = message[len(prefix) : -len(suffix)]
    assert len(quoted.encode()) == 256 and quoted.endswith("...")
    assert quoted.startswith('{\n    "instances": [\n        [\n            [\n                [\n                    1.5,')
    r = post(f"{rest_url}/v1/models/seg:predict", [1.5] * 10000)
    assert error_of(r).startswith("JSON Value: [\n    1.5,") and len(error_of(r)) < 300


def test_graph_errors_report_the_op_message():
    """TF graph-function errors become the op's message (not "Graph execution error:")."""
    from geolabel.serving.server import op_error_message

    loaded = (
        "Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call last):\n"
        "<stack traces unavailable>\nassertion failed: [images of 8x8 px are too small]\n"
        "\t [[{{function_node __inference_<lambda>_335}}{{node Assert/Assert}}]] [Op:__inference_signature_wrapper_351]"
    )
    traced = (
        "Graph execution error:\n\nDetected at node MirrorPad defined at (most recent call last):\n"
        '  File "x.py", line 17, in <module>\n\n  File "x.py", line 15, in g\n\n'
        "paddings must be less than the dimension size: 34, 34 not less than 8\n\t [[{{node MirrorPad}}]] [Op:__inference_g_35]"
    )
    assert op_error_message(loaded) == "assertion failed: [images of 8x8 px are too small]"
    assert op_error_message(traced) == "paddings must be less than the dimension size: 34, 34 not less than 8"
    assert op_error_message("Expects arg[0] to be float but uint8 is provided") == (
        "Expects arg[0] to be float but uint8 is provided"
    )


def test_status_with_a_version_label_lists_every_version(rest_url):
    """TF Serving's `GetModelStatusWithModelSpec` reads the version, never the label: a status
    request with any label (known or not) lists every version, 200 (a predict names it: 400)."""
    plain = requests.get(f"{rest_url}/v1/models/seg", timeout=10)
    labelled = requests.get(f"{rest_url}/v1/models/seg/labels/stable", timeout=10)
    assert labelled.status_code == 200 and labelled.json() == plain.json()


def test_base64_as_absl_unescapes_it(rest_url, real_tiles):
    """json_tensor.cc decodes `{"b64": ...}` with absl::Base64Unescape: line breaks
    (`base64.encodebytes`' 76 columns) are skipped and the padding may be left out."""
    buffer = io.BytesIO()
    Image.fromarray(real_tiles[0].astype(np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    answers = []
    for text in (base64.b64encode(png).decode(), base64.encodebytes(png).decode(), base64.b64encode(png).decode().rstrip("=")):
        r = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "serving_bytes", "instances": [{"b64": text}]})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert answers[1] == answers[0] and answers[2] == answers[0]
    bad = post(f"{rest_url}/v1/models/seg:predict", {"signature_name": "serving_bytes", "instances": [{"b64": "QQ?Q"}]})
    assert bad.status_code == 400 and "Unable to base64 decode" in error_of(bad)


def test_gzip_posts_as_evhttp_request_test(server, rest_url, real_tiles):
    """EvHTTPRequestTest.ValidGzipPost / LargeGzipPost / InvalidGzipPost: a body whose
    Content-Encoding names gzip is inflated before it is parsed; one that does not inflate reads
    as empty. Beyond TF Serving: a body that inflates past the body limit is refused (429)."""
    import gzip

    body = json.dumps({"instances": [real_tiles[0].astype(np.uint8).tolist()], "signature_name": "serving_uint8"}).encode()
    plain = post(f"{rest_url}/v1/models/seg:predict", body)
    assert plain.status_code == 200, plain.text
    for encoding in ("gzip", "my_gzip"):
        r = post(f"{rest_url}/v1/models/seg:predict", gzip.compress(body), headers={"Content-Encoding": encoding})
        assert r.status_code == 200, r.text
        assert r.json() == plain.json()
    invalid = post(f"{rest_url}/v1/models/seg:predict", b"abcde", headers={"Content-Encoding": "gzip"})
    assert invalid.status_code == 400 and error_of(invalid) == "JSON Parse error: The document is empty"
    bomb = gzip.compress(b'{"instances": [' + b" " * (64 << 20) + b"1]}")  # 64 MiB of JSON in ~64 kB
    r = post(f"{rest_url}/v1/models/seg:predict", bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 429 and "once inflated" in error_of(r)
    assert requests.get(f"{rest_url}/v1/models/seg", timeout=10).status_code == 200
