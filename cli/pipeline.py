"""`geolabel pipeline`: run the TFX pipeline locally, or compile it for Kubeflow / Vertex AI."""

from __future__ import annotations

import click


@click.group()
def pipeline() -> None:
    """The fetch -> pretrain -> fine-tune -> evaluate -> push TFX pipeline."""


CONFIG_HELP = "Pipeline YAML file (pipelines/example.yaml runs offline on the bundled sample)."
SET_HELP = "Override one key of the config, KEY.PATH=YAML_VALUE (e.g. pretrain_budget.epochs=1); repeatable."


@pipeline.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--root", default=None, help="Override paths.root (pipeline root, metadata and serving live under it).")
@click.option("--min-iou", type=float, default=None, help="Override thresholds.min_iou.")
@click.option("--no-cache", is_flag=True, help="Run every step even if its inputs are unchanged.")
def run(config_path: str, settings: tuple[str, ...], root: str | None, min_iou: float | None, no_cache: bool) -> None:
    """Run the pipeline here: LocalDagRunner, SQLite ML Metadata, Beam in-process, with caching."""
    from geolabel.pipelines.config import load_pipeline_config

    config = load_pipeline_config(config_path, settings)
    if root is not None:
        config.paths.root = root
    if min_iou is not None:
        config.thresholds.min_iou = min_iou
        config.check()
    if no_cache:
        config.cache = False
    from geolabel.pipelines.pipeline import run_pipeline

    report = run_pipeline(config)
    click.echo(report.summary())


@pipeline.command("compile")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--target", type=click.Choice(["kubeflow"]), default="kubeflow", show_default=True, help="Orchestrator.")
@click.option("--image", default=None,
              help="Container image built from geolabel's Dockerfile, for every step and the Dataflow workers "
                   "(default: kubeflow.image of the config).")
@click.option("--output", default=None, help="Spec file to write (default: kubeflow.output of the config).")
def compile_(config_path: str, settings: tuple[str, ...], target: str, image: str | None, output: str | None) -> None:
    """Write the KubeflowV2 / Vertex AI pipeline spec (JSON), with Dataflow Beam args."""
    from geolabel.pipelines.config import load_pipeline_config
    from geolabel.pipelines.kubeflow import compile_kubeflow

    config = load_pipeline_config(config_path, settings)
    if image is not None:
        config.kubeflow.image = image
    path = compile_kubeflow(config, output)
    click.echo(f"wrote {path}")


