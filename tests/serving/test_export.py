"""`geolabel export`: signatures, padding, warm-up records, saved_model_cli, atomic versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def test_signatures_pad_and_match_keras(model_base, tiny_runs, real_tiles):
    import keras
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_base / "1"))
    assert set(loaded.signatures) == {"serving_default", "serving_uint8", "serving_bytes", "serving_info", "polygons", "map_update"}
    model = keras.saving.load_model(tiny_runs["seg"], compile=False)
    out = loaded.signatures["serving_default"](images=tf.constant(real_tiles))
    np.testing.assert_allclose(out["probabilities"].numpy(), np.asarray(model(real_tiles)), atol=1e-5)
    odd = loaded.signatures["serving_default"](images=tf.constant(real_tiles[:, :7, :30]))
    assert odd["probabilities"].shape == (4, 7, 30, 2) and odd["classes"].dtype == tf.int64
    poly = keras.saving.load_model(tiny_runs["poly"], compile=False)
    patches = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    vertices = loaded.signatures["polygons"](patches=tf.constant(patches))["vertices"].numpy()
    np.testing.assert_allclose(vertices.reshape(3, 8), np.asarray(poly(patches)), atol=1e-5)


def test_warmup_records_and_metadata(model_base, tiny_runs):
    import keras
    import tensorflow as tf

    from geolabel.models import stride_of

    from tensorflow_serving.apis import prediction_log_pb2

    extra = model_base / "1" / "assets.extra"
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(extra / "tf_serving_warmup_requests"))
    ]
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == {
        "serving_default", "serving_uint8", "serving_bytes", "serving_info", "polygons", "map_update"
    }
    meta = json.loads((extra / "geolabel.json").read_text())
    stride = stride_of(keras.saving.load_model(tiny_runs["seg"], compile=False))
    assert meta["stride"] == stride and meta["bands"] == 3 and meta["num_classes"] == 2
    info = tf.saved_model.load(str(model_base / "1")).signatures["serving_info"](batch=tf.zeros([2], tf.int32))
    assert info["stride"].numpy().tolist() == [stride, stride]  # what clients without the assets read
    assert not [p.name for p in model_base.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_saved_model_cli_lists_signatures(model_base):
    cli = Path(sys.executable).with_name("saved_model_cli")
    result = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(model_base / "1")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("serving_default", "serving_uint8", "serving_bytes", "serving_info", "polygons", "map_update"):
        assert f"signature_def['{name}']" in result.stdout
    assert "Method name is: tensorflow/serving/predict" in result.stdout
    assert "dtype: DT_STRING" in result.stdout


def test_export_cli_and_existing_version(tiny_runs, tmp_path):
    from click.testing import CliRunner

    from geolabel.cli import cli
    from geolabel.errors import InputError

    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(tiny_runs["seg"]), "--out", str(tmp_path / "base"), "--version", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "base" / "3" / "saved_model.pb").is_file()
    again = runner.invoke(cli, ["export", str(tiny_runs["seg"]), "--out", str(tmp_path / "base"), "--version", "3"])
    assert isinstance(again.exception, InputError) and "already exists" in str(again.exception)
    with pytest.raises(InputError, match="run folder"):
        from geolabel.models import load_model

        load_model(tmp_path)


def test_version_policies_select_versions():
    from tensorflow_serving.config import model_server_config_pb2

    from geolabel.serving.server import ModelManager

    config = model_server_config_pb2.ModelConfig(name="m", base_path="/nonexistent")
    disk = {v: Path(str(v)) for v in (1, 2, 5, 9)}
    assert ModelManager(config).aspired(disk) == {9}
    config.model_version_policy.latest.num_versions = 3
    assert ModelManager(config).aspired(disk) == {9, 5, 2}
    config.model_version_policy.all.SetInParent()
    assert ModelManager(config).aspired(disk) == {1, 2, 5, 9}
    config.model_version_policy.specific.versions.extend([2, 7])
    assert ModelManager(config).aspired(disk) == {2}
