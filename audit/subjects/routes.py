"""POST /v1/subjects/erase (GDPR erasure) and GET /v1/subjects/erasures (tombstones)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from audit.auth.policy import Permission
from audit.deps import Caller, Subjects, allow, tenant_scope
from audit.integrity.events import EventAction
from audit.integrity.pseudonym import PiiKind
from audit.subjects.schemas import EraseRequest, ErasureListOut, ErasureOut

router = APIRouter(prefix="/v1/subjects", tags=["gdpr"])


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post(
    "/erase", response_model=ErasureOut, responses={401: {}, 403: {}, 409: {}, 422: {}, 503: {}}
)
async def erase_subject(
    request: Request,
    who: Caller,
    subjects: Subjects,
    body: EraseRequest,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> ErasureOut:
    """Make a data subject's pseudonyms unlinkable in the caller's tenant by destroying its
    per-subject keys; records and chains stay intact. Admin (second factor) only; recorded
    in the log of the logs with an erasure id, never the raw id."""
    allow(request, who, Permission.ERASE_SUBJECTS)
    scope = tenant_scope(who, tenant)
    return await subjects.erase(
        who, scope, PiiKind(body.kind), body.subject, client_ip=_client_ip(request)
    )


@router.get("/erasures", response_model=ErasureListOut, responses={401: {}, 403: {}})
async def list_erasures(
    request: Request,
    who: Caller,
    subjects: Subjects,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> ErasureListOut:
    """The tenant's erasure tombstones, newest first (id, kind, time, entries destroyed)."""
    allow(request, who, Permission.READ_ERASURES)
    scope = tenant_scope(who, tenant)
    erasures = await subjects.erasures(scope, limit)
    await subjects.servicelog.record(
        who,
        scope,
        EventAction.AUDIT_QUERIED,
        metadata={"endpoint": "erasures", "results": len(erasures)},
        client_ip=_client_ip(request),
    )
    return ErasureListOut(erasures=erasures)
