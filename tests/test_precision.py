"""The compute precision policy: bfloat16 where the CPU has bf16 units, float32 otherwise,
probabilities always float32, and the same predictions as float32 on real imagery."""

from __future__ import annotations

import numpy as np
import pytest

from geolabel.errors import InputError
from geolabel.precision import cpu_has_bf16, resolve_precision, with_precision

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the policy at a written /proc/cpuinfo."""
    import geolabel.precision as precision

    def use(text: str) -> None:
        path = tmp_path / f"cpuinfo-{abs(hash(text))}"  # one file per content: the reader caches by path
        path.write_text(text)
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: cpu_has_bf16(path))

    return use


def test_auto_picks_bfloat16_on_cpus_with_bf16_units_and_float32_elsewhere(cpuinfo):
    cpuinfo(SAPPHIRE_RAPIDS)
    assert resolve_precision("auto", on_gpu=False) == "bfloat16"
    cpuinfo(SKYLAKE)
    assert resolve_precision("auto", on_gpu=False) == "float32"
    assert resolve_precision("auto", on_gpu=True) == "float16"
    assert resolve_precision("float32", on_gpu=True) == "float32"  # forced either way
    assert resolve_precision("bfloat16", on_gpu=False) == "bfloat16"
    with pytest.raises(InputError, match="--precision"):
        resolve_precision("half")


def test_this_machine_reads_its_own_flags():
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.fixture(scope="module")
def austin_window(shared_data):
    import rasterio

    with rasterio.open(shared_data / "inria-austin" / "image.tif") as src:
        return src.read(window=((0, 256), (0, 256))).transpose(1, 2, 0)[None].astype("float32")


@pytest.mark.parametrize("name,config", [("fcn", {"downsample": 2}), ("unet", {"depth": 2, "width": 8})])
def test_bfloat16_copy_predicts_float32_probabilities_like_the_model(name, config, austin_window):
    import keras

    from geolabel.models import build_model
    from geolabel.predict import KerasPredictor

    keras.utils.set_random_seed(1)
    model = build_model(name, 2, **config)
    half = with_precision(model, "bfloat16")
    from geolabel.models.layers import all_layers

    assert all(layer.dtype_policy.name == "float32" for layer in all_layers(model))  # the model is untouched
    assert half.layers[-1].dtype_policy.name == "float32"  # softmax stays float32
    inner = [layer for layer in list(all_layers(half))[1:-1] if not isinstance(layer, (keras.Model, keras.layers.InputLayer))]
    assert {layer.compute_dtype for layer in inner} == {"bfloat16"}
    full = np.asarray(model(austin_window))
    predictor = KerasPredictor(model, precision="bfloat16")
    out = predictor(austin_window)
    assert out.dtype == np.float32 and out.shape == full.shape
    assert np.abs(out - full).mean() < 0.01 and np.abs(out - full).max() < 0.1
    assert (out.argmax(-1) == full.argmax(-1)).mean() > 0.97
    np.testing.assert_allclose(KerasPredictor(model, precision="float32")(austin_window), full, atol=1e-4)
    assert KerasPredictor(model).precision == resolve_precision("auto", on_gpu=False)
