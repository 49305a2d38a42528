import subprocess
import sys

import geolabel


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "geolabel.cli", *args], capture_output=True, text=True, timeout=300)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert geolabel.__version__ in result.stdout


def test_info_prints_every_version():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    for name in ("tensorflow", "keras", "tfx", "rasterio", "gdal", "osmnx", "keras backend", "devices"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(name))
        assert "not available" not in line, line


def test_unknown_command_fails_cleanly():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr
