"""`geolabel align`: move a map's polygons onto the image with a trained alignment model."""

from __future__ import annotations

import json

import click


@click.command("align")
@click.argument("image", type=click.Path())
@click.argument("labels", type=click.Path())
@click.option("--model", "model_path", required=True, type=click.Path(), help="Saved .keras MultiscaleAligner or AlignUpdateNet.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(), help="Corrected vectors (.gpkg or .geojson).")
@click.option("--downsample", default=1, show_default=True, type=click.IntRange(1), help="Average the image down by this factor first (the model's training resolution).")
@click.option("--factors", default="1", show_default=True, help="Coarse-to-fine downsampling factors, e.g. 4,2,1.")
@click.option("--tile", default=512, show_default=True, type=click.IntRange(32), help="Tile size for prediction.")
def align(image: str, labels: str, model_path: str, out_path: str, downsample: int, factors: str, tile: int) -> None:
    """Align the polygons of LABELS to IMAGE and write them to --out."""
    from geolabel.align.apply import align_file
    from geolabel.errors import InputError

    try:
        steps = tuple(int(f) for f in factors.split(",") if f.strip())
    except ValueError:
        raise InputError("--factors", f"expected comma-separated integers, got {factors!r}") from None
    if not steps or min(steps) < 1:
        raise InputError("--factors", "needs at least one factor >= 1")
    summary = align_file(image, labels, model_path, out_path, downsample, steps, tile)
    click.echo(json.dumps(summary))
