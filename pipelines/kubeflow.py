"""Compile the geolabel pipeline to a KubeflowV2 / Vertex AI Pipelines spec (JSON).

The same component graph as the local run; artifacts and the serving path live on
shared storage (`kubeflow.pipeline_root`, `kubeflow.serving`), every step runs in the
`kubeflow.image` container, and the Beam-using steps get Dataflow flags. Needs the
`kfp-pipeline-spec` package (the protobuf schema of the spec), not the KFP SDK.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from geolabel.atomic import write_text_atomic
from geolabel.errors import InputError
from geolabel.pipelines.config import PipelineConfig


class _Unavailable:
    """Stands for a TFX component whose optional dependencies are not installed (no node is one)."""


@contextlib.contextmanager
def _optional_components_as_types() -> Iterator[None]:
    """Make `tfx.components.X` a type while compiling, for components that failed to import.

    tfx.components sets e.g. InfraValidator to None when `kubernetes` is missing, and the
    KubeflowV2 step builder then fails on `isinstance(node, components.InfraValidator)`.
    """
    import tfx.components as tfx_components

    missing = [name for name in getattr(tfx_components, "__all__", []) if getattr(tfx_components, name, 0) is None]
    for name in missing:
        setattr(tfx_components, name, _Unavailable)
    try:
        yield
    finally:
        for name in missing:
            setattr(tfx_components, name, None)


class CompiledSpec(NamedTuple):
    """A compiled KubeflowV2 JSON as KFP protos: the job, its pipeline spec and deployment (executors)."""

    job: Any
    spec: Any
    deployment: Any


def parse_spec(text: str, source: str = "spec") -> CompiledSpec:
    """Parse compiled JSON into KFP's PipelineJob, PipelineSpec and PipelineDeploymentConfig protos.

    Unknown or mistyped fields are errors (InputError naming `source`), as on the cluster.
    """
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2 as kfp

    try:
        job = json_format.Parse(text, kfp.PipelineJob())
        spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), kfp.PipelineSpec())
        deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec), kfp.PipelineDeploymentConfig())
    except json_format.ParseError as err:
        raise InputError(source, f"not a valid KFP PipelineJob ({err})") from err
    return CompiledSpec(job, spec, deployment)


def compile_kubeflow(config: PipelineConfig, output: str | os.PathLike | None = None) -> Path:
    """Write the KubeflowV2 pipeline spec of `config` to `output` (default `kubeflow.output`); return its path."""
    try:
        from tfx.components import Trainer  # noqa: F401  (tfx.components before TFDV)
        from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
    except ImportError as err:
        raise InputError("--target kubeflow", f"needs the kfp-pipeline-spec package ({err})") from err

    from geolabel.pipelines.pipeline import create_pipeline

    kf = config.kubeflow
    if not kf.image or any(c.isspace() for c in kf.image):
        raise InputError("kubeflow.image", f"{kf.image!r} is not a container image name (e.g. REGISTRY/geolabel:TAG)")
    output = Path(output or kf.output)
    tfx_pipeline = create_pipeline(
        config,
        pipeline_root=kf.pipeline_root,
        serving_base=f"{kf.serving.rstrip('/')}/{config.name}",
        metadata_path=False,  # the cluster's own ML Metadata store
        beam_args=kf.dataflow_beam_args(),
    )
    with tempfile.TemporaryDirectory() as tmp, _optional_components_as_types():
        runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
            config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=kf.image),
            output_dir=tmp,
            output_filename="pipeline.json",
        )
        runner.run(tfx_pipeline, write_out=True)
        text = Path(tmp, "pipeline.json").read_text()
    parse_spec(text, "compiled spec")  # fail here rather than on the cluster
    write_text_atomic(output, text)
    return output
