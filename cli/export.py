"""`geolabel export`: write a trained run as a TF Serving SavedModel version."""

from __future__ import annotations

import click

from geolabel.precision import EXPORT_PRECISIONS


@click.command("export")
@click.argument("run")
@click.option("--out", "out_base", required=True, type=click.Path(file_okay=False), help="Model base path (BASE/N/).")
@click.option("--version", "version", required=True, type=click.IntRange(min=0), help="Integer version folder to write.")
@click.option("--polycnn", "polycnn_run", type=click.Path(exists=True), help="PolyCNN run: adds the `polygons` signature.")
@click.option(
    "--align-update", "align_update_run", type=click.Path(exists=True), help="Align/update run: adds `map_update`."
)
@click.option("--model-name", default="geolabel", show_default=True, help="Model name written in the warm-up requests.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version folder.")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="float32", show_default=True,
              help="Compute type of the segmentation graph: bfloat16 for servers whose CPUs have AMX, float16 for GPU servers.")
def export(
    run: str,
    out_base: str,
    version: int,
    polycnn_run: str | None,
    align_update_run: str | None,
    model_name: str,
    overwrite: bool,
    precision: str,
) -> None:
    """Export RUN (a run folder, a .keras file or `pretrained`) to OUT/VERSION as a SavedModel that TF Serving loads."""
    from geolabel.cli import output
    from geolabel.serving.export import export_run

    output(out_base, command="export", marks=("[0-9]*",), inputs=(run, polycnn_run, align_update_run))
    path = export_run(
        run,
        out_base,
        version,
        polycnn_run=polycnn_run,
        align_update_run=align_update_run,
        model_name=model_name,
        overwrite=overwrite,
        precision=precision,
    )
    click.echo(f"wrote {path}")
