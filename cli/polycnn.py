"""`geolabel polycnn-train`: pre-train PolyCNN on artificial quadrilaterals, then on real buildings."""

from __future__ import annotations

import json

import click

SCENE = dict(nargs=2, multiple=True, type=click.Path(), metavar="IMAGERY LABELS")


@click.command("polycnn-train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of PolyCNNConfig options.")
@click.option("--train", **SCENE, help="A training scene: an RGB raster or XYZ tile folder, and its building outlines "
              "(a `geolabel fetch` dataset: DIR/imagery.tif DIR/labels.gpkg); repeatable.")
@click.option("--val", **SCENE, help="A held-out scene the run is scored on, as --train; repeatable.")
@click.option("--zoom", type=int, help="Zoom level read from tile-folder imagery (needed when it holds several).")
@click.option("--width", type=int, help="Channels of the feature extractor's first stage.")
@click.option("--batch-size", type=int)
@click.option("--pretrain-steps", type=int, help="Steps on the artificial quadrilaterals (0 to skip).")
@click.option("--steps", type=int, help="Steps on the real buildings.")
@click.option("--decoder-frozen-steps", type=int, help="First real steps with the decoder frozen.")
@click.option("--extractor-frozen-steps", type=int, help="First real steps with the feature extractor frozen.")
@click.option("--lr", type=float)
@click.option("--transfer", type=click.Choice(["decoder", "all"]), help="What the artificial pre-training passes on.")
@click.option("--feature-weights", type=click.Path(dir_okay=False), help="Local weights file for the feature extractor.")
@click.option("--seed", type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
def polycnn_train(
    config_path: str | None,
    train: tuple[tuple[str, str], ...],
    val: tuple[tuple[str, str], ...],
    out_dir: str,
    **options,
) -> None:
    """Train PolyCNN (4-vertex polygon regression) and score it on held-out scenes."""
    from geolabel.cli import output
    from geolabel.config import load_config
    from geolabel.vectorize.polycnn.samples import Scene
    from geolabel.vectorize.polycnn.training import PolyCNNConfig, train_polycnn

    scenes = {name: [Scene(*pair) for pair in pairs] or None for name, pairs in (("train", train), ("val", val))}
    config = load_config(PolyCNNConfig, config_path, **scenes, **options)
    output(out_dir, command="polycnn-train", marks=("config.yaml",),
           inputs=(config_path, *(path for s in (*config.train, *config.val) for path in (s.imagery, s.labels))))
    metrics = train_polycnn(config, out_dir)
    click.echo(json.dumps(metrics["val"], indent=2))
    click.echo(f"wrote {out_dir}/model.keras")
