"""Running a click group as a program: one place that turns errors into exit codes."""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import click


def run_cli(
    group: click.Group,
    prog: str,
    argv: list[str] | None,
    *,
    handled: tuple[type[Exception], ...],
    internal_exit: int,
) -> NoReturn:
    """Run `group`; an error of a `handled` class exits with its message and exit code, any
    other exception is a bug and exits with `internal_exit` — never with a code that means
    something else (for `ffaudit verify`, 1 means "integrity failure")."""
    try:
        result = group.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except handled as exc:
        click.echo(f"{prog}: error: {getattr(exc, 'message', exc)}", err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except Exception:
        traceback.print_exc()
        click.echo(f"{prog}: internal error (a bug; please report it)", err=True)
        sys.exit(internal_exit)
    sys.exit(result if isinstance(result, int) else 0)
