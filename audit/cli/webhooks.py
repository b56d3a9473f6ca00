"""`ffaudit webhooks ...`: a tenant's alert receivers (HTTP clients of the service,
authenticated with the caller's bearer token: the security role, or admin with MFA)."""

from __future__ import annotations

from typing import Any

import click

from audit.cli.client import (
    call,
    echo_json,
    json_option,
    service_option,
    tenant_option,
    token_option,
)

_TOKEN = token_option("Bearer token [FFAUDIT_TOKEN].")
_TENANT = tenant_option()


@click.group()
def webhooks() -> None:
    """Webhooks that receive the tenant's alerts (signed; see docs/webhooks.md)."""


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--min-severity",
    type=click.Choice(["low", "medium", "high", "critical"]),
    default="low",
    show_default=True,
    help="Deliver alerts of this severity and above.",
)
@click.option("--description", default="", help="Who or what receives it.")
@service_option
@_TOKEN
@_TENANT
@json_option
def add(
    url: str,
    min_severity: str,
    description: str,
    service: str,
    token: str | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    """Register URL; prints the signing secret, which is shown this once only."""
    created = call(
        "POST",
        service,
        "/v1/webhooks",
        token,
        tenant,
        body={"url": url, "min_severity": min_severity, "description": description},
    )
    if as_json:
        echo_json(created)
        return
    click.echo(f"webhook {created['id']} -> {created['url']} ({created['min_severity']}+)")
    click.echo(f"signing secret (shown once, store it on the receiver): {created['secret']}")


@webhooks.command("list")
@service_option
@_TOKEN
@_TENANT
@json_option
def list_(service: str, token: str | None, tenant: str | None, as_json: bool) -> None:
    """The tenant's webhooks."""
    found = call("GET", service, "/v1/webhooks", token, tenant)["webhooks"]
    if as_json:
        echo_json(found)
        return
    click.echo(f"{'id':<34} {'min':<9} {'created (UTC)':<27} url")
    for hook in found:
        click.echo(
            f"{hook['id']:<34} {hook['min_severity']:<9} {hook['created_at']:<27} {hook['url']}"
        )


@webhooks.command("delete")
@click.argument("webhook_id")
@service_option
@_TOKEN
@_TENANT
def delete(webhook_id: str, service: str, token: str | None, tenant: str | None) -> None:
    """Stop delivering to a webhook (its delivery log is kept)."""
    call("DELETE", service, f"/v1/webhooks/{webhook_id}", token, tenant)
    click.echo(f"deleted webhook {webhook_id}")


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@service_option
@_TOKEN
@_TENANT
@json_option
def deliveries(
    webhook_id: str,
    state: str | None,
    limit: int,
    service: str,
    token: str | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    """A webhook's delivery log, newest first."""
    params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
    found = call(
        "GET", service, f"/v1/webhooks/{webhook_id}/deliveries", token, tenant, params=params
    )["deliveries"]
    if as_json:
        echo_json(found)
        return
    click.echo(
        f"{'id':>7} {'kind':<13} {'alert':>6} {'state':<10} {'tries':>5} {'next / done':<27} last"
    )
    for d in found:
        when = d["delivered_at"] or d["next_attempt_at"] or d["last_attempt_at"] or "-"
        last = d["last_error"] or (str(d["last_status_code"]) if d["last_status_code"] else "-")
        alert = str(d["alert_id"]) if d["alert_id"] is not None else "-"
        click.echo(
            f"{d['id']:>7} {d['kind']:<13} {alert:>6} {d['state']:<10} {d['attempts']:>5} "
            f"{when:<27} {last}"
        )


@webhooks.command("test")
@click.argument("webhook_id")
@service_option
@_TOKEN
@_TENANT
@json_option
def test(
    webhook_id: str, service: str, token: str | None, tenant: str | None, as_json: bool
) -> None:
    """Queue a signed `webhook.test` delivery; follow it with `deliveries`."""
    queued = call("POST", service, f"/v1/webhooks/{webhook_id}/test", token, tenant)
    if as_json:
        echo_json(queued)
        return
    click.echo(f"queued test delivery {queued['id']} (event {queued['event_id']})")
