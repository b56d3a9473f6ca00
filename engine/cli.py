"""`ffengine` command line. The face pipeline and its commands arrive with the engine issue;
until then the entry point exists so packaging and CI exercise it."""

from __future__ import annotations

import click

from audit import __version__
from engine.models.cli import models


@click.group()
@click.version_option(__version__, prog_name="ffengine")
def main() -> None:
    """Face-swap engine sidecar with a tamper-evident audit trail."""


main.add_command(models)
