"""/v1/producers: the forward-protocol identities of a tenant (administrators with a second
factor; every change in the log of the logs). Another tenant's producer answers 404."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from audit.auth.policy import Permission
from audit.auth.tokens import Principal
from audit.deps import Caller, LogOfLogs, Producers, allow, tenant_scope
from audit.integrity.events import EventAction
from audit.producers.schemas import ProducerCreate, ProducerCreated, ProducerList, ProducerOut
from audit.servicelog import ServiceLog

router = APIRouter(prefix="/v1/producers", tags=["producers"])
ProducerId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
OpenModeTenant = Annotated[str | None, Query(include_in_schema=False)]


async def _log(
    servicelog: ServiceLog, request: Request, who: Principal | None, tenant: str, **metadata: Any
) -> None:
    await servicelog.record(
        who,
        tenant,
        EventAction.PRODUCER_CHANGED,
        metadata=metadata,
        client_ip=request.client.host if request.client else None,
    )


@router.post("", response_model=ProducerCreated, status_code=201, responses={401: {}, 403: {}})
async def create_producer(
    request: Request,
    body: ProducerCreate,
    who: Caller,
    producers: Producers,
    servicelog: LogOfLogs,
    tenant: OpenModeTenant = None,
) -> ProducerCreated:
    """A producer of the tenant, bound to `streams`. The answer carries its forward password:
    shown this once and never again."""
    admin = allow(request, who, Permission.MANAGE_PRODUCERS)
    scope = tenant_scope(admin, tenant)
    created = await asyncio.to_thread(producers.create, scope, body)
    await _log(
        servicelog,
        request,
        admin,
        scope,
        change="created",
        producer=created.name,
        streams=created.streams,
    )
    return created


@router.get("", response_model=ProducerList, responses={401: {}, 403: {}})
async def list_producers(
    request: Request, who: Caller, producers: Producers, tenant: OpenModeTenant = None
) -> ProducerList:
    """The tenant's producers (never their passwords)."""
    scope = tenant_scope(allow(request, who, Permission.MANAGE_PRODUCERS), tenant)
    return await asyncio.to_thread(producers.list, scope)


@router.post(
    "/{producer_id}/revoke", response_model=ProducerOut, responses={401: {}, 403: {}, 404: {}}
)
async def revoke_producer(
    request: Request,
    producer_id: ProducerId,
    who: Caller,
    producers: Producers,
    servicelog: LogOfLogs,
    tenant: OpenModeTenant = None,
) -> ProducerOut:
    """Refuse the producer from now on: new connections fail the handshake, and an open
    connection is closed at its next message."""
    admin = allow(request, who, Permission.MANAGE_PRODUCERS)
    scope = tenant_scope(admin, tenant)
    revoked = await asyncio.to_thread(producers.revoke, scope, producer_id)
    await _log(servicelog, request, admin, scope, change="revoked", producer=revoked.name)
    return revoked
