"""`ffaudit dashboards kibana export|import`: the audit trail's Kibana saved objects (a data
view, Lens visualizations, the auditor, security and engineer dashboards; see
dashboards/README.md) written to a file, or imported into a Kibana through its saved-objects
API (`POST /api/saved_objects/_import`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from audit.errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServiceRefusedError,
    UsageError,
)
from dashboards.kibana_objects import DEFAULT_INDEX_PREFIX, DEFAULT_SERVICE_STREAM, export_text

_INDEX_PREFIX = click.option(
    "--index-prefix",
    envvar="FFAUDIT_ELASTICSEARCH_INDEX_PREFIX",
    default=DEFAULT_INDEX_PREFIX,
    show_default=True,
    help="The service's index prefix [FFAUDIT_ELASTICSEARCH_INDEX_PREFIX]: the data view "
    "reads <prefix>-*.",
)
_SERVICE_STREAM = click.option(
    "--service-stream",
    envvar="FFAUDIT_SERVICE_STREAM",
    default=DEFAULT_SERVICE_STREAM,
    show_default=True,
    help="The service's own stream prefix [FFAUDIT_SERVICE_STREAM]: what the panels count "
    "as the log of the logs.",
)


@click.group()
def dashboards() -> None:
    """Dashboards outside the service's own console."""


@dashboards.group()
def kibana() -> None:
    """Kibana 8 saved objects over the Elasticsearch event indices."""


@kibana.command("export")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The NDJSON file to write ('-': stdout).",
)
@_INDEX_PREFIX
@_SERVICE_STREAM
def export(out: Path, index_prefix: str, service_stream: str) -> None:
    """Write the saved objects as NDJSON (Kibana's export format; import it in Stack
    Management > Saved objects, or with `ffaudit dashboards kibana import`)."""
    text = export_text(index_prefix=index_prefix, service_stream=service_stream)
    if str(out) == "-":
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {text.count(chr(10)) - 1} Kibana objects to {out}", err=True)


@kibana.command("import")
@click.option(
    "--url", required=True, envvar="FFAUDIT_KIBANA_URL", help="Kibana [FFAUDIT_KIBANA_URL]."
)
@click.option("--space", default=None, help="The Kibana space (default: the default space).")
@click.option(
    "--api-key",
    envvar="FFAUDIT_KIBANA_API_KEY",
    default=None,
    help="An API key (its encoded form) [FFAUDIT_KIBANA_API_KEY].",
)
@click.option("--user", envvar="FFAUDIT_KIBANA_USER", default=None, help="Basic auth user.")
@click.option(
    "--password",
    envvar="FFAUDIT_KIBANA_PASSWORD",
    default=None,
    help="Basic auth password [FFAUDIT_KIBANA_PASSWORD]; asked for when --user is given.",
)
@click.option("--overwrite", is_flag=True, help="Replace objects of the same ids.")
@click.option(
    "--ca", type=click.Path(exists=True, dir_okay=False), default=None, help="CA bundle (PEM)."
)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds.")
@_INDEX_PREFIX
@_SERVICE_STREAM
def import_(
    url: str,
    space: str | None,
    api_key: str | None,
    user: str | None,
    password: str | None,
    overwrite: bool,
    ca: str | None,
    timeout: float,
    index_prefix: str,
    service_stream: str,
) -> None:
    """Import the saved objects into Kibana at URL."""
    import httpx  # deferred: the rest of the CLI does not pay for it

    if api_key and user:
        raise UsageError("give --api-key or --user, not both")
    if password and not user:
        raise UsageError("--password goes with --user")
    if user and password is None:
        password = click.prompt(f"Kibana password for {user}", hide_input=True)
    if space is not None and not re.fullmatch(r"[a-z0-9_-]+", space):
        raise UsageError(f"--space {space!r}: a Kibana space id (lowercase, digits, _ and -)")
    text = export_text(index_prefix=index_prefix, service_stream=service_stream)
    headers = {"kbn-xsrf": "true"}
    if api_key:
        headers["authorization"] = f"ApiKey {api_key}"
    base = url.rstrip("/") + (f"/s/{space}" if space else "")
    endpoint = f"{base}/api/saved_objects/_import"
    try:
        response = httpx.post(
            endpoint,
            params={"overwrite": "true"} if overwrite else None,
            files={"file": ("ffaudit.ndjson", text.encode(), "application/ndjson")},
            headers=headers,
            auth=(user, password or "") if user else None,
            timeout=timeout,
            verify=ca if ca else True,
        )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach Kibana at {url}: {exc}") from None
    answer = _answer(response)
    errors = answer.get("errors") or []
    count = answer.get("successCount", 0)
    if answer.get("success") is True and not errors:
        click.echo(f"imported {count} Kibana objects into {base}")
        return
    for error in errors:
        click.echo(_describe(error), err=True)
    conflicts = any((e.get("error") or {}).get("type") == "conflict" for e in errors)
    hint = " (they exist: --overwrite replaces them)" if conflicts else ""
    message = f"Kibana imported {count} objects and refused {len(errors)}{hint}"
    raise (ConflictError if conflicts else ServiceRefusedError)(message)


def _answer(response: Any) -> dict[str, Any]:
    """The decoded answer of a successful request; a refused one raises its error."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    status = response.status_code
    if status >= 400:
        message = payload.get("message") if isinstance(payload, dict) else None
        detail = f"{status}: {message or response.text[:500]}"
        kind = {401: AuthenticationError, 403: ForbiddenError, 404: NotFoundError}
        where = " (is the space right? is this Kibana?)" if status == 404 else ""
        raise kind.get(status, ServiceRefusedError)(f"Kibana refused the import: {detail}{where}")
    if not isinstance(payload, dict):
        raise ServiceRefusedError(f"Kibana answered {status} without a JSON object")
    return payload


def _describe(error: Any) -> str:
    """One line of a refused object: `type id (title): reason`."""
    if not isinstance(error, dict):
        return f"  {error}"
    detail = error.get("error") or {}
    reason = str(detail.get("type", "error"))
    if detail.get("type") == "missing_references":
        missing = ", ".join(f"{r.get('type')} {r.get('id')}" for r in detail.get("references", []))
        reason += f": {missing}"
    elif detail.get("message"):
        reason += f": {detail['message']}"
    title = error.get("title") or (error.get("meta") or {}).get("title")
    named = f" ({title})" if title else ""
    return f"  {error.get('type')} {error.get('id')}{named}: {reason}"
