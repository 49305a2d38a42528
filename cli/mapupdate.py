"""`geolabel mapupdate`: what to change in OSM (new / missing / shifted / unchanged buildings)."""

from __future__ import annotations

import json

import click

from geolabel.data.vectors import VECTOR_FORMATS


@click.command("mapupdate")
@click.argument("image", type=click.Path())
@click.option("--osm", "osm_path", required=True, type=click.Path(),
              help="Existing buildings: OSM XML (.osm/.osm.bz2 from JOSM or Overpass `out meta`: shifts become node "
              "modifies in the .osc) or any vector file (e.g. GeoJSON with osm_id: shifts go to changes.osm for review).")
@click.option("--model", "model_path", type=click.Path(), help="Segmentation model or AlignUpdateNet (.keras or run folder).")
@click.option("--probabilities", "prob_path", type=click.Path(), help="Use this probabilities.tif (from `geolabel predict`) instead of --model.")
@click.option("--endpoint", default=None, help="TF Serving REST URL http://HOST:8501/v1/models/NAME instead of --model.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Output folder.")
@click.option("--downsample", default=1, show_default=True, type=click.IntRange(1), help="Average the image down by this factor first.")
@click.option("--max-shift", default=12, show_default=True, type=click.IntRange(1), help="Largest shift searched, pixels.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Building probability threshold.")
@click.option("--min-confidence", default=None, type=click.FloatRange(0, 1),
              help="Changes at or above go to changes.osc, the rest to the review layer only. "
              "[default: DiffParams.min_confidence, chosen for precision >= 0.9 on cities other than the benchmark's]")
@click.option("--align", "align_path", type=click.Path(),
              help="Alignment model (.keras, `geolabel align-train`): align the map to the image first, so a "
              "misregistration of the whole map is not reported as shifted buildings.")
@click.option("--source", default="geolabel", show_default=True, help="Value of the source tag in the .osc.")
@click.option("--vector-format", "vector_formats", multiple=True, type=click.Choice(VECTOR_FORMATS), default=("geojson",),
              show_default=True, help="Format(s) of the changes review layer (repeat for several).")
@click.option("--pmtiles", is_flag=True, help="Also write changes.pmtiles: the review layer as vector tiles for web maps.")
def mapupdate(
    image: str, osm_path: str, model_path: str | None, prob_path: str | None, endpoint: str | None, out_dir: str,
    downsample: int, max_shift: int, threshold: float, min_confidence: float | None, align_path: str | None,
    source: str, vector_formats: tuple[str, ...] = ("geojson",), pmtiles: bool = False,
) -> None:
    """Compare predictions on IMAGE with --osm; write changes.geojson (every change, for review), changes.osc
    (confident, uploadable changes), changes.osm (confident corrections that are not uploadable), summary.json,
    preview.png and item.json (STAC)."""
    from geolabel.mapupdate.diff import DiffParams
    from geolabel.cli import output
    from geolabel.data.stac import imagery_attribution, write_item
    from geolabel.mapupdate.update import map_update_files

    output(out_dir, command="mapupdate", marks=("changes.*",), inputs=(image, osm_path, model_path, prob_path, align_path))
    params = DiffParams(threshold=threshold, max_shift=max_shift)
    if min_confidence is not None:
        params.min_confidence = min_confidence
    if endpoint:  # the served model labels the image through the same path as `geolabel predict`
        from geolabel.errors import InputError
        from geolabel.mapupdate.update import predict_probabilities
        from geolabel.serving.client import ServingClient

        if model_path or prob_path:
            raise InputError("--endpoint", "give one of --endpoint, --model and --probabilities")
        with ServingClient(endpoint) as client:  # 256 px windows keep each JSON request within body limits
            prob_path = predict_probabilities(image, out_dir, predict_fn=client, window=256, overlap=32)
    imagery_credit = imagery_attribution(image)
    summary = map_update_files(image, osm_path, out_dir, model_path, prob_path, downsample, params, source,
                               align_path=align_path, vector_formats=vector_formats, pmtiles=pmtiles,
                               attribution=imagery_credit)
    write_item(out_dir, image, model=endpoint or model_path or prob_path, sources=[image, osm_path],
               attribution=imagery_credit, osm=True)
    click.echo(json.dumps(summary["counts"]))
