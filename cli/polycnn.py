"""`geolabel polycnn-train`: pre-train PolyCNN on artificial quadrilaterals, then on real buildings."""

from __future__ import annotations

import json

import click


@click.command("polycnn-train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file of PolyCNNConfig options.")
@click.option("--data-root", help="Folder of city folders (each with tiles/{z}/{x}/{y}.jpg and osm-buildings.geojson).")
@click.option("--train-city", "train_cities", multiple=True, help="Training city folder name (repeat for several).")
@click.option("--val-city", help="Held-out city folder name.")
@click.option("--zoom", type=int, help="Tile zoom level to read.")
@click.option("--width", type=int, help="Channels of the feature extractor's first stage.")
@click.option("--batch-size", type=int)
@click.option("--pretrain-steps", type=int, help="Steps on the artificial quadrilaterals (0 to skip).")
@click.option("--steps", type=int, help="Steps on the real buildings.")
@click.option("--decoder-frozen-steps", type=int, help="First real steps with the decoder frozen.")
@click.option("--extractor-frozen-steps", type=int, help="First real steps with the feature extractor frozen.")
@click.option("--learning-rate", type=float)
@click.option("--transfer", type=click.Choice(["decoder", "all"]), help="What the artificial pre-training passes on.")
@click.option("--feature-weights", type=click.Path(dir_okay=False), help="Local weights file for the feature extractor.")
@click.option("--seed", type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
def polycnn_train(config_path: str | None, train_cities: tuple[str, ...], out_dir: str, **options) -> None:
    """Train PolyCNN (4-vertex polygon regression) and score it on a held-out city."""
    from geolabel.cli import output
    from geolabel.config import load_config
    from geolabel.vectorize.polycnn import PolyCNNConfig, train_polycnn

    config = load_config(PolyCNNConfig, config_path, train_cities=list(train_cities) or None, **options)
    output(out_dir, command="polycnn-train", marks=("config.yaml",), inputs=(config_path,))
    metrics = train_polycnn(config, out_dir)
    click.echo(json.dumps(metrics["val"], indent=2))
    click.echo(f"wrote {out_dir}/model.keras")
