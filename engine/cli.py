"""`ffengine` command line: run one job, serve the sidecar API, verify model packs."""

from __future__ import annotations

import getpass
import json
import logging
import textwrap
import typing
import uuid
from pathlib import Path
from typing import Any

import click

from audit import __version__
from audit.common.clirunner import run_cli
from audit.integrity.errors import FFAuditError
from engine.errors import AuditUnavailableError, FFEngineError
from engine.models.cli import models

_FILE = click.Path(dir_okay=False, path_type=Path)
log = logging.getLogger("ffengine")

# EngineSettings fields that only the HTTP sidecar reads: left out of `run --help`. Any other
# field, including one added later, is listed there (tests/engine/test_cli_run.py holds this
# set to the settings class, so a renamed field cannot linger here).
SERVE_ONLY_SETTINGS = frozenset(
    {
        "http_host",
        "http_port",
        "jwt_secret",
        "max_queued_jobs",
        "result_ttl_s",
        "stop_grace_s",
        "close_on_stop",
        "upload_ttl_s",
        "max_upload_bytes",  # uploads only: `run` reads files in place
    }
)


def run_settings_epilog() -> str:
    """`run --help`'s list of the environment variables it reads, generated from
    EngineSettings (name, default, description), so that it cannot drift from the code."""
    from engine.settings import EngineSettings

    prefix = str(EngineSettings.model_config.get("env_prefix", ""))
    lines = [
        "Settings (environment variables; the options above override their namesakes):",
        "",
        "\b",
    ]
    for name, info in EngineSettings.model_fields.items():
        if name in SERVE_ONLY_SETTINGS:
            continue
        default = info.get_default(call_default_factory=True)
        head = f"{prefix}{name}".upper() + f"  [default: {_env_value(default)}]"
        choices = typing.get_args(info.annotation) if _is_literal(info.annotation) else ()
        if choices:
            head += f"  [one of: {', '.join(map(str, choices))}]"
        lines.append(head)
        if info.description:
            lines += textwrap.wrap(
                info.description,
                width=76,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    return "\n".join(lines)


def _env_value(value: Any) -> str:
    """A default as it would be written in the environment (lists are JSON there)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Literal


class _RunCommand(click.Command):
    """Generates its epilog only when help is shown: importing the settings (pydantic) at
    start-up would slow every `ffengine` call down by a seventh of a second."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.epilog is None:
            self.epilog = run_settings_epilog()
        super().format_epilog(ctx, formatter)


@click.group()
@click.version_option(__version__, prog_name="ffengine")
def cli() -> None:
    """Face-swap engine sidecar with a tamper-evident audit trail."""


@cli.command(cls=_RunCommand)
@click.option("--target", type=_FILE, required=True, help="Image or video to process.")
@click.option("--output", type=_FILE, required=True, help="Where the result goes.")
@click.option("--source", type=_FILE, help="Source face (swap jobs).")
@click.option(
    "--job-type",
    type=click.Choice(["swap", "anonymize"]),
    help="Default: swap with --source, else anonymize.",
)
@click.option("--blend", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True)
@click.option(
    "--selector",
    type=click.Choice(["many", "one", "reference"]),
    default="many",
    show_default=True,
    help="Which target faces a swap replaces.",
)
@click.option(
    "--method",
    type=click.Choice(["blur", "mosaic"]),
    default="blur",
    show_default=True,
    help="Anonymize method.",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local model pack [FFENGINE_MODEL_DIR].",
)
@click.option("--audit-file", type=_FILE, help="Also write the records as NDJSON here.")
@click.option("--audit-forward", metavar="HOST:PORT", help="The audit service's forward port.")
@click.option("--actor", default=None, help="Who runs the job [the OS user].")
@click.option("--session", default=None, help="Session id [a new one].")
@click.option(
    "--close-stream",
    is_flag=True,
    help="Seal the stream's closing checkpoint after the job: nothing may follow it "
    "(a one-off engine whose trail is complete).",
)
@click.option(
    "--require-delivery",
    is_flag=True,
    help="Exit 5 unless the audit service acknowledged every record (the job's output is "
    "kept; its records stay spooled for the next run).",
)
def run(
    target: Path,
    output: Path,
    source: Path | None,
    job_type: str | None,
    blend: float,
    selector: str,
    method: str,
    model_dir: Path | None,
    audit_file: Path | None,
    audit_forward: str | None,
    actor: str | None,
    session: str | None,
    close_stream: bool,
    require_delivery: bool,
) -> None:
    """Run one job, audited. Prints the job record as JSON.

    A refused job (a missing input, no model pack for a swap, over a limit) is audited as
    job.refused; its job id is printed on stderr."""
    from engine.auditing import build_audit_trail, build_runner
    from engine.jobs.runner import Caller, refused_job_id
    from engine.settings import EngineSettings

    overrides = {"model_dir": model_dir} if model_dir is not None else {}
    settings = EngineSettings(**overrides)  # type: ignore[arg-type]
    trail = build_audit_trail(settings, audit_file=audit_file, audit_forward=audit_forward)
    trail.emitter.start()
    try:
        runner = build_runner(settings, trail)
        caller = Caller(actor=actor or getpass.getuser(), session=session or uuid.uuid4().hex)
        try:
            spec = runner.prepare(
                job_type="swap"
                if (job_type or ("swap" if source else "anonymize")) == "swap"
                else "anonymize",
                target=target,
                output=output,
                source=source,
                blend=blend,
                selector=selector,
                method=method,
                caller=caller,
            )
        except FFEngineError as exc:
            job_id = refused_job_id(exc)
            if job_id is None:
                raise  # not recorded (the audit trail itself refused): the plain error
            # The caller's own paths are fine on their terminal: the raw message, not the
            # normalised one the record holds.
            click.echo(f"ffengine: job {job_id} refused: {exc.message}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from exc
        record = runner.run(spec, caller)
        click.echo(record.model_dump_json(indent=2))
    finally:
        delivered = trail.emitter.close(final=close_stream)
        forwarding = bool(audit_forward or settings.audit_forward)
        if not delivered and forwarding:
            click.echo(
                "ffengine: audit records are spooled and will be delivered by the "
                "next run (the audit service did not acknowledge them yet)",
                err=True,
            )
    if require_delivery and not (delivered and forwarding):
        raise AuditUnavailableError(
            "the audit service did not acknowledge every record"
            if forwarding
            else "--require-delivery needs a forward destination (--audit-forward)"
        )


@cli.command()
@click.option("--host", default=None, help="[FFENGINE_HTTP_HOST]")
@click.option("--port", type=int, default=None, help="[FFENGINE_HTTP_PORT]")
def serve(host: str | None, port: int | None) -> None:
    """Serve the sidecar API: jobs submitted with a bearer token and a session id."""
    import uvicorn

    from engine.api import Engine, create_app
    from engine.auditing import build_audit_trail, build_runner
    from engine.settings import EngineSettings

    settings = EngineSettings()
    trail = build_audit_trail(settings)
    trail.emitter.start()
    stopped = False

    def seal() -> None:
        # Called by the app's shutdown, after the running job finished: a signed checkpoint
        # behind every record, the spool flushed (uvicorn re-raises the stop signal once
        # it returns, so nothing after uvicorn.run may be relied on).
        nonlocal stopped
        stopped = True
        if not trail.emitter.close(final=settings.close_on_stop):
            log.warning("audit records are spooled; the next start delivers them")

    try:
        runner = build_runner(settings, trail)
        app = create_app(Engine(settings, runner, trail.emitter.emit, on_stop=seal))
        uvicorn.run(
            app,
            host=host or settings.http_host,
            port=port if port is not None else settings.http_port,
            log_level="info",
        )
    finally:
        if not stopped:  # start-up failed before the app ran
            trail.emitter.close(final=False)


cli.add_command(models)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="ffengine: %(message)s")
    run_cli(cli, "ffengine", argv, handled=(FFEngineError, FFAuditError), internal_exit=70)
