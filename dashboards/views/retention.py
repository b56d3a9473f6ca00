"""Retention and erasure: policies, legal holds, runs and restores, archives, and erasure
receipts (administrators with a second factor: Permission.MANAGE_RETENTION, as the API).

Reads are those of GET /v1/retention/* and GET /v1/subjects/erasures (RetentionService,
SubjectService; the tenant's own). Runs and restores are what the log of the logs recorded
of them (retention.purged / retention.failed / archive.restored), read through the same
query service as GET /v1/events. Placing and releasing a hold go through
RetentionService.place_hold / release_hold like the API's POSTs (each recorded there).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from audit.auth.policy import Permission, authorize
from audit.errors import InvalidInputError
from audit.integrity.events import EventAction
from audit.query.service import Filters
from audit.retention.schemas import HoldCreate
from audit.services import Services
from dashboards.auth import ChangingViewer, ConsoleViewer, Viewer
from dashboards.pages import PREFIX, View, render
from dashboards.views.common import Svc, admit, allowed, log_view

router = APIRouter()

HISTORY = 50
ERASURES = 100
_HISTORY_ACTIONS = (
    EventAction.RETENTION_PURGED.value,
    EventAction.RETENTION_FAILED.value,
    EventAction.ARCHIVE_RESTORED.value,
    EventAction.HOLD_PLACED.value,
    EventAction.HOLD_RELEASED.value,
)


async def _history(svc: Services, who: Viewer) -> list[dict[str, Any]]:
    """The tenant's retention runs, restores and hold changes, newest first, from its log
    of the logs."""
    stream = svc.servicelog.stream_for(who.tenant)
    query = await asyncio.to_thread(
        svc.queries.build,
        who.tenant,
        None,
        Filters(actions=_HISTORY_ACTIONS, streams=(stream,)),
    )
    page = await svc.queries.search(query, HISTORY, None)
    out = []
    for e in page.events:
        record = e.record
        metadata = record.get("ffaudit.metadata")
        out.append(
            {
                "time": str(record.get("@timestamp", "")).replace("T", " ").removesuffix("Z"),
                "action": record.get("event.action"),
                "outcome": record.get("event.outcome"),
                "metadata": metadata if isinstance(metadata, dict) else {},
                "id": e.doc_id,
            }
        )
    return out


@router.get("/retention", response_class=HTMLResponse)
async def retention_page(request: Request, who: ConsoleViewer, svc: Svc) -> HTMLResponse:
    admit(who, svc, View.RETENTION)
    can_erasures = allowed(who, svc, Permission.READ_ERASURES)
    policies, holds, archives, history = await asyncio.gather(
        asyncio.to_thread(svc.retention.view, who.tenant),
        asyncio.to_thread(svc.retention.holds, who.tenant, active_only=False),
        asyncio.to_thread(svc.retention.archives, who.tenant),
        _history(svc, who),
    )
    erasures = await svc.subjects.erasures(who.tenant, ERASURES) if can_erasures else None
    await log_view(
        request,
        svc,
        who,
        View.RETENTION,
        holds=len(holds),
        archives=len(archives),
        erasures=len(erasures or ()),
    )
    return render(
        request,
        "retention.html",
        who,
        svc.settings,
        view=View.RETENTION,
        context={
            "policies": policies,
            "holds": holds,
            "archives": archives,
            "history": history,
            "erasures": erasures,
            "scopes": ("tenant", "stream", "job", "actor"),
        },
    )


def _admin(who: Viewer, svc: Services) -> None:
    admit(who, svc, View.RETENTION)
    authorize(who.principal, svc.settings, Permission.MANAGE_RETENTION)


@router.post("/retention/holds")
async def place_hold(
    who: ChangingViewer,
    svc: Svc,
    scope: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=1000)],
    value: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """POST /v1/retention/holds from the console's form: the value is the stream, the job
    or the raw actor id (pseudonymised by the service), as the scope says."""
    _admin(who, svc)
    fields: dict[str, Any] = {"scope": scope, "reason": reason.strip()}
    if scope in ("stream", "job", "actor") and value.strip():
        fields[scope] = value.strip()
    try:
        body = HoldCreate.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInputError("; ".join(str(e["msg"]) for e in exc.errors())) from None
    await svc.retention.place_hold(who.principal, who.tenant, body)
    return RedirectResponse(f"{PREFIX}/retention", status_code=303)


@router.post("/retention/holds/{hold_id}/release")
async def release_hold(
    who: ChangingViewer,
    svc: Svc,
    hold_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    reason: Annotated[str, Form(max_length=1000)],
) -> Response:
    _admin(who, svc)
    if not reason.strip():
        raise InvalidInputError("reason: say why the hold is released")
    await svc.retention.release_hold(who.principal, who.tenant, hold_id, reason.strip())
    return RedirectResponse(f"{PREFIX}/retention", status_code=303)
