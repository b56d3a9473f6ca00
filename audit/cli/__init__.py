"""`ffaudit` command line: one group, one error handler."""

from __future__ import annotations

import sys
import traceback

import click

from audit import __version__
from audit.cli.demo import demo
from audit.cli.dev import dev
from audit.cli.exports import verify_export
from audit.cli.integrity import keygen, keys, seal, verify
from audit.cli.query import job, query
from audit.cli.service import db, keyrings, serve, streams
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


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps every ffaudit error to its message and exit code."""
    try:
        result = cli.main(args=argv, prog_name="ffaudit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ffaudit: aborted", err=True)
        sys.exit(130)
    except FFAuditError as exc:
        click.echo(f"ffaudit: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except Exception:
        # Never exit 1 by accident: for verify, 1 means "integrity failure".
        traceback.print_exc()
        click.echo("ffaudit: internal error (a bug; please report it)", err=True)
        sys.exit(3)
    sys.exit(result if isinstance(result, int) else 0)
