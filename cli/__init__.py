"""The `geolabel` command: a thin click shell over the library.

Subcommands are imported only when used, so `geolabel --help` stays fast and a
command never pays for another's heavy imports (TensorFlow, TFX, Beam).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

import geolabel
from geolabel.errors import GeolabelError
from geolabel.progress import setup_logging

# command name -> "module:attribute" under geolabel.cli
COMMANDS = {
    "info": "geolabel.cli.info:info",
    "demo": "geolabel.cli.demo:demo",
    "fetch": "geolabel.cli.fetch:fetch",
    "predict": "geolabel.cli.predict:predict",
    "evaluate": "geolabel.cli.evaluate:evaluate",
    "train": "geolabel.cli.train:train",
    "models": "geolabel.cli.models:models",
    "pipeline": "geolabel.cli.pipeline:pipeline",
    "align": "geolabel.cli.align:align",
    "align-train": "geolabel.cli.align:align_train",
    "mapupdate": "geolabel.cli.mapupdate:mapupdate",
    "polycnn-train": "geolabel.cli.polycnn:polycnn_train",
    "export": "geolabel.cli.export:export",
    "serve": "geolabel.cli.serve:serve",
    "view": "geolabel.cli.view:view",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand with its outputs guarded (`output`): they see how it ended."""
        with contextlib.ExitStack() as outputs:
            ctx.meta[_OUTPUTS] = outputs
            return super().invoke(ctx)


_OUTPUTS = "geolabel.outputs"


def output(path: str | os.PathLike, *, command: str, folder: bool = True, marks: Iterable[str] = (),
           inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """The checked, created output of the running command (`geolabel.outputs.output_path`); if the
    command fails, the folders created for it that stayed empty are removed."""
    from geolabel.outputs import output_path

    guard = output_path(path, command=command, folder=folder, marks=marks, inputs=inputs)
    return click.get_current_context().meta[_OUTPUTS].enter_context(guard)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(geolabel.__version__, prog_name="geolabel")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """geolabel: classify aerial and satellite imagery, pixel by pixel, into maps."""
    setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: library errors become one clear line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="geolabel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except GeolabelError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
