"""`ffaudit query` and `ffaudit job`: who-did-what from the command line (HTTP clients of
the service, authenticated with the caller's bearer token)."""

from __future__ import annotations

from typing import Any

import click
import httpx
import orjson

from audit.errors import AuthenticationError, NotFoundError, ServiceRefusedError, UsageError

_SERVICE = click.option(
    "--service",
    envvar="FFAUDIT_SERVICE_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The audit service [FFAUDIT_SERVICE_URL].",
)
_TOKEN = click.option(
    "--token",
    envvar="FFAUDIT_TOKEN",
    default=None,
    help="Bearer token [FFAUDIT_TOKEN]; none in open mode.",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
_TENANT = click.option(
    "--tenant", default=None, help="Open mode only (no tokens): the tenant to read."
)


def _get(service: str, path: str, token: str | None, params: Any = None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(
            f"{service.rstrip('/')}{path}", params=params, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the audit service at {service}: {exc}") from None
    if response.status_code == 401:
        raise AuthenticationError(response.json().get("error", {}).get("message", "401"))
    if response.status_code == 404:
        raise NotFoundError(response.json().get("error", {}).get("message", "not found"))
    if response.status_code >= 400:
        message = response.json().get("error", {}).get("message", response.text)
        raise ServiceRefusedError(f"{response.status_code}: {message}")
    return response.json()


def _table(events: list[dict[str, Any]]) -> None:
    click.echo(
        f"{'time (UTC)':<27} {'stream:seq':<22} {'action':<18} {'outcome':<8} "
        f"{'actor':<14} {'verdict':<8} details"
    )
    for event in events:
        rec = event["record"]
        meta = rec.get("ffaudit.metadata", {})
        details = rec.get("error.message") or ", ".join(
            f"{k}={v}" for k, v in list(meta.items())[:4] if not k.endswith("_hash")
        )
        click.echo(
            f"{rec['@timestamp']:<27} {event['stream'][:16] + ':' + str(event['sequence']):<22} "
            f"{rec['event.action']:<18} {rec['event.outcome']:<8} "
            f"{rec.get('user.hash', '-')[:12]:<14} {event['verdict']:<8} {details}"
        )


@click.command()
@_SERVICE
@_TOKEN
@click.option("--actor", help="Raw user id (pseudonymised by the service).")
@click.option("--session")
@click.option("--target", help="Raw input path (pseudonymised by the service).")
@click.option("--action", multiple=True)
@click.option("--outcome", multiple=True, type=click.Choice(["success", "failure", "unknown"]))
@click.option("--job", multiple=True)
@click.option("--stream", multiple=True)
@click.option("--since", help="RFC 3339 time, inclusive.")
@click.option("--until", help="RFC 3339 time, exclusive.")
@click.option("--text", "q", help="Free text over non-PII fields.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Follow cursors to the end.")
@_TENANT
@_JSON
def query(
    service: str,
    token: str | None,
    tenant: str | None,
    actor: str | None,
    session: str | None,
    target: str | None,
    action: tuple[str, ...],
    outcome: tuple[str, ...],
    job: tuple[str, ...],
    stream: tuple[str, ...],
    since: str | None,
    until: str | None,
    q: str | None,
    limit: int,
    everything: bool,
    as_json: bool,
) -> None:
    """Who did what: events of your tenant, newest first."""
    params: dict[str, Any] = {
        k: v
        for k, v in {
            "actor": actor,
            "session": session,
            "target": target,
            "action": list(action),
            "outcome": list(outcome),
            "job": list(job),
            "stream": list(stream),
            "since": since,
            "until": until,
            "q": q,
            "limit": limit,
            "tenant": tenant,
        }.items()
        if v not in (None, [])
    }
    events: list[dict[str, Any]] = []
    while True:
        page = _get(service, "/v1/events", token, params)
        events += page["events"]
        if not everything or page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    if as_json:
        click.echo(orjson.dumps(events, option=orjson.OPT_INDENT_2).decode())
    else:
        _table(events)


@click.command()
@click.argument("job_id")
@_SERVICE
@_TOKEN
@_TENANT
@_JSON
def job(job_id: str, service: str, token: str | None, tenant: str | None, as_json: bool) -> None:
    """A job's timeline: inputs, models, steps, failed frames, outcome."""
    params = {"tenant": tenant} if tenant else None
    timeline = _get(service, f"/v1/jobs/{job_id}", token, params)
    if as_json:
        click.echo(orjson.dumps(timeline, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(
        f"job {job_id}: {timeline['outcome'] or 'not finished'}, "
        f"{timeline['failed_frames']} failed frame(s)"
    )
    _table(timeline["events"])
