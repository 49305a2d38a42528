"""`geolabel predict`: label every pixel of a raster of any size; optionally vectorise."""

from __future__ import annotations

import contextlib
import json

import click

from geolabel.cli import output
from geolabel.data.vectors import VECTOR_FORMATS
from geolabel.precision import PRECISIONS
from geolabel.predict.predictor import DEFAULT_TTA, TTA_TRANSFORMS
from geolabel.vectorize.separate import DEFAULT_MIN_CONFIDENCE


@click.command("predict")
@click.argument("model", type=click.Path(), required=False)
@click.argument("input_path", metavar="INPUT", type=click.Path(), required=False)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Output folder.")
@click.option("--window", default=1024, show_default=True, type=click.IntRange(16),
              help="Largest window side, pixels (shrunk to the smallest side that needs as many windows).")
@click.option("--overlap", default=64, show_default=True, type=click.IntRange(0), help="Overlap of neighbouring windows, pixels.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1), help="Windows per model call.")
@click.option("--tta", default=str(DEFAULT_TTA), show_default=True, is_flag=False, flag_value="8",
              type=click.Choice([str(n) for n in TTA_TRANSFORMS]),
              help="Dihedral transforms averaged per window (test-time augmentation; 1 = off, --tta alone = all 8).")
@click.option("--bands", default=None, help="Comma-separated 1-based input bands (default: the first ones).")
@click.option("--scene-norm/--no-scene-norm", default=None,
              help="Map the input's colours to the reference first (default: as the MODEL run was trained).")
@click.option("--scene-contrast/--no-scene-contrast", default=None,
              help="With --scene-norm, also match band standard deviations (default: as the MODEL run was trained).")
@click.option("--xla/--no-xla", default=False, show_default=True, help="Compile the model step with XLA.")
@click.option("--polygons", "polygonizer", default=None, is_flag=False, flag_value="mesh",
              help="Also vectorise: mesh (alone, the default: best IoU per vertex), dp, regularized or polycnn.")
@click.option("--tolerance", default=0.5, show_default=True, type=click.FloatRange(0), help="Douglas-Peucker tolerance, metres.")
@click.option("--polycnn-model", default=None, type=click.Path(exists=True), help="PolyCNN run or .keras file, for --polygons polycnn.")
@click.option("--min-area", default=2.0, show_default=True, type=click.FloatRange(0), help="Smallest polygon kept, square metres.")
@click.option("--min-confidence", default=DEFAULT_MIN_CONFIDENCE, show_default=True, type=click.FloatRange(0, 1),
              help="Polygons whose mean class probability is lower are dropped (0 keeps all).")
@click.option("--separate/--no-separate", default=True, show_default=True,
              help="Split touching buildings along their narrow junctions: one polygon per building.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
              help="Compute precision: auto = bfloat16 on CPUs with bf16 units, float16 on GPUs, else float32.")
@click.option("--beam", is_flag=True, help="Run as an Apache Beam pipeline, one element per block (in-process DirectRunner unless --beam-args).")
@click.option("--beam-args", default="", help="Beam flags for --beam, e.g. '--runner=DataflowRunner --project=P --region=R'.")
@click.option("--endpoint", default=None, help="TF Serving REST URL http://HOST:8501/v1/models/NAME instead of MODEL.")
@click.option("--vector-format", "vector_formats", multiple=True, type=click.Choice(VECTOR_FORMATS),
              default=("gpkg", "geojson"), show_default=True, help="Format(s) of the --polygons file (repeat for several).")
@click.option("--pmtiles", is_flag=True, help="With --polygons, also write polygons.pmtiles: vector tiles for web maps.")
@click.option("--resample/--no-resample", default=True, show_default=True,
              help="Resample INPUT to the resolution MODEL was trained at when its model card says it differs.")
@click.option("--yes", is_flag=True, help="Predict an input of more than 4 gigapixels (refused otherwise, with its size).")
def predict(
    model: str, input_path: str, out_dir: str, window: int, overlap: int, batch_size: int, tta: str,
    bands: str | None, scene_norm: bool | None, scene_contrast: bool | None, xla: bool, polygonizer: str | None, tolerance: float, polycnn_model: str | None, min_area: float, min_confidence: float, separate: bool,
    precision: str, endpoint: str | None, resample: bool = True,
    beam: bool = False, beam_args: str = "", vector_formats: tuple[str, ...] = ("gpkg", "geojson"), pmtiles: bool = False,
    yes: bool = False,
) -> None:
    """Run MODEL over INPUT; write classes.tif, probabilities.tif, preview.png.

    MODEL is a run folder, a .keras file or `pretrained` (the building model shipped with
    geolabel, also used when only INPUT is given).
    """
    from geolabel.data.raster import open_raster
    from geolabel.errors import InputError
    from geolabel.models import load_model
    from geolabel.predict import keras_predict_fn
    from geolabel.predict.resample import model_resampling, predict_resampled
    from geolabel.predict.windows import MAX_PIXELS, check_job_size
    from geolabel.predict.run_inputs import RunInputs
    from geolabel.pretrained import PRETRAINED
    from geolabel.vectorize.polygons import BLOCK_POLYGONIZERS, PolygonSpec, StreamedPolygons

    band_list = None
    if bands:
        try:
            band_list = [int(b) for b in bands.split(",")]
        except ValueError:
            raise InputError("--bands", f"expected comma-separated integers, got {bands!r}") from None
    if polygonizer is not None:
        from geolabel.vectorize import POLYGONIZERS

        if polygonizer not in POLYGONIZERS:
            raise InputError("--polygons", f"unknown polygoniser {polygonizer!r}; available: {', '.join(sorted(POLYGONIZERS))}")
        if polygonizer == "polycnn" and polycnn_model is None:
            raise InputError("--polycnn-model", "--polygons polycnn needs the PolyCNN model (geolabel polycnn-train writes one)")
    elif pmtiles:
        raise InputError("--pmtiles", "needs --polygons: the archive holds the polygons")
    spec = PolygonSpec(polygonizer, tolerance, min_area, min_confidence, separate) if polygonizer else None
    if input_path is None and model is not None:  # one argument: the input (`--endpoint URL`, or the shipped model)
        model, input_path = (None if endpoint else PRETRAINED), model
    if input_path is None or (model is None and not endpoint):
        raise click.UsageError("give MODEL and INPUT, or --endpoint URL and INPUT")
    output(out_dir, command="predict", marks=("classes.tif",), inputs=(input_path, model, polycnn_model))
    expects = RunInputs.of(model)  # scene normalisation, 16-bit scaling, resolution: read once
    factor, tags = model_resampling(expects.card, input_path, resample) if not endpoint else (1.0, {})
    with open_raster(input_path) as src:
        width, height, transform, crs = src.width, src.height, src.transform, src.crs
    check_job_size(width, height, input_path, factor, None if yes else MAX_PIXELS)
    client = None
    if endpoint:
        from geolabel.serving.client import ServingClient

        client = ServingClient(endpoint)  # an export carries its run's contract: it says if it standardises
        expects = RunInputs(scene_norm=client.standardizes_scenes)
    scene_norm = expects.scene_norm if scene_norm is None else scene_norm
    scene_contrast = expects.scene_contrast if scene_contrast is None else scene_contrast
    if beam:
        from geolabel.pipelines.beam_predict import predict_cli

        if endpoint:
            raise click.UsageError("--beam runs MODEL on the Beam workers; it does not take --endpoint")
        if factor != 1.0:
            raise click.UsageError("--beam predicts at the input's resolution; resample INPUT first or pass --no-resample")
        if pmtiles:
            raise click.UsageError("--beam writes polygons.gpkg and polygons.geojson only; drop --pmtiles")
        click.echo(json.dumps(predict_cli(model, input_path, out_dir, beam_args, window=window, overlap=overlap, batch_size=batch_size,
                                          tta=int(tta), bands=band_list, polygons=spec, scene_norm=scene_norm,
                                          scene_contrast=scene_contrast, scaling=expects.scaling)))
        return
    if polygonizer == "mesh":
        from geolabel.vectorize.mesh import start_workers_early

        start_workers_early(width, height)
    streamed = None  # block polygonisers on the input's grid take the tiles as they are written
    if polygonizer in BLOCK_POLYGONIZERS and factor == 1.0:
        streamed = StreamedPolygons(width, height, transform, crs, method=spec.method, **spec.options())
    predict_fn = client or keras_predict_fn(load_model(model), jit_compile=xla, precision=precision)
    with streamed or contextlib.nullcontext():
        result = predict_resampled(predict_fn, input_path, out_dir, factor=factor, window=window, overlap=overlap,
                                   batch_size=batch_size, tta=int(tta), bands=band_list, scene_norm=scene_norm,
                                   scene_contrast=scene_contrast, tags=tags, scaling=expects.scaling,
                                   on_tile=streamed.add if streamed else None)
    summary = {"classes": str(result.classes), "probabilities": str(result.probabilities),
               "preview": str(result.preview), "megapixels_per_second": round(result.megapixels_per_second, 3),
               **({"resampled": round(factor, 4)} if factor != 1.0 else {}), **tags}
    from geolabel.data.stac import imagery_attribution, write_item

    imagery_credit = imagery_attribution(input_path)
    if polygonizer is not None:
        from geolabel.vectorize.polygons import polygonize_raster, write_polygons

        extra = {"image": input_path, "model": polycnn_model} if polygonizer == "polycnn" else {}  # it reads the imagery
        frame = streamed.frame if streamed else polygonize_raster(result.classes, result.probabilities,
                                                                  method=spec.method, **spec.options(), **extra)
        credit = [*imagery_credit, *([tags["attribution"]] if "attribution" in tags else [])]  # the model card's line
        paths = write_polygons(frame, out_dir, "polygons", vector_formats, pmtiles=pmtiles, attribution=credit)
        summary.update({"polygons": str(next(iter(paths.values()))), **{f: str(p) for f, p in paths.items()}, "objects": len(frame)})
    summary["item"] = str(write_item(out_dir, result.classes, model=endpoint or model, sources=[input_path],
                                     attribution=imagery_credit))
    click.echo(json.dumps(summary))
