"""GET /v1/alerts, acknowledge and resolve; /v1/alert-rules (custom threshold rules)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from audit.alerts.schemas import (
    AlertOut,
    AlertPageOut,
    RuleIn,
    RuleOut,
    RulesOut,
    SeverityName,
    State,
    TransitionIn,
)
from audit.auth.policy import Permission
from audit.deps import Alerts, Caller, allow, tenant_scope

router = APIRouter(tags=["alerts"])
_ID = Path(ge=1, le=2**31 - 1)
_TENANT = Query(include_in_schema=False)


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get("/v1/alerts", response_model=AlertPageOut, responses={401: {}, 403: {}, 422: {}})
async def list_alerts(
    request: Request,
    who: Caller,
    alerts: Alerts,
    state: Annotated[list[State], Query(max_length=3)] = [],  # noqa: B006 (FastAPI copies)
    rule: Annotated[list[str], Query(max_length=50)] = [],  # noqa: B006
    severity: Annotated[list[SeverityName], Query(max_length=4)] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=16)] = None,
    tenant: Annotated[str | None, _TENANT] = None,
) -> AlertPageOut:
    """The tenant's alerts, newest first (security, admin; auditors read)."""
    allow(request, who, Permission.READ_ALERTS)
    return await alerts.list(
        tenant_scope(who, tenant),
        limit=limit,
        cursor=cursor,
        states=state,
        rules=rule,
        severities=severity,
    )


@router.get("/v1/alerts/{alert_id}", response_model=AlertOut, responses={401: {}, 403: {}, 404: {}})
async def read_alert(
    request: Request,
    who: Caller,
    alerts: Alerts,
    alert_id: Annotated[int, _ID],
    tenant: Annotated[str | None, _TENANT] = None,
) -> AlertOut:
    """One alert of the tenant."""
    allow(request, who, Permission.READ_ALERTS)
    return await alerts.get(tenant_scope(who, tenant), alert_id)


@router.post(
    "/v1/alerts/{alert_id}/acknowledge",
    response_model=AlertOut,
    responses={401: {}, 403: {}, 404: {}, 409: {"description": "not open"}},
)
async def acknowledge_alert(
    request: Request,
    who: Caller,
    alerts: Alerts,
    alert_id: Annotated[int, _ID],
    body: TransitionIn | None = None,
    tenant: Annotated[str | None, _TENANT] = None,
) -> AlertOut:
    """open -> acknowledged (security, admin); recorded in the log of the logs, with the
    reason when one is given."""
    allow(request, who, Permission.RESPOND_ALERTS)
    return await alerts.transition(
        who,
        tenant_scope(who, tenant),
        alert_id,
        "acknowledged",
        client_ip=_ip(request),
        reason=body.reason if body else None,
    )


@router.post(
    "/v1/alerts/{alert_id}/resolve",
    response_model=AlertOut,
    responses={401: {}, 403: {}, 404: {}, 409: {"description": "already resolved"}},
)
async def resolve_alert(
    request: Request,
    who: Caller,
    alerts: Alerts,
    alert_id: Annotated[int, _ID],
    body: TransitionIn | None = None,
    tenant: Annotated[str | None, _TENANT] = None,
) -> AlertOut:
    """open or acknowledged -> resolved (security, admin); recorded in the log of the logs,
    with the reason when one is given. A later repeat of the incident opens a new alert."""
    allow(request, who, Permission.RESPOND_ALERTS)
    return await alerts.transition(
        who,
        tenant_scope(who, tenant),
        alert_id,
        "resolved",
        client_ip=_ip(request),
        reason=body.reason if body else None,
    )


@router.get("/v1/alert-rules", response_model=RulesOut, responses={401: {}, 403: {}})
async def list_rules(
    request: Request, who: Caller, alerts: Alerts, tenant: Annotated[str | None, _TENANT] = None
) -> RulesOut:
    """The built-in rules and the tenant's custom threshold rules."""
    allow(request, who, Permission.READ_ALERTS)
    return await alerts.rules(tenant_scope(who, tenant))


@router.post(
    "/v1/alert-rules",
    response_model=RuleOut,
    status_code=201,
    responses={401: {}, 403: {}, 409: {"description": "too many rules"}, 422: {}},
)
async def create_rule(
    request: Request,
    who: Caller,
    alerts: Alerts,
    body: RuleIn,
    tenant: Annotated[str | None, _TENANT] = None,
) -> RuleOut:
    """A custom threshold rule (security, admin); evaluated from the next window on."""
    allow(request, who, Permission.RESPOND_ALERTS)
    return await alerts.create_rule(who, tenant_scope(who, tenant), body, client_ip=_ip(request))


@router.get(
    "/v1/alert-rules/{rule_id}", response_model=RuleOut, responses={401: {}, 403: {}, 404: {}}
)
async def read_rule(
    request: Request,
    who: Caller,
    alerts: Alerts,
    rule_id: Annotated[int, _ID],
    tenant: Annotated[str | None, _TENANT] = None,
) -> RuleOut:
    allow(request, who, Permission.READ_ALERTS)
    return await alerts.rule(tenant_scope(who, tenant), rule_id)


@router.put(
    "/v1/alert-rules/{rule_id}",
    response_model=RuleOut,
    responses={401: {}, 403: {}, 404: {}, 422: {}},
)
async def update_rule(
    request: Request,
    who: Caller,
    alerts: Alerts,
    rule_id: Annotated[int, _ID],
    body: RuleIn,
    tenant: Annotated[str | None, _TENANT] = None,
) -> RuleOut:
    """Replace a custom rule (security, admin); it starts again from the next window."""
    allow(request, who, Permission.RESPOND_ALERTS)
    return await alerts.update_rule(
        who, tenant_scope(who, tenant), rule_id, body, client_ip=_ip(request)
    )


@router.delete("/v1/alert-rules/{rule_id}", status_code=204, responses={401: {}, 403: {}, 404: {}})
async def delete_rule(
    request: Request,
    who: Caller,
    alerts: Alerts,
    rule_id: Annotated[int, _ID],
    tenant: Annotated[str | None, _TENANT] = None,
) -> Response:
    """Delete a custom rule (security, admin); the alerts it raised stay."""
    allow(request, who, Permission.RESPOND_ALERTS)
    await alerts.delete_rule(who, tenant_scope(who, tenant), rule_id, client_ip=_ip(request))
    return Response(status_code=204)
