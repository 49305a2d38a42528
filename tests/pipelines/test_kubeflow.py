"""`geolabel pipeline compile --target kubeflow`: a KubeflowV2 spec that KFP's protos accept, naming every
component and the container image built from the Dockerfile."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import geolabel.pipelines
from geolabel.cli import main
from geolabel.pipelines.kubeflow import parse_spec

EXAMPLE = Path(geolabel.pipelines.__file__).with_name("example.yaml")
IMAGE = "registry.example/team/geolabel:1.2.3"


def _compile(tmp_path: Path, capsys, *args: str):
    out = tmp_path / "spec.json"
    main(["pipeline", "compile", "--config", str(EXAMPLE), "--target", "kubeflow", "--output", str(out), *args])
    assert f"wrote {out}" in capsys.readouterr().out
    return out.read_text(), parse_spec(out.read_text(), str(out))


def _containers(compiled):
    return {name: e.container for name, e in compiled.deployment.executors.items() if e.HasField("container")}


def test_compile_writes_a_kfp_pipeline_job_with_every_component(tmp_path, capsys):
    from geolabel.pipelines.pipeline import NODE_IDS

    text, compiled = _compile(tmp_path, capsys)
    tasks = compiled.spec.root.dag.tasks
    for node in NODE_IDS:
        assert any(task == node or task.startswith(node + "-") for task in tasks), (node, sorted(tasks))
    assert {c.image for c in _containers(compiled).values()} == {"europe-docker.pkg.dev/PROJECT/geolabel/geolabel:latest"}
    assert "DataflowRunner" in text and "gs://BUCKET/geolabel/serving/buildings" in text
    assert "geolabel.pipelines.trainer_module.run_fn" in text
    assert compiled.job.runtime_config.gcs_output_directory == "gs://BUCKET/geolabel/pipeline_root"


def test_compiled_spec_names_the_configured_image_for_steps_and_dataflow(tmp_path, capsys):
    _, compiled = _compile(tmp_path, capsys, "--image", IMAGE)
    containers = _containers(compiled)
    assert len(containers) >= 5 and {c.image for c in containers.values()} == {IMAGE}
    for container in containers.values():
        assert f"--sdk_container_image={IMAGE}" in container.args  # Beam's workers run the same image
        # the image runs this command with the pinned environment; its entry module must import there
        assert list(container.command[:2]) == ["python", "-m"]
        importlib.import_module(container.command[2])
        executor = container.args[list(container.args).index("--executor_class_path") + 1]
        module, _, name = executor.rpartition(".")
        assert hasattr(importlib.import_module(module), name), executor


def test_bad_image_name_is_an_input_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "compile", "--config", str(EXAMPLE), "--image", "not an image", "--output", str(tmp_path / "x.json")])
    assert exit_.value.code == 2
    assert "kubeflow.image" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
