"""`ffaudit` command line: one group, one error handler."""

from __future__ import annotations

import click

from audit import __version__
from audit.cli.alerts import alerts
from audit.cli.demo import demo
from audit.cli.dev import dev
from audit.cli.exports import verify_export
from audit.cli.integrity import keygen, keys, seal, verify
from audit.cli.query import job, query
from audit.cli.retention import retention
from audit.cli.runner import run_cli
from audit.cli.service import db, keyrings, serve, streams
from audit.cli.subjects import erase_subject
from audit.cli.webhooks import webhooks
from audit.errors import FFAuditError


@click.group()
@click.version_option(__version__, prog_name="ffaudit")
def cli() -> None:
    """Compliance audit trail and log integrity for face-swap engines."""


cli.add_command(keygen)
cli.add_command(keys)
cli.add_command(seal)
cli.add_command(verify)
cli.add_command(dev)
cli.add_command(serve)
cli.add_command(streams)
cli.add_command(db)
cli.add_command(demo)
cli.add_command(keyrings)
cli.add_command(query)
cli.add_command(job)
cli.add_command(verify_export)
cli.add_command(retention)
cli.add_command(alerts)
cli.add_command(erase_subject)
cli.add_command(webhooks)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every ffaudit error becomes its message and exit code."""
    run_cli(cli, "ffaudit", argv, handled=(FFAuditError,), internal_exit=3)
