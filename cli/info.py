"""`geolabel info`: versions and devices, for bug reports."""

from __future__ import annotations

import click

from geolabel.environment import environment_report


@click.command()
def info() -> None:
    """Print versions of geolabel's stack, the Keras backend and the compute devices."""
    for key, value in environment_report().items():
        click.echo(f"{key:<22} {value}")
