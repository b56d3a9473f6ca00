"""/v1/retention: policies, legal holds, runs, archives and restores (administrators, with a
second factor), and the signed retention checkpoints (auditors too)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from audit.auth.policy import Permission
from audit.auth.tokens import Principal
from audit.deps import Caller, LogOfLogs, Retention, allow, tenant_scope
from audit.integrity.events import EventAction
from audit.retention.classes import ActionClass
from audit.retention.schemas import (
    ArchiveOut,
    CheckpointOut,
    HoldCreate,
    HoldOut,
    HoldRelease,
    PoliciesOut,
    PolicyOut,
    PolicyUpdate,
    RestoreOut,
    RunOut,
    RunRequest,
)
from audit.servicelog import ServiceLog

router = APIRouter(prefix="/v1/retention", tags=["retention"])
_AUTH: dict[int | str, dict[str, Any]] = {401: {}, 403: {}}
_Tenant = Annotated[str | None, Query(include_in_schema=False)]
_Id = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _admin(request: Request, who: Principal | None, tenant: str | None) -> str:
    allow(request, who, Permission.MANAGE_RETENTION)
    return tenant_scope(who, tenant)


async def _read(
    servicelog: ServiceLog, request: Request, who: Principal | None, tenant: str, **metadata: Any
) -> None:
    await servicelog.record(
        who,
        tenant,
        EventAction.AUDIT_QUERIED,
        metadata=metadata,
        client_ip=request.client.host if request.client else None,
    )


@router.get("/policies", response_model=PoliciesOut, responses=_AUTH)
async def get_policies(
    request: Request,
    who: Caller,
    retention: Retention,
    servicelog: LogOfLogs,
    tenant: _Tenant = None,
) -> PoliciesOut:
    """How long each action class is kept, the default and the floor."""
    scope = _admin(request, who, tenant)
    out = await asyncio.to_thread(retention.view, scope)
    await _read(servicelog, request, who, scope, endpoint="retention_policies")
    return out


@router.put("/policies/{action_class}", response_model=PolicyOut, responses={**_AUTH, 422: {}})
async def put_policy(
    request: Request,
    who: Caller,
    retention: Retention,
    action_class: ActionClass,
    body: PolicyUpdate,
    tenant: _Tenant = None,
) -> PolicyOut:
    """Set a class's retention (never below the floor: 422); recorded with old and new days."""
    scope = _admin(request, who, tenant)
    return await retention.set_policy(who, scope, action_class, body.days)


@router.get("/holds", response_model=list[HoldOut], responses=_AUTH)
async def list_holds(
    request: Request,
    who: Caller,
    retention: Retention,
    servicelog: LogOfLogs,
    active_only: bool = True,
    tenant: _Tenant = None,
) -> list[HoldOut]:
    scope = _admin(request, who, tenant)
    out = await asyncio.to_thread(retention.holds, scope, active_only=active_only)
    await _read(servicelog, request, who, scope, endpoint="legal_holds", results=len(out))
    return out


@router.post(
    "/holds", response_model=HoldOut, status_code=201, responses={**_AUTH, 404: {}, 409: {}}
)
async def place_hold(
    request: Request, who: Caller, retention: Retention, body: HoldCreate, tenant: _Tenant = None
) -> HoldOut:
    """Block deletion of everything the hold covers (tenant, stream, job, or an actor: a raw
    id is pseudonymised under every active key of the tenant's keyring), until released."""
    scope = _admin(request, who, tenant)
    return await retention.place_hold(who, scope, body)


@router.post(
    "/holds/{hold_id}/release", response_model=HoldOut, responses={**_AUTH, 404: {}, 409: {}}
)
async def release_hold(
    request: Request,
    who: Caller,
    retention: Retention,
    hold_id: _Id,
    body: HoldRelease,
    tenant: _Tenant = None,
) -> HoldOut:
    scope = _admin(request, who, tenant)
    return await retention.release_hold(who, scope, hold_id, body.reason)


@router.post("/run", response_model=RunOut, responses={**_AUTH, 503: {}})
async def run(
    request: Request,
    who: Caller,
    retention: Retention,
    body: RunRequest | None = None,
    tenant: _Tenant = None,
) -> RunOut:
    """Archive and purge the caller's tenant's expired days now (`dry_run`: only say which);
    503 while another run (of any replica) is in progress."""
    scope = _admin(request, who, tenant)
    dry_run = body.dry_run if body is not None else False
    return await retention.run(who, scope, dry_run=dry_run)


@router.get("/archives", response_model=list[ArchiveOut], responses=_AUTH)
async def list_archives(
    request: Request,
    who: Caller,
    retention: Retention,
    servicelog: LogOfLogs,
    tenant: _Tenant = None,
) -> list[ArchiveOut]:
    scope = _admin(request, who, tenant)
    out = await asyncio.to_thread(retention.archives, scope)
    await _read(servicelog, request, who, scope, endpoint="retention_archives", results=len(out))
    return out


@router.post(
    "/archives/{archive_id}/restore",
    response_model=RestoreOut,
    responses={**_AUTH, 404: {}, 409: {}},
)
async def restore_archive(
    request: Request, who: Caller, retention: Retention, archive_id: _Id, tenant: _Tenant = None
) -> RestoreOut:
    """Bring an archived day back after verifying it (manifest signature and SHA-256, or the
    snapshot). Place a legal hold first, or the next run purges the day again."""
    scope = _admin(request, who, tenant)
    return await retention.restore(who, scope, archive_id)


@router.get("/checkpoints", response_model=list[CheckpointOut], responses=_AUTH)
async def list_checkpoints(
    request: Request,
    who: Caller,
    retention: Retention,
    servicelog: LogOfLogs,
    stream: Annotated[str | None, Query(max_length=128)] = None,
    tenant: _Tenant = None,
) -> list[CheckpointOut]:
    """The signed retention checkpoints (docs/record-spec.md §12), for offline checks."""
    allow(request, who, Permission.READ_RETENTION)
    scope = tenant_scope(who, tenant)
    out = await asyncio.to_thread(retention.checkpoints, scope, stream)
    await _read(servicelog, request, who, scope, endpoint="retention_checkpoints", results=len(out))
    return out
