"""The HTTP-client plumbing of the commands that talk to a running audit service (`query`,
`job`, `alerts`, `webhooks`, `retention`, `verify --service`): the common options, one
request function that turns the service's error schema into audit.errors, and JSON output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click
import orjson
from click.decorators import FC

if TYPE_CHECKING:
    import httpx

from audit.errors import (
    AuthenticationError,
    FFAuditError,
    NotFoundError,
    ServiceRefusedError,
    UsageError,
)

DEFAULT_SERVICE = "http://127.0.0.1:8080"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def when(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A --since/--until value: RFC 3339 as the API takes it, or a bare date meaning
    midnight UTC (`--since 2026-11-03`); the API itself takes date-times only."""
    if value is not None and _DATE.fullmatch(value.strip()):
        return f"{value.strip()}T00:00:00Z"
    return value


# A refused request's status -> the error raised; any other status >= 400 raises
# ServiceRefusedError("<status>: <message>").
REFUSALS: Mapping[int, type[FFAuditError]] = {
    401: AuthenticationError,
    404: NotFoundError,
}

service_option = click.option(
    "--service",
    envvar="FFAUDIT_SERVICE_URL",
    default=DEFAULT_SERVICE,
    show_default=True,
    help="The audit service [FFAUDIT_SERVICE_URL].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")


def token_option(
    help: str = "Bearer token [FFAUDIT_TOKEN]; none in open mode.",
) -> Callable[[FC], FC]:
    """--token, from FFAUDIT_TOKEN by default."""
    return click.option("--token", envvar="FFAUDIT_TOKEN", default=None, help=help)


def tenant_option(help: str = "Open mode only (no tokens): the tenant.") -> Callable[[FC], FC]:
    """--tenant: the service takes it only in open mode (no tokens)."""
    return click.option("--tenant", default=None, help=help)


def call(
    method: str,
    service: str,
    path: str,
    token: str | None,
    tenant: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    body: Any = None,
    timeout: float = 60,
    refusals: Mapping[int, type[FFAuditError]] = REFUSALS,
    status_in_message: bool = False,
) -> Any:
    """One request to the service: the decoded JSON answer, or None when it has no body
    (204). `tenant`, when given, joins `params`. A refusal raises refusals[status] (or
    ServiceRefusedError); an unreachable service raises UsageError."""
    import httpx  # deferred: commands that never call a service should not pay for it

    query = {**(params or {}), **({"tenant": tenant} if tenant else {})}
    try:
        response = httpx.request(
            method,
            f"{service.rstrip('/')}{path}",
            params=query,
            json=body,
            headers=bearer(token),
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise unreachable(service, exc) from None
    if response.status_code >= 400:
        raise refusal(response, refusals, status_in_message=status_in_message)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def collect(
    service: str,
    path: str,
    token: str | None,
    tenant: str | None,
    params: Mapping[str, Any],
    key: str,
    *,
    everything: bool,
) -> list[dict[str, Any]]:
    """page[key] of a GET of a cursor-paged list; with `everything`, of every page (the
    service's `next_cursor` followed to the end). A page's `coverage` naming streams a
    raw-id query could not search is said on stderr, once."""
    query = dict(params)
    found: list[dict[str, Any]] = []
    warned = False
    while True:
        page = call("GET", service, path, token, tenant, params=query)
        blind = (page.get("coverage") or {}).get("not_searchable") or []
        if blind and not warned:
            warned = True
            click.echo(
                f"warning: not searchable by raw id (the service lacks their pseudonym "
                f"key: ffaudit keyrings import): stream {', '.join(blind)}",
                err=True,
            )
        found += page[key]
        if not everything or page["next_cursor"] is None:
            return found
        query["cursor"] = page["next_cursor"]


def bearer(token: str | None) -> dict[str, str]:
    """The authorization header for `token`; none in open mode."""
    return {"authorization": f"Bearer {token}"} if token else {}


def unreachable(service: str, exc: httpx.HTTPError) -> UsageError:
    return UsageError(f"cannot reach the audit service at {service}: {exc}")


def refusal(
    response: httpx.Response,
    refusals: Mapping[int, type[FFAuditError]] = REFUSALS,
    *,
    status_in_message: bool = False,
) -> FFAuditError:
    """The error for a refused request: the message of the service's error schema
    ({"error": {"message": ...}}), else the body's text."""
    status = response.status_code
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message", response.text))
    elif isinstance(payload, dict):
        message = response.text
    else:
        message = response.text[:500]
    kind = refusals.get(status)
    if kind is None:
        return ServiceRefusedError(f"{status}: {message}")
    return kind(f"{status}: {message}" if status_in_message else message)


def echo_json(value: Any) -> None:
    """`value` as indented JSON on stdout."""
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
