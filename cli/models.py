"""`geolabel models`: the registered segmentation models with their size and cost."""

from __future__ import annotations

import click


@click.command()
@click.option("--num-classes", default=2, show_default=True, help="Classes the models are built for.")
@click.option("--size", default=256, show_default=True, help="Input side used to count FLOPs.")
def models(num_classes: int, size: int) -> None:
    """List the model families with parameter counts, stride and FLOPs per pixel (default options),
    then the trained models shipped with geolabel (`geolabel predict IMAGE` uses `pretrained`)."""
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
    click.echo("\nshipped trained models (MODEL = pretrained:NAME; `pretrained` = pretrained:buildings):")
    for line in shipped_model_lines():
        click.echo(f"  {line}")


def shipped_model_lines() -> list[str]:
    """One line per model shipped in the package: name, family, resolution, size, licence."""
    from geolabel.pretrained import WEIGHTS_DIR, model_card, pretrained_names
    from geolabel.train.trainer import load_run_config

    lines = []
    for name in pretrained_names():
        card, config = model_card(f"pretrained:{name}"), load_run_config(f"pretrained:{name}")
        megabytes = (WEIGHTS_DIR / name / "model.keras").stat().st_size / 1e6
        low, high = card.resolution_range_m
        lines.append(f"{name}: {config.model}, trained at {card.resolution_m:g} m/px (predicted as is {low:g}-{high:g} m, "
                     f"resampled up to {card.max_input_m:g} m), {megabytes:.1f} MB, {card.license}; "
                     f"card: {WEIGHTS_DIR / name / 'MODEL_CARD.md'}")
    return lines
