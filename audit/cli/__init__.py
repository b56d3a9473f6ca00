"""`ffaudit` command line: one group, one error handler.

Subcommands load on first use (click's documented lazy-group pattern): `ffaudit verify` and
`ffaudit seal` must not pay for FastAPI, SQLAlchemy and Alembic, which only the service
commands need. tests/test_cli_imports.py holds that line.
"""

from __future__ import annotations

import importlib
import os

import click

from audit import __version__
from audit.common.clirunner import run_cli
from audit.errors import FFAuditError

# name -> "module:attribute"
COMMANDS = {
    "keygen": "audit.cli.integrity:keygen",
    "keys": "audit.cli.integrity:keys",
    "seal": "audit.cli.integrity:seal",
    "verify": "audit.cli.integrity:verify",
    "dev": "audit.cli.dev:dev",
    "serve": "audit.cli.service:serve",
    "streams": "audit.cli.service:streams",
    "db": "audit.cli.service:db",
    "demo": "audit.cli.demo:demo",
    "keyrings": "audit.cli.service:keyrings",
    "query": "audit.cli.query:query",
    "job": "audit.cli.query:job",
    "jobs": "audit.cli.query:jobs",
    "verify-export": "audit.cli.exports:verify_export",
    "export": "audit.cli.exports:export",
    "retention": "audit.cli.retention:retention",
    "alerts": "audit.cli.alerts:alerts",
    "erase-subject": "audit.cli.subjects:erase_subject",
    "webhooks": "audit.cli.webhooks:webhooks",
    "producers": "audit.cli.producers:producers",
    "dashboards": "audit.cli.dashboards:dashboards",
    "witness": "audit.cli.witness:witness",
    "verify-proof": "audit.cli.tlog:verify_proof_cmd",
    "tlog": "audit.cli.tlog:tlog",
}


class LazyGroup(click.Group):
    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="ffaudit")
def cli() -> None:
    """Compliance audit trail and log integrity for face-swap engines."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: every ffaudit error becomes its message and exit code.

    Whatever the caller's umask, what ffaudit creates is private (files 0600, directories
    0700): the control database and its WAL, subject-vault keys, quarantined payloads,
    archives, exports and keys are nobody else's business on a shared machine."""
    os.umask(0o077)
    run_cli(cli, "ffaudit", argv, handled=(FFAuditError,), internal_exit=3)
