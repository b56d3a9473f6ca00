"""Who may do what: one table, read by the API routes and the console alike.

Each permission carries the roles that grant it. `authorize` applies the rule the routes
always applied (`require`: admin only with a second factor); reads of records go through
`scope`, where the `subject` role narrows to the caller's own records. The console
(dashboards/) hides a view whose permission the caller lacks and answers 403 on its URL
through these same functions: there is no second table to drift from this one.
"""

from __future__ import annotations

from enum import StrEnum

from audit.auth.tokens import Principal, ReadScope, Role, read_scope, require
from audit.errors import FFAuditError
from audit.settings import AuditSettings

_A, _S, _D, _E = Role.AUDITOR, Role.SECURITY, Role.ADMIN, Role.ENGINEER


class Permission(StrEnum):
    roles: tuple[Role, ...]

    def __new__(cls, value: str, *roles: Role) -> Permission:
        member = str.__new__(cls, value)
        member._value_ = value
        member.roles = roles
        return member

    # Records: these roles read the tenant's; `subject` its own (see `scope`).
    READ_EVENTS = "read_events", _A, _S, _D
    READ_STATS = "read_stats", _A, _S, _D
    READ_JOBS = "read_jobs", _E, _A, _S, _D
    VERIFY = "verify", _A, _S, _D
    EXPORT = "export", _A, _D
    READ_STREAMS = "read_streams", _D, _A, _S, _E
    MANAGE_STREAMS = "manage_streams", _D
    READ_ALERTS = "read_alerts", _S, _D, _A
    RESPOND_ALERTS = "respond_alerts", _S, _D
    READ_REVERIFY = "read_reverify", _D, _A, _S
    MANAGE_RETENTION = "manage_retention", _D
    READ_RETENTION = "read_retention", _D, _A, _S
    ERASE_SUBJECTS = "erase_subjects", _D
    READ_ERASURES = "read_erasures", _D, _A
    MANAGE_PRODUCERS = "manage_producers", _D
    MANAGE_WEBHOOKS = "manage_webhooks", _S, _D
    READ_TLOG = "read_tlog", _A, _S, _D, _E
    SIGN_CHECKPOINTS = "sign_checkpoints", _A, _D
    INGEST = "ingest", Role.INGEST


def authorize(who: Principal | None, settings: AuditSettings, permission: Permission) -> None:
    """Raise ForbiddenError unless `who` holds `permission`; open mode (None) passes."""
    if who is not None:
        require(who, settings, *permission.roles)


def scope(who: Principal | None, settings: AuditSettings, permission: Permission) -> ReadScope:
    """What a read of records shows `who`: the tenant, or (subject role) its own records."""
    if who is None:
        return ReadScope.TENANT
    return read_scope(who, settings, *permission.roles)


def holds(who: Principal | None, settings: AuditSettings, permission: Permission) -> bool:
    """Whether `authorize` would pass: what the console's navigation shows."""
    try:
        authorize(who, settings, permission)
    except FFAuditError:
        return False
    return True


def reads(who: Principal | None, settings: AuditSettings, permission: Permission) -> bool:
    """Whether `scope` grants anything (the tenant, or the caller's own records)."""
    try:
        scope(who, settings, permission)
    except FFAuditError:
        return False
    return True
