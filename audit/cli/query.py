"""`ffaudit query` and `ffaudit job`: who-did-what from the command line (HTTP clients of
the service, authenticated with the caller's bearer token)."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from typing import Any

import click

from audit.cli.client import (
    call,
    collect,
    echo_json,
    json_option,
    service_option,
    tenant_option,
    token_option,
    when,
)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENANT = tenant_option("Open mode only (no tokens): the tenant to read.")


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


def _sha256(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    # Some tools print digests in uppercase (Get-FileHash); records and the service use lowercase.
    digests = tuple(v.strip().lower() for v in values)
    for digest in digests:
        if not _SHA256.fullmatch(digest):
            raise click.BadParameter(f"{digest!r} is not a SHA-256 (64 hex digits)")
    return digests


@click.command()
@service_option
@token_option()
@click.option("--actor", help="Raw user id (pseudonymised by the service).")
@click.option("--session")
@click.option("--target", help="Raw input path (pseudonymised by the service).")
@click.option("--action", multiple=True)
@click.option("--outcome", multiple=True, type=click.Choice(["success", "failure", "unknown"]))
@click.option("--job", multiple=True)
@click.option(
    "--file-hash",
    multiple=True,
    callback=_sha256,
    help="SHA-256 of an input or output file (repeatable): the records that name it.",
)
@click.option("--stream", multiple=True)
@click.option("--since", callback=when, help="RFC 3339 time or a date (midnight UTC), inclusive.")
@click.option("--until", callback=when, help="RFC 3339 time or a date (midnight UTC), exclusive.")
@click.option("--text", "q", help="Free text over non-PII fields.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Follow cursors to the end.")
@_TENANT
@json_option
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
    file_hash: tuple[str, ...],
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
            "file_hash": list(file_hash),
            "stream": list(stream),
            "since": since,
            "until": until,
            "q": q,
            "limit": limit,
        }.items()
        if v not in (None, [])
    }
    events = collect(service, "/v1/events", token, tenant, params, "events", everything=everything)
    if as_json:
        echo_json(events)
    else:
        _table(events)


@click.command()
@click.argument("job_id")
@service_option
@token_option()
@_TENANT
@json_option
def job(job_id: str, service: str, token: str | None, tenant: str | None, as_json: bool) -> None:
    """A job's timeline: inputs, models, steps, failed frames, outcome."""
    timeline = call("GET", service, f"/v1/jobs/{job_id}", token, tenant)
    if as_json:
        echo_json(timeline)
        return
    click.echo(
        f"job {job_id}: {timeline['outcome'] or 'not finished'}, "
        f"{timeline['failed_frames']} failed frame(s)"
    )
    for line in _job_summary(timeline["events"]):
        click.echo(f"  {line}")
    _table(timeline["events"])


def _job_summary(events: list[dict[str, Any]]) -> list[str]:
    """What an engineer looks for first: models and their hashes, providers, the error, how
    long it took and where the time went (the gaps between the job's records)."""
    lines: list[str] = []
    records = [e["record"] for e in events]
    for rec in records:
        meta = rec.get("ffaudit.metadata") or {}
        if rec.get("event.action") == "job.submitted" and isinstance(meta, dict):
            for model in meta.get("models") or []:
                if isinstance(model, dict):
                    lines.append(
                        f"model {model.get('role', '?')}: {model.get('name', '?')} "
                        f"sha256 {str(model.get('sha256', '?'))[:16]}…"
                    )
            if meta.get("providers"):
                lines.append(f"providers: {', '.join(map(str, meta['providers']))}")
            if meta.get("detector"):
                lines.append(f"detector: {meta['detector']}")
        if rec.get("error.type") or rec.get("error.message"):
            lines.append(f"error: {rec.get('error.type', '')}: {rec.get('error.message', '')}")
        if isinstance(meta, dict) and isinstance(meta.get("duration_ms"), int):
            lines.append(f"duration: {meta['duration_ms']} ms ({rec.get('event.action')})")
    times = []
    for rec in records:
        try:
            times.append((datetime.fromisoformat(rec["@timestamp"]), rec["event.action"]))
        except (KeyError, ValueError):
            continue
    steps = [
        f"{b[1]} +{(b[0] - a[0]).total_seconds() * 1000:.0f} ms"
        for a, b in itertools.pairwise(times)
    ]
    if steps:
        lines.append("steps: " + ", ".join(steps))
    return lines


@click.command()
@click.option("--failed", is_flag=True, help="Failed jobs only.")
@click.option("--stream", multiple=True, help="Repeatable.")
@click.option("--since", callback=when, help="RFC 3339 time or a date (midnight UTC).")
@click.option("--until", callback=when, help="RFC 3339 time or a date (midnight UTC).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@service_option
@token_option()
@_TENANT
@json_option
def jobs(
    failed: bool,
    stream: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int,
    service: str,
    token: str | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    """Finished jobs, newest first (--failed: those that failed, with their error)."""
    params: dict[str, Any] = {"stream": list(stream), "limit": limit}
    for name, value in (
        ("outcome", "failure" if failed else None),
        ("since", since),
        ("until", until),
    ):
        if value is not None:
            params[name] = value
    page = call("GET", service, "/v1/jobs", token, tenant, params=params)
    if as_json:
        echo_json(page["jobs"])
        return
    for j in page["jobs"]:
        error = (
            f"  {j['error_type'] or ''}: {j['error_message'] or ''}"
            if j["outcome"] == "failure"
            else ""
        )
        click.echo(f"{j['finished_at']}  {j['job_id']}  {j['stream']}  {j['outcome']}{error}")
