"""Fixtures of the serving tests: tiny real models exported once, and a running embedded server."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny segmentation, PolyCNN and align/update models saved as `.keras` files."""
    from geolabel.models import build_model
    from geolabel.models.align_update import AlignUpdateNet
    from geolabel.models.polycnn import build_polycnn

    root = tmp_path_factory.mktemp("runs")
    seg = build_model("unet", 2, depth=2, width=4, norm="batch")  # pointwise at inference: windows of any size agree
    seg.save(root / "seg.keras")
    poly = build_polycnn(patch=32, width=4, encoder_hidden=8, code=8, decoder_hidden=8)
    poly.save(root / "poly.keras")
    align = AlignUpdateNet(image_base=4, map_base=2, depth=3)
    align((np.zeros((1, 8, 8, 3), "float32"), np.zeros((1, 8, 8, 3), "float32")))
    align.save(root / "align.keras")
    return {"seg": root / "seg.keras", "poly": root / "poly.keras", "align": root / "align.keras"}


@pytest.fixture(scope="session")
def model_base(tiny_runs, tmp_path_factory) -> Path:
    """BASE with version 1 exported with all five signatures (never modified by tests)."""
    from geolabel.serving.export import export_run

    base = tmp_path_factory.mktemp("export") / "seg"
    export_run(tiny_runs["seg"], base, 1, polycnn_run=tiny_runs["poly"], align_update_run=tiny_runs["align"])
    return base


def copy_version(src: Path, base: Path, version: int) -> Path:
    """Copy a version folder into `base` atomically (hidden temp name, then rename)."""
    tmp = base / f".copy-{version}"
    shutil.copytree(src, tmp)
    final = base / str(version)
    tmp.rename(final)
    return final


@pytest.fixture(scope="session")
def server(model_base):
    """The embedded server on 127.0.0.1 (free ports) serving model `seg` from `model_base`."""
    from geolabel.serving.server import ModelServer

    srv = ModelServer(
        model_name="seg",
        model_base_path=model_base,
        rest_api_port=0,
        port=0,
        host="127.0.0.1",
        poll_seconds=0.5,
        max_body_bytes=4 << 20,
    ).start()
    srv.wait_available(timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def rest_url(server) -> str:
    return f"http://127.0.0.1:{server.rest_port}"


@pytest.fixture(scope="session")
def real_tiles() -> np.ndarray:
    """Four real 32x32 RGB crops of the bundled Inria Austin sample, float32 in [0, 255]."""
    from geolabel.models.testing import real_batch

    x, _ = real_batch(size=32, count=4)
    return x
