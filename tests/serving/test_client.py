"""The REST client as a predict_fn: same numbers as in-process, concurrency, PNG encoding, bad endpoints."""

from __future__ import annotations

import numpy as np
import pytest

from geolabel.errors import FetchError, InputError
from geolabel.serving.client import ServingClient


def test_client_matches_in_process(rest_url, tiny_runs, real_tiles):
    import keras

    model = keras.saving.load_model(tiny_runs["seg"], compile=False)
    with ServingClient(f"{rest_url}/v1/models/seg", concurrency=3, rows_per_request=1) as client:
        client.wait_available(timeout=10)
        probs = client(real_tiles)
        assert probs.shape == (4, 32, 32, 2) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, np.asarray(model(real_tiles)), atol=1e-5)
        assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
        assert "serving_bytes" in client.metadata()["metadata"]["signature_def"]["signature_def"]
        out = client.predict({"patches": np.full((1, 32, 32, 3), 50.0)}, signature_name="polygons")
        assert out["output"].shape == (1, 4, 2)
    with ServingClient(f"{rest_url}/v1/models/seg/versions/1:predict", encoding="png") as client:
        png = client(np.rint(real_tiles))
    np.testing.assert_allclose(png, np.asarray(model(np.rint(real_tiles))), atol=1e-5)


def test_client_errors(rest_url):
    for bad in ("ftp://x/v1/models/a", "http://127.0.0.1:1/v2/models/a", "http://127.0.0.1:1/v1/models/a/b"):
        with pytest.raises(InputError):
            ServingClient(bad)
    with pytest.raises(InputError, match="Servable not found"):
        ServingClient(f"{rest_url}/v1/models/nope")(np.zeros((1, 8, 8, 3)))
    with pytest.raises(FetchError):
        ServingClient("http://127.0.0.1:9/v1/models/a", retries=2, timeout=2)(np.zeros((1, 8, 8, 3)))
