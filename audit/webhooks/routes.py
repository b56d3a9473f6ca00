"""/v1/webhooks: a tenant's alert receivers, their delivery log, and test deliveries.

Managed by the security role, or by administrators with a second factor; the tenant is
always the token's. Another tenant's webhook answers 404, exactly like a missing one.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Path, Query, Request

from audit.auth.policy import Permission
from audit.auth.tokens import Principal
from audit.deps import Caller, Deliverer, LogOfLogs, Settings, Webhooks, allow, tenant_scope
from audit.integrity.events import EventAction
from audit.servicelog import ServiceLog
from audit.webhooks.destinations import DestinationPolicy
from audit.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    DeliveryState,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
WebhookId = Annotated[str, Path(min_length=1, max_length=64)]
OpenModeTenant = Annotated[str | None, Query(include_in_schema=False)]


def _manager(request: Request, who: Principal | None) -> Principal | None:
    # Security, or admin with a second factor (an admin without one is refused).
    return allow(request, who, Permission.MANAGE_WEBHOOKS)


async def _log(
    servicelog: ServiceLog, request: Request, who: Principal | None, tenant: str, **metadata: Any
) -> None:
    await servicelog.record(
        who,
        tenant,
        EventAction.WEBHOOK_CHANGED,
        metadata=metadata,
        client_ip=request.client.host if request.client else None,
    )


@router.post("", response_model=WebhookCreated, status_code=201, responses={401: {}, 403: {}})
async def create_webhook(
    request: Request,
    body: WebhookCreate,
    who: Caller,
    webhooks: Webhooks,
    settings: Settings,
    servicelog: LogOfLogs,
    tenant: OpenModeTenant = None,
) -> WebhookCreated:
    """Register a receiver of the tenant's alerts (of `min_severity` and above). The answer
    carries the signing secret: it is shown this once and never again."""
    manager = _manager(request, who)
    scope = tenant_scope(manager, tenant)
    # Resolves the host (a thread): a private or internal destination is refused with 422.
    await asyncio.to_thread(DestinationPolicy(settings).check, body.url)
    created = await asyncio.to_thread(webhooks.create, scope, body)
    await _log(
        servicelog,
        request,
        manager,
        scope,
        change="created",
        webhook_id=created.id,
        host=httpx.URL(created.url).host,  # not the URL: some carry a token in their path
        min_severity=created.min_severity,
    )
    return created


@router.get("", response_model=WebhookList, responses={401: {}, 403: {}})
async def list_webhooks(
    request: Request, who: Caller, webhooks: Webhooks, tenant: OpenModeTenant = None
) -> WebhookList:
    """The tenant's webhooks (never their secrets)."""
    scope = tenant_scope(_manager(request, who), tenant)
    return await asyncio.to_thread(webhooks.list, scope)


@router.delete("/{webhook_id}", status_code=204, responses={401: {}, 403: {}, 404: {}})
async def delete_webhook(
    request: Request,
    webhook_id: WebhookId,
    who: Caller,
    webhooks: Webhooks,
    servicelog: LogOfLogs,
    tenant: OpenModeTenant = None,
) -> None:
    """Stop delivering to a webhook; deliveries not yet sent are marked failed. Its delivery
    log stays in the database."""
    manager = _manager(request, who)
    scope = tenant_scope(manager, tenant)
    dropped = await asyncio.to_thread(webhooks.delete, scope, webhook_id)
    await _log(
        servicelog, request, manager, scope, change="deleted", webhook_id=webhook_id, unsent=dropped
    )


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryList, responses={401: {}, 403: {}, 404: {}}
)
async def list_deliveries(
    request: Request,
    webhook_id: WebhookId,
    who: Caller,
    webhooks: Webhooks,
    settings: Settings,
    state: DeliveryState | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    tenant: OpenModeTenant = None,
) -> DeliveryList:
    """The delivery log, newest first: attempts, last status or error, next attempt."""
    scope = tenant_scope(_manager(request, who), tenant)
    limit = min(limit, settings.max_page_size)
    return await asyncio.to_thread(webhooks.deliveries, scope, webhook_id, state=state, limit=limit)


@router.post(
    "/{webhook_id}/test",
    response_model=DeliveryOut,
    status_code=202,
    responses={401: {}, 403: {}, 404: {}},
)
async def queue_test_delivery(
    request: Request,
    webhook_id: WebhookId,
    who: Caller,
    webhooks: Webhooks,
    deliverer: Deliverer,
    tenant: OpenModeTenant = None,
) -> DeliveryOut:
    """Queue a `webhook.test` delivery (signed like an alert, no alert in it); follow it in
    the delivery log."""
    scope = tenant_scope(_manager(request, who), tenant)
    queued = await asyncio.to_thread(webhooks.queue_test, scope, webhook_id)
    if deliverer is not None:
        deliverer.wake()
    return queued
