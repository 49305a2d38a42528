"""`geolabel evaluate`: Inria-protocol pixel metrics and polygon metrics of predictions."""

from __future__ import annotations

import json

import click


@click.command("evaluate")
@click.argument("pred", type=click.Path())
@click.argument("truth", metavar="GT", type=click.Path())
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Report folder.")
@click.option("--polygons", "polygonizer", default="regularized", show_default=True,
              help="Polygoniser for predictions without a polygons file; 'none' skips polygon metrics.")
@click.option("--separate/--no-separate", default=True, show_default=True,
              help="Split touching predicted buildings before polygonising (as predict --polygons does).")
@click.option("--image", default=None, type=click.Path(), help="Imagery under the overlay (single file).")
@click.option("--city", default=None, help="City name (default: the leading letters of each file name).")
@click.option("--gt-polygons", default=None, type=click.Path(), help="Reference polygons for the polygon metrics (single file).")
@click.option("--iou-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Polygon match IoU.")
def evaluate(pred: str, truth: str, out_dir: str, polygonizer: str, separate: bool, image: str | None, city: str | None,
             gt_polygons: str | None, iou_threshold: float) -> None:
    """Score PRED (a predict folder, class raster, or folder of them) against GT (raster or vectors)."""
    from geolabel.cli import output
    from geolabel.evaluate import evaluate as run

    output(out_dir, command="evaluate", marks=("evaluation.json",), inputs=(pred, truth, image, gt_polygons))
    report = run(pred, truth, out_dir, polygons=None if polygonizer == "none" else polygonizer, separate=separate, image=image,
                 city=city, truth_polygons=gt_polygons, iou_threshold=iou_threshold)
    overall = {k: report["overall"][k] for k in ("iou", "accuracy", "mean_iou")}
    if "polygons" in report["overall"]:
        overall.update({f"polygon_{k}": report["overall"]["polygons"][k] for k in ("precision", "recall", "f1", "found_at_0.25", "polis")})
    click.echo(json.dumps(overall))
