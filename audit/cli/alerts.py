"""`ffaudit alerts ...`: alerts and custom alert rules (HTTP clients of the service,
authenticated with the caller's bearer token)."""

from __future__ import annotations

from typing import Any

import click
import httpx
import orjson

from audit.errors import AuthenticationError, NotFoundError, ServiceRefusedError, UsageError
from audit.store.query import GROUP_FIELDS

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
_TENANT = click.option("--tenant", default=None, help="Open mode only (no tokens): the tenant.")
_JSON = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
_STATES = ("open", "acknowledged", "resolved")
_SEVERITIES = ("critical", "high", "medium", "low")
_VERDICTS = ("ok", "pending", "broken")


def _call(
    method: str,
    service: str,
    path: str,
    token: str | None,
    tenant: str | None,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    query = {**(params or {}), **({"tenant": tenant} if tenant else {})}
    try:
        response = httpx.request(
            method,
            f"{service.rstrip('/')}{path}",
            params=query,
            json=body,
            headers=headers,
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the audit service at {service}: {exc}") from None
    if response.status_code == 204:
        return None
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    message = payload.get("error", {}).get("message", response.text) if payload else response.text
    if response.status_code == 401:
        raise AuthenticationError(message)
    if response.status_code == 404:
        raise NotFoundError(message)
    if response.status_code >= 400:
        raise ServiceRefusedError(f"{response.status_code}: {message}")
    return payload


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _alert_table(alerts: list[dict[str, Any]]) -> None:
    click.echo(
        f"{'id':>6} {'state':<12} {'severity':<8} {'rule':<18} {'count':>5} "
        f"{'last seen (UTC)':<26} title"
    )
    for a in alerts:
        click.echo(
            f"{a['id']:>6} {a['state']:<12} {a['severity']:<8} {a['rule'][:18]:<18} "
            f"{a['count']:>5} {a['last_seen'][:26]:<26} {a['title']}"
        )


@click.group()
def alerts() -> None:
    """Alerts for security teams: list, show, acknowledge, resolve; custom rules."""


@alerts.command("list")
@_SERVICE
@_TOKEN
@_TENANT
@click.option("--state", multiple=True, type=click.Choice(_STATES))
@click.option("--rule", multiple=True, help="Rule id, e.g. integrity_failure or custom:3.")
@click.option("--severity", multiple=True, type=click.Choice(_SEVERITIES))
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Follow cursors to the end.")
@_JSON
def list_alerts(
    service: str,
    token: str | None,
    tenant: str | None,
    state: tuple[str, ...],
    rule: tuple[str, ...],
    severity: tuple[str, ...],
    limit: int,
    everything: bool,
    as_json: bool,
) -> None:
    """Your tenant's alerts, newest first."""
    params: dict[str, Any] = {
        "state": list(state),
        "rule": list(rule),
        "severity": list(severity),
        "limit": limit,
    }
    found: list[dict[str, Any]] = []
    while True:
        page = _call("GET", service, "/v1/alerts", token, tenant, params=params)
        found += page["alerts"]
        if not everything or page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    if as_json:
        _echo_json(found)
    else:
        _alert_table(found)


@alerts.command("show")
@click.argument("alert_id", type=click.IntRange(1))
@_SERVICE
@_TOKEN
@_TENANT
def show(alert_id: int, service: str, token: str | None, tenant: str | None) -> None:
    """One alert, as JSON."""
    _echo_json(_call("GET", service, f"/v1/alerts/{alert_id}", token, tenant))


@alerts.command("ack")
@click.argument("alert_id", type=click.IntRange(1))
@_SERVICE
@_TOKEN
@_TENANT
def ack(alert_id: int, service: str, token: str | None, tenant: str | None) -> None:
    """Acknowledge an open alert (security or admin role)."""
    alert = _call("POST", service, f"/v1/alerts/{alert_id}/acknowledge", token, tenant)
    click.echo(f"alert {alert['id']}: {alert['state']}")


@alerts.command("resolve")
@click.argument("alert_id", type=click.IntRange(1))
@_SERVICE
@_TOKEN
@_TENANT
def resolve(alert_id: int, service: str, token: str | None, tenant: str | None) -> None:
    """Resolve an open or acknowledged alert (security or admin role)."""
    alert = _call("POST", service, f"/v1/alerts/{alert_id}/resolve", token, tenant)
    click.echo(f"alert {alert['id']}: {alert['state']}")


@alerts.group()
def rules() -> None:
    """Built-in rules and your tenant's custom threshold rules."""


@rules.command("list")
@_SERVICE
@_TOKEN
@_TENANT
@_JSON
def list_rules(service: str, token: str | None, tenant: str | None, as_json: bool) -> None:
    """Every rule that can raise alerts for your tenant."""
    catalogue = _call("GET", service, "/v1/alert-rules", token, tenant)
    if as_json:
        _echo_json(catalogue)
        return
    for rule in catalogue["builtin"]:
        click.echo(
            f"{rule['rule']:<18} {rule['severity']:<8} {rule['source']:<9} {rule['description']}"
        )
    for rule in catalogue["custom"]:
        state = "" if rule["enabled"] else " (disabled)"
        click.echo(
            f"{rule['rule']:<18} {rule['severity']:<8} {'custom':<9} {rule['name']}: "
            f"> {rule['threshold']} per {rule['group_by']} in {rule['window_s']} s{state}"
        )


@rules.command("add")
@_SERVICE
@_TOKEN
@_TENANT
@click.option("--name", required=True)
@click.option("--group-by", required=True, type=click.Choice(GROUP_FIELDS))
@click.option("--window", "window_s", required=True, type=click.IntRange(5), help="Seconds.")
@click.option("--step", "step_s", type=click.IntRange(5), help="Seconds (default: the window).")
@click.option("--threshold", required=True, type=click.IntRange(0), help="Alert above this.")
@click.option("--severity", type=click.Choice(_SEVERITIES), default="medium", show_default=True)
@click.option("--action", multiple=True, help="Count only these actions.")
@click.option("--outcome", multiple=True, type=click.Choice(["success", "failure", "unknown"]))
@click.option("--stream", multiple=True)
@click.option("--verdict", multiple=True, type=click.Choice(_VERDICTS))
@click.option("--text", "q", help="Free text over non-PII fields.")
@click.option("--disabled", is_flag=True)
def add_rule(
    service: str,
    token: str | None,
    tenant: str | None,
    name: str,
    group_by: str,
    window_s: int,
    step_s: int | None,
    threshold: int,
    severity: str,
    action: tuple[str, ...],
    outcome: tuple[str, ...],
    stream: tuple[str, ...],
    verdict: tuple[str, ...],
    q: str | None,
    disabled: bool,
) -> None:
    """Add a threshold rule: an alert per group-by value with more than THRESHOLD matching
    records in a window."""
    body = {
        "name": name,
        "severity": severity,
        "group_by": group_by,
        "window_s": window_s,
        "step_s": step_s,
        "threshold": threshold,
        "enabled": not disabled,
        "filter": {
            "action": list(action),
            "outcome": list(outcome),
            "stream": list(stream),
            "verdict": list(verdict),
            "q": q,
        },
    }
    rule = _call("POST", service, "/v1/alert-rules", token, tenant, body=body)
    click.echo(f"rule {rule['id']} ({rule['rule']}) added")


@rules.command("delete")
@click.argument("rule_id", type=click.IntRange(1))
@_SERVICE
@_TOKEN
@_TENANT
def delete_rule(rule_id: int, service: str, token: str | None, tenant: str | None) -> None:
    """Delete a custom rule (its alerts stay)."""
    _call("DELETE", service, f"/v1/alert-rules/{rule_id}", token, tenant)
    click.echo(f"rule {rule_id} deleted")
