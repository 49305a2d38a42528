"""The package list in setup.cfg covers every package, and the layering holds."""

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    mapping = {"geolabel": "geolabel", "cli": "geolabel.cli", "pipelines": "geolabel.pipelines", "serving": "geolabel.serving"}
    found = set()
    for top, name in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == listed


def test_library_never_imports_the_shells():
    shells = re.compile(r"^\s*(from|import)\s+geolabel\.(cli|pipelines|serving)\b", re.M)
    offenders = [str(p) for p in (ROOT / "geolabel").rglob("*.py") if shells.search(p.read_text())]
    assert offenders == []


def test_models_use_only_keras():
    tf_use = re.compile(r"^\s*(import tensorflow|from tensorflow)", re.M)
    modules = [p for p in (ROOT / "geolabel" / "models").rglob("*.py") if not p.name.endswith("_test.py")]
    offenders = [str(p) for p in modules if tf_use.search(p.read_text())]
    assert offenders == []
