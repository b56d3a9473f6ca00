"""The alerts inbox: the tenant's alerts by state, what is behind each, and the workflow.

Reads are AlertService's (the service of GET /v1/alerts and /v1/alerts/{id}: the same
tenant scope); acknowledge and resolve go through `AlertService.transition` like the API's
POSTs, so each is recorded in the log of the logs before it is committed. Webhook deliveries
are shown to whoever may manage webhooks (the rule of /v1/webhooks). The list polls itself
(htmx, every 10 s) so that new alerts appear without a reload; the poll, like the integrity
badge, is not logged (opening the inbox is).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from audit.alerts.kinds import RuleId
from audit.alerts.schemas import AlertOut, SeverityName, State
from audit.auth.policy import Permission, authorize
from audit.errors import InvalidInputError
from audit.integrity.record import document_id
from audit.services import Services
from audit.webhooks.schemas import DeliveryOut, WebhookOut
from dashboards.auth import ChangingViewer, ConsoleViewer, Viewer
from dashboards.pages import PREFIX, View, render
from dashboards.views.common import Svc, admit, allowed, log_view

router = APIRouter()

PAGE_SIZE = 50
DELIVERIES = 50  # latest deliveries shown per webhook
STATES: tuple[str, ...] = get_args(State)
SEVERITIES: tuple[str, ...] = get_args(SeverityName)
# Rules about records that failed verification: their records are the broken or rejected.
_INTEGRITY_RULES = frozenset(
    {RuleId.INTEGRITY_FAILURE, RuleId.FORK, RuleId.CHAIN_ATTACK, RuleId.STORE_TAMPERED}
)
_ID = Path(ge=1, le=2**31 - 1)


@dataclass(frozen=True, slots=True)
class InboxFilters:
    state: str
    severities: tuple[str, ...]
    stream: str | None

    def url(self, path: str = "/alerts", **changes: Any) -> str:
        params: dict[str, Any] = {
            "state": self.state,
            "severity": list(self.severities),
            "stream": self.stream,
            **changes,
        }
        query = urlencode(
            [
                (k, v)
                for k, values in params.items()
                for v in (values if isinstance(values, list) else [values])
                if v not in (None, "")
            ]
        )
        return PREFIX + path + (f"?{query}" if query else "")


def _filters(state: str | None, severity: Sequence[str] | None, stream: str | None) -> InboxFilters:
    state = state or "open"
    if state not in STATES:
        raise InvalidInputError(f"state: one of {', '.join(STATES)}")
    severities = tuple(dict.fromkeys(s for s in severity or () if s))
    if any(s not in SEVERITIES for s in severities):
        raise InvalidInputError(f"severity: one of {', '.join(SEVERITIES)}")
    return InboxFilters(state, severities, (stream or "").strip() or None)


def events_url(alert: AlertOut) -> str | None:
    """The events explorer showing the records behind `alert`: the query a threshold rule
    stored with it (`detail.records_query`, GET /v1/events parameters), else its stream,
    narrowed to the failed records for an integrity alert."""
    shown = alert.detail.get("records_query")
    if isinstance(shown, Mapping) and isinstance(shown.get("params"), Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in shown["params"].items():
            for item in value if isinstance(value, list) else [value]:
                if item is not None and item != "":
                    pairs.append((str(name), str(item)))
        if pairs:
            return f"{PREFIX}/events?{urlencode(pairs)}"
    if alert.stream_id:
        pairs = [("stream", alert.stream_id)]
        if alert.rule in _INTEGRITY_RULES:
            pairs += [("verdict", "broken"), ("verdict", "rejected")]
        return f"{PREFIX}/events?{urlencode(pairs)}"
    return None


def record_url(alert: AlertOut) -> str | None:
    """The one record an ingest alert names (its stream and sequence), if any."""
    sequence = alert.detail.get("sequence")
    if alert.stream_id and type(sequence) is int and sequence > 0:
        return f"{PREFIX}/events/{document_id(alert.stream_id, sequence)}"
    return None


@dataclass(frozen=True, slots=True)
class Receiver:
    webhook: WebhookOut
    host: str
    deliveries: list[DeliveryOut]


async def _receivers(svc: Services, who: Viewer) -> list[Receiver] | None:
    """The tenant's webhooks and their latest deliveries; None for a caller who may not
    manage webhooks (GET /v1/webhooks answers them 403)."""
    if not allowed(who, svc, Permission.MANAGE_WEBHOOKS):
        return None
    hooks = (await asyncio.to_thread(svc.webhooks.list, who.tenant)).webhooks
    limit = min(DELIVERIES, svc.settings.max_page_size)
    logs = await asyncio.gather(
        *(
            asyncio.to_thread(svc.webhooks.deliveries, who.tenant, h.id, state=None, limit=limit)
            for h in hooks
        )
    )
    return [
        # The host only: some receivers carry a token in their URL's path.
        Receiver(h, _host(h.url), log.deliveries)
        for h, log in zip(hooks, logs, strict=True)
    ]


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1]


def _by_alert(receivers: list[Receiver] | None) -> dict[int, list[tuple[str, DeliveryOut]]]:
    out: dict[int, list[tuple[str, DeliveryOut]]] = {}
    for r in receivers or ():
        for d in r.deliveries:
            if d.alert_id is not None:
                out.setdefault(d.alert_id, []).append((r.host, d))
    return out


async def _list_context(
    svc: Services, who: Viewer, f: InboxFilters, cursor: str | None
) -> dict[str, Any]:
    (page, counts), receivers = await asyncio.gather(
        svc.alerts.inbox(
            who.tenant,
            limit=PAGE_SIZE,
            cursor=cursor or None,
            states=[f.state],
            severities=f.severities,
            streams=[f.stream] if f.stream else [],
        ),
        _receivers(svc, who),
    )
    return {
        "alerts": page.alerts,
        "counts": counts,
        "f": f,
        "states": STATES,
        "severities": SEVERITIES,
        "next_url": f.url(cursor=page.next_cursor) if page.next_cursor else None,
        "first_url": f.url() if cursor else None,
        "poll_url": f.url("/alerts/list", cursor=cursor),
        "back": f.url(cursor=cursor),
        "can_respond": allowed(who, svc, Permission.RESPOND_ALERTS),
        "receivers": receivers,
        "deliveries": _by_alert(receivers),
        "events_url": events_url,
        "record_url": record_url,
    }


StateQ = Annotated[str | None, Query(max_length=16)]
SeverityQ = Annotated[list[str] | None, Query(max_length=4)]
StreamQ = Annotated[str | None, Query(max_length=128)]
CursorQ = Annotated[str | None, Query(max_length=16)]


@router.get("/alerts", response_class=HTMLResponse)
async def inbox(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    state: StateQ = None,
    severity: SeverityQ = None,
    stream: StreamQ = None,
    cursor: CursorQ = None,
) -> HTMLResponse:
    admit(who, svc, View.ALERTS)
    f = _filters(state, severity, stream)
    context = await _list_context(svc, who, f, cursor)
    await log_view(
        request,
        svc,
        who,
        View.ALERTS,
        filters=[
            "state",
            *(["severity"] if f.severities else []),
            *(["stream"] if f.stream else []),
        ],
        results=len(context["alerts"]),
    )
    return render(request, "alerts.html", who, svc.settings, view=View.ALERTS, context=context)


@router.get("/alerts/list", response_class=HTMLResponse)
async def inbox_list(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    state: StateQ = None,
    severity: SeverityQ = None,
    stream: StreamQ = None,
    cursor: CursorQ = None,
) -> HTMLResponse:
    """The list alone, polled by the open inbox: new alerts appear without a reload."""
    admit(who, svc, View.ALERTS)
    f = _filters(state, severity, stream)
    context = await _list_context(svc, who, f, cursor)
    return render(request, "alerts_list.html", who, svc.settings, view=View.ALERTS, context=context)


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
async def alert_page(
    request: Request, who: ConsoleViewer, svc: Svc, alert_id: Annotated[int, _ID]
) -> HTMLResponse:
    """One alert (GET /v1/alerts/{id}): its detail, its records, its deliveries."""
    admit(who, svc, View.ALERTS)
    alert, receivers = await asyncio.gather(
        svc.alerts.get(who.tenant, alert_id), _receivers(svc, who)
    )
    await log_view(request, svc, who, "alert", alert_id=alert_id, results=1)
    return render(
        request,
        "alerts_detail.html",
        who,
        svc.settings,
        view=View.ALERTS,
        context={
            "alert": alert,
            "receivers": receivers,
            "deliveries": _by_alert(receivers).get(alert.id, []),
            "can_respond": allowed(who, svc, Permission.RESPOND_ALERTS),
            "events_url": events_url,
            "record_url": record_url,
            "back": f"{PREFIX}/alerts/{alert.id}",
            "inbox": InboxFilters(alert.state, (), None).url(),
        },
    )


def _back(value: str, default: str) -> str:
    """Where to go after a change: a console alerts page only (never another site)."""
    if value.startswith(f"{PREFIX}/alerts") and "\\" not in value and "//" not in value:
        return value
    return default


async def _transition(
    request: Request, who: Viewer, svc: Services, alert_id: int, to: str, reason: str, back: str
) -> Response:
    admit(who, svc, View.ALERTS)
    authorize(who.principal, svc.settings, Permission.RESPOND_ALERTS)  # the API's rule
    reason = reason.strip()
    if len(reason) > 1000:
        raise InvalidInputError("reason: at most 1000 characters")
    await svc.alerts.transition(
        who.principal,
        who.tenant,
        alert_id,
        to,
        client_ip=request.client.host if request.client else None,
        reason=reason or None,
    )
    return RedirectResponse(_back(back, f"{PREFIX}/alerts/{alert_id}"), status_code=303)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(
    request: Request,
    who: ChangingViewer,
    svc: Svc,
    alert_id: Annotated[int, _ID],
    reason: Annotated[str, Form(max_length=2000)] = "",
    back: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    return await _transition(request, who, svc, alert_id, "acknowledged", reason, back)


@router.post("/alerts/{alert_id}/resolve")
async def resolve(
    request: Request,
    who: ChangingViewer,
    svc: Svc,
    alert_id: Annotated[int, _ID],
    reason: Annotated[str, Form(max_length=2000)] = "",
    back: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    return await _transition(request, who, svc, alert_id, "resolved", reason, back)
