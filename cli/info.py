"""`geolabel info`: versions and devices, for bug reports."""

from __future__ import annotations

import click

from geolabel.environment import environment_report


@click.command()
def info() -> None:
    """Print versions of geolabel's stack, the Keras backend and the compute devices."""
    from geolabel.cli.models import shipped_model_lines

    for key, value in environment_report().items():
        click.echo(f"{key:<22} {value}")
    for line in shipped_model_lines():
        click.echo(f"{'shipped model':<22} {line}")
