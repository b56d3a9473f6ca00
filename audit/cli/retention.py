"""`ffaudit retention ...`: runs, archives and restores, policies and legal holds.

HTTP clients of the service (an administrator's bearer token, with a second factor): the
service holds the run lease and writes the log of the logs, so a command run beside it
never races it or forks its service stream.
"""

from __future__ import annotations

from typing import Any

import click

from audit.cli.client import call, echo_json, service_option, tenant_option, token_option
from audit.errors import (
    AuthenticationError,
    BusyError,
    ConflictError,
    FFAuditError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    UsageError,
)

_BY_STATUS: dict[int, type[FFAuditError]] = {
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
    503: BusyError,
}
_TOKEN = token_option("Admin bearer token [FFAUDIT_TOKEN].")
_TENANT = tenant_option()


def _call(
    method: str,
    service: str,
    path: str,
    token: str | None,
    tenant: str | None,
    body: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    # Runs snapshot or archive whole days: allow them time.
    return call(
        method,
        service,
        path,
        token,
        tenant,
        params=params,
        body=body,
        timeout=3600,
        refusals=_BY_STATUS,
        status_in_message=True,
    )


@click.group()
def retention() -> None:
    """Retention: runs, archives and restores, policies, legal holds (administrators)."""


@retention.command("run")
@service_option
@_TOKEN
@_TENANT
@click.option("--dry-run", is_flag=True, help="Only say which days would be purged.")
def run_command(service: str, token: str | None, tenant: str | None, dry_run: bool) -> None:
    """Archive, then purge, the tenant's days past retention and not under a legal hold.
    Prints the run report (JSON); exit status 1 when the run failed."""
    report = _call("POST", service, "/v1/retention/run", token, tenant, {"dry_run": dry_run})
    echo_json(report)
    if report.get("status") != "succeeded":
        raise click.exceptions.Exit(1)


@retention.command("archives")
@service_option
@_TOKEN
@_TENANT
def archives_command(service: str, token: str | None, tenant: str | None) -> None:
    """The tenant's archives (one per purged day), with the ids `restore` takes."""
    echo_json(_call("GET", service, "/v1/retention/archives", token, tenant))


@retention.command("restore")
@service_option
@_TOKEN
@_TENANT
@click.argument("archive_id", type=int)
def restore_command(service: str, token: str | None, tenant: str | None, archive_id: int) -> None:
    """Bring archive ARCHIVE_ID's records back (verified first). Place a legal hold first,
    or the next retention run purges them again."""
    echo_json(_call("POST", service, f"/v1/retention/archives/{archive_id}/restore", token, tenant))


@retention.command("policies")
@service_option
@_TOKEN
@_TENANT
@click.option("--set", "assignments", multiple=True, metavar="CLASS=DAYS")
def policies_command(
    service: str, token: str | None, tenant: str | None, assignments: tuple[str, ...]
) -> None:
    """Show the retention of each action class; `--set processing=365` changes one."""
    for assignment in assignments:
        name, _, days = assignment.partition("=")
        if not days.isdigit():
            raise UsageError(f"--set wants CLASS=DAYS, not {assignment!r}")
        path = f"/v1/retention/policies/{name}"
        _call("PUT", service, path, token, tenant, {"days": int(days)})
    echo_json(_call("GET", service, "/v1/retention/policies", token, tenant))


@retention.group("holds")
def holds() -> None:
    """Legal holds: what they cover is never purged until they are released."""


@holds.command("list")
@service_option
@_TOKEN
@_TENANT
@click.option("--all", "everything", is_flag=True, help="Released holds too.")
def holds_list(service: str, token: str | None, tenant: str | None, everything: bool) -> None:
    params = {"active_only": str(not everything).lower()}
    echo_json(_call("GET", service, "/v1/retention/holds", token, tenant, params=params))


@holds.command("place")
@service_option
@_TOKEN
@_TENANT
@click.option("--stream", help="Hold a stream.")
@click.option("--job", help="Hold a job (trace.id).")
@click.option("--actor", help="Hold a raw user id (pseudonymised by the service).")
@click.option("--actor-hash", help="Hold a user.hash pseudonym.")
@click.option("--whole-tenant", is_flag=True, help="Hold everything of the tenant.")
@click.option("--reason", required=True)
def holds_place(
    service: str,
    token: str | None,
    tenant: str | None,
    stream: str | None,
    job: str | None,
    actor: str | None,
    actor_hash: str | None,
    whole_tenant: bool,
    reason: str,
) -> None:
    """Place a legal hold; exactly one of the scope options."""
    chosen = {
        "stream": stream,
        "job": job,
        "actor": actor,
        "actor_hash": actor_hash,
    }
    given = {k: v for k, v in chosen.items() if v is not None}
    if whole_tenant == bool(given) or len(given) > 1:
        raise UsageError(
            "name exactly one of --stream, --job, --actor, --actor-hash, --whole-tenant"
        )
    scope = "tenant" if whole_tenant else next(iter(given)).replace("actor_hash", "actor")
    body = {"scope": scope, "reason": reason, **given}
    echo_json(_call("POST", service, "/v1/retention/holds", token, tenant, body))


@holds.command("release")
@service_option
@_TOKEN
@_TENANT
@click.argument("hold_id", type=int)
@click.option("--reason", required=True)
def holds_release(
    service: str, token: str | None, tenant: str | None, hold_id: int, reason: str
) -> None:
    path = f"/v1/retention/holds/{hold_id}/release"
    echo_json(_call("POST", service, path, token, tenant, {"reason": reason}))
