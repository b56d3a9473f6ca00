from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from audit.auth.policy import Permission
from audit.deps import Caller, LogOfLogs, Reverification, allow, tenant_scope
from audit.integrity.events import EventAction
from audit.reverify.schemas import MarksOut

router = APIRouter(prefix="/v1/reverify", tags=["verification"])
_AUTH: dict[int | str, dict[str, Any]] = {401: {}, 403: {}}


@router.get("", response_model=MarksOut, responses=_AUTH)
async def reverify_marks(
    request: Request,
    who: Caller,
    reverifier: Reverification,
    servicelog: LogOfLogs,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> MarksOut:
    """How far the scheduled re-verification last found each stored chain intact: a read
    is as current as its stream's `checked_at` (a `store_tampered` alert says otherwise)."""
    reader = allow(request, who, Permission.READ_REVERIFY)
    scope = tenant_scope(reader, tenant)
    out = MarksOut(streams=await asyncio.to_thread(reverifier.marks, scope))
    await servicelog.record(
        reader,
        scope,
        EventAction.AUDIT_QUERIED,
        metadata={"endpoint": "reverify", "results": len(out.streams)},
        client_ip=request.client.host if request.client else None,
    )
    return out
