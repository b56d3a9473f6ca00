"""`ffaudit alerts ...`: alerts and custom alert rules (HTTP clients of the service,
authenticated with the caller's bearer token)."""

from __future__ import annotations

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
)
from audit.store.query import GROUP_FIELDS

_TOKEN = token_option()
_TENANT = tenant_option()
_STATES = ("open", "acknowledged", "resolved")
_SEVERITIES = ("critical", "high", "medium", "low")
_VERDICTS = ("ok", "pending", "broken", "rejected")


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
@service_option
@_TOKEN
@_TENANT
@click.option("--state", multiple=True, type=click.Choice(_STATES))
@click.option("--rule", multiple=True, help="Rule id, e.g. integrity_failure or custom:3.")
@click.option("--severity", multiple=True, type=click.Choice(_SEVERITIES))
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Follow cursors to the end.")
@json_option
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
    found = collect(service, "/v1/alerts", token, tenant, params, "alerts", everything=everything)
    if as_json:
        echo_json(found)
    else:
        _alert_table(found)


@alerts.command("show")
@click.argument("alert_id", type=click.IntRange(1))
@service_option
@_TOKEN
@_TENANT
def show(alert_id: int, service: str, token: str | None, tenant: str | None) -> None:
    """One alert, as JSON."""
    echo_json(call("GET", service, f"/v1/alerts/{alert_id}", token, tenant))


_REASON = click.option("--reason", help="Why (kept in the log of the logs).")


@alerts.command("ack")
@click.argument("alert_id", type=click.IntRange(1))
@_REASON
@service_option
@_TOKEN
@_TENANT
def ack(
    alert_id: int, reason: str | None, service: str, token: str | None, tenant: str | None
) -> None:
    """Acknowledge an open alert (security or admin role)."""
    body = {"reason": reason} if reason else None
    path = f"/v1/alerts/{alert_id}/acknowledge"
    alert = call("POST", service, path, token, tenant, body=body)
    click.echo(f"alert {alert['id']}: {alert['state']}")


@alerts.command("resolve")
@click.argument("alert_id", type=click.IntRange(1))
@_REASON
@service_option
@_TOKEN
@_TENANT
def resolve(
    alert_id: int, reason: str | None, service: str, token: str | None, tenant: str | None
) -> None:
    """Resolve an open or acknowledged alert (security or admin role)."""
    body = {"reason": reason} if reason else None
    alert = call("POST", service, f"/v1/alerts/{alert_id}/resolve", token, tenant, body=body)
    click.echo(f"alert {alert['id']}: {alert['state']}")


@alerts.group()
def rules() -> None:
    """Built-in rules and your tenant's custom threshold rules."""


@rules.command("list")
@service_option
@_TOKEN
@_TENANT
@json_option
def list_rules(service: str, token: str | None, tenant: str | None, as_json: bool) -> None:
    """Every rule that can raise alerts for your tenant."""
    catalogue = call("GET", service, "/v1/alert-rules", token, tenant)
    if as_json:
        echo_json(catalogue)
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
@service_option
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
    rule = call("POST", service, "/v1/alert-rules", token, tenant, body=body)
    click.echo(f"rule {rule['id']} ({rule['rule']}) added")


@rules.command("delete")
@click.argument("rule_id", type=click.IntRange(1))
@service_option
@_TOKEN
@_TENANT
def delete_rule(rule_id: int, service: str, token: str | None, tenant: str | None) -> None:
    """Delete a custom rule (its alerts stay)."""
    call("DELETE", service, f"/v1/alert-rules/{rule_id}", token, tenant)
    click.echo(f"rule {rule_id} deleted")
