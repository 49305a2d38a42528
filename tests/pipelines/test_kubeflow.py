"""`geolabel pipeline compile --target kubeflow`: a valid KubeflowV2 spec naming every component."""

from __future__ import annotations

import json
from pathlib import Path

import geolabel.pipelines
from geolabel.cli import main

EXAMPLE = Path(geolabel.pipelines.__file__).with_name("example.yaml")


def test_compile_writes_valid_spec_with_every_component(tmp_path, capsys):
    from geolabel.pipelines.pipeline import NODE_IDS

    out = tmp_path / "spec.json"
    try:
        main(["pipeline", "compile", "--config", str(EXAMPLE), "--target", "kubeflow", "--output", str(out)])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    assert f"wrote {out}" in capsys.readouterr().out
    spec = json.loads(out.read_text())
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for node in NODE_IDS:
        assert any(task == node or task.startswith(node + "-") for task in tasks), (node, sorted(tasks))
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {"europe-docker.pkg.dev/PROJECT/geolabel/geolabel:latest"}
    text = out.read_text()
    assert "DataflowRunner" in text and "gs://BUCKET/geolabel/serving/buildings" in text
    assert "geolabel.pipelines.trainer_module.run_fn" in text
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://BUCKET/geolabel/pipeline_root"
