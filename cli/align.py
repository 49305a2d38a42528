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
@click.option("--factors", help="Passes as coarse-to-fine downsampling factors, e.g. 4,2,1 or 1 (one full-resolution "
              "pass). Default: geolabel.align.apply.FACTORS (two full-resolution passes).")
@click.option("--tile", default=512, show_default=True, type=click.IntRange(32), help="Tile size for prediction.")
@click.option("--tta/--no-tta", default=True, show_default=True, help="Average the field over the 8 dihedral transforms (8x the work).")
@click.option("--smooth", type=click.FloatRange(0), help="Width (px) of the Gaussian that pools the field over neighbouring "
              "buildings; 0 = off. Default: geolabel.align.apply.SMOOTH_PX, chosen on validation data.")
def align(image: str, labels: str, model_path: str, out_path: str, downsample: int, factors: str, tile: int,
          tta: bool, smooth: float | None) -> None:
    """Align the polygons of LABELS to IMAGE and write them to --out."""
    from geolabel.align.apply import align_file
    from geolabel.cli import output
    from geolabel.errors import InputError

    options = {"tta": tta}
    if smooth is not None:
        options["smooth"] = smooth
    if factors is not None:
        try:
            options["factors"] = tuple(int(f) for f in factors.split(",") if f.strip())
        except ValueError:
            raise InputError("--factors", f"expected comma-separated integers, got {factors!r}") from None
        if not options["factors"] or min(options["factors"]) < 1:
            raise InputError("--factors", "needs at least one factor >= 1")
    output(out_path, command="align", folder=False, inputs=(image, labels, model_path))
    summary = align_file(image, labels, model_path, out_path, downsample, tile=tile, **options)
    click.echo(json.dumps(summary))


@click.command("align-train")
@click.option("--scene", "scenes", nargs=2, multiple=True, type=click.Path(), metavar="IMAGE LABELS",
              help="An image and its (misregistered) polygons, e.g. OSM; repeatable.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of AlignerConfig options.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(), help="Model to write (.keras; state beside it as .keras.json).")
@click.option("--downsample", type=int, help="Average the images down by this factor (the resolution `align` will use).")
@click.option("--amplitude", type=float, help="Largest synthetic misregistration trained on, pixels.")
@click.option("--crop", type=int, help="Training crop side, pixels (a multiple of 32, the aligner's stride).")
@click.option("--steps", type=int, help="Optimiser steps.")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@click.option("--time-limit", "time_limit_s", type=float, help="Stop after this many seconds (resume later with --resume).")
@click.option("--save-every", default=100, show_default=True, type=click.IntRange(1), help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run saved at --out.")
def align_train(scenes, config_path, out_path, time_limit_s, save_every, resume, **options) -> None:
    """Train a multiscale alignment model on real polygons under random smooth misregistrations."""
    from geolabel.align.training import AlignerConfig, train_aligner_files
    from geolabel.cli import output
    from geolabel.config import load_config

    output(out_path, command="align-train", folder=False, inputs=[path for scene in scenes for path in scene])

    config = load_config(AlignerConfig, config_path, **options)
    state = train_aligner_files(scenes, out_path, config, resume, time_limit_s, save_every)
    click.echo(json.dumps({"steps": state["steps"], "final_loss": state["loss"][-1] if state["loss"] else None,
                           "seconds": round(state["seconds"], 1)}))
    click.echo(f"wrote {out_path}")
