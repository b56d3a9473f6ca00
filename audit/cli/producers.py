"""`ffaudit producers ...`: the forward-protocol identities of a tenant (HTTP clients of the
service, authenticated with an administrator's bearer token carrying a second factor)."""

from __future__ import annotations

import click

from audit.cli.client import (
    call,
    echo_json,
    json_option,
    service_option,
    tenant_option,
    token_option,
)

_TOKEN = token_option("Bearer token of an administrator with a second factor [FFAUDIT_TOKEN].")
_TENANT = tenant_option()


@click.group()
def producers() -> None:
    """Producers: who may write which streams over the forward port (with
    FFAUDIT_FORWARD_SHARED_KEY set, every engine logs in as one)."""


@producers.command("add")
@click.argument("label")
@click.option(
    "--stream",
    "streams",
    multiple=True,
    required=True,
    help="A stream it may write: a name, a prefix ending in '*', or '*' (repeatable).",
)
@click.option("--description", default="")
@service_option
@_TOKEN
@_TENANT
@json_option
def add(
    label: str,
    streams: tuple[str, ...],
    description: str,
    service: str,
    token: str | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    """Create producer LABEL; prints its forward username and password (shown this once)."""
    body = {"label": label, "streams": list(streams), "description": description}
    created = call("POST", service, "/v1/producers", token, tenant, body=body)
    if as_json:
        echo_json(created)
        return
    click.echo(f"producer {created['id']}: may write {', '.join(created['streams'])}")
    click.echo("give the engine (shown once; the service keeps it encrypted):")
    click.echo(f"  FFENGINE_FORWARD_USERNAME={created['name']}")
    click.echo(f"  FFENGINE_FORWARD_PASSWORD={created['password']}")


@producers.command("list")
@service_option
@_TOKEN
@_TENANT
@json_option
def list_(service: str, token: str | None, tenant: str | None, as_json: bool) -> None:
    """The tenant's producers (never their passwords)."""
    found = call("GET", service, "/v1/producers", token, tenant)["producers"]
    if as_json:
        echo_json(found)
        return
    click.echo(f"{'id':<34} {'name':<32} {'state':<8} streams")
    for p in found:
        state = "revoked" if p["revoked_at"] else "active"
        click.echo(f"{p['id']:<34} {p['name']:<32} {state:<8} {', '.join(p['streams'])}")


@producers.command("revoke")
@click.argument("producer_id")
@service_option
@_TOKEN
@_TENANT
@json_option
def revoke(
    producer_id: str, service: str, token: str | None, tenant: str | None, as_json: bool
) -> None:
    """Refuse PRODUCER_ID from now on (open connections are closed within seconds)."""
    revoked = call("POST", service, f"/v1/producers/{producer_id}/revoke", token, tenant)
    if as_json:
        echo_json(revoked)
        return
    click.echo(f"producer {revoked['name']} revoked at {revoked['revoked_at']}")
