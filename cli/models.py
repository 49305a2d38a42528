"""`geolabel models`: the registered segmentation models with their size and cost."""

from __future__ import annotations

import click


@click.command()
@click.option("--num-classes", default=2, show_default=True, help="Classes the models are built for.")
@click.option("--size", default=256, show_default=True, help="Input side used to count FLOPs.")
def models(num_classes: int, size: int) -> None:
    """List the models with parameter counts, stride and FLOPs per pixel (default options)."""
    from geolabel.models import MODELS, build_model, stride_of
    from geolabel.perf import flops_per_pixel

    click.echo(f"{'model':<10} {'parameters':>12} {'stride':>7} {'kFLOP/px':>10}  description")
    for name in sorted(MODELS):
        model = build_model(name, num_classes)
        doc = (MODELS[name].__doc__ or "").strip().splitlines()[0]
        click.echo(
            f"{name:<10} {model.count_params():>12,} {stride_of(model):>7} "
            f"{flops_per_pixel(model, size) / 1e3:>10.1f}  {doc}"
        )
