"""`geolabel serve` as a process: flags, bound ports printed, status over REST, clean stop."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests


@pytest.mark.slow
def test_serve_cli_process(model_base):
    proc = subprocess.Popen(
        [sys.executable, "-m", "geolabel.cli", "serve", "--model_base_path", str(model_base), "--model_name", "seg",
         "--rest_api_port", "0", "--port", "0", "--host", "127.0.0.1", "--max_batch_size", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving"):
                break
        rest = int(re.search(r"REST http://127.0.0.1:(\d+)/v1/models/seg", "".join(lines)).group(1))
        assert re.search(r"gRPC 127.0.0.1:\d+", "".join(lines))
        r = requests.get(f"http://127.0.0.1:{rest}/v1/models/seg", timeout=30)
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        proc.terminate()
        assert proc.wait(60) is not None


def test_serve_cli_rejects_missing_paths(tmp_path):
    from click.testing import CliRunner

    from geolabel.cli import cli
    from geolabel.errors import InputError

    result = CliRunner().invoke(cli, ["serve", "--model_base_path", str(tmp_path / "nope"), "--rest_api_port", "0"])
    assert isinstance(result.exception, InputError)
    result = CliRunner().invoke(cli, ["serve", "--model_config_file", str(tmp_path / "none.config")])
    assert isinstance(result.exception, InputError)
