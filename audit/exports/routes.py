"""POST /v1/exports (a verifiable bundle for a query) and GET its files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from audit.auth.policy import Permission
from audit.deps import Caller, LogOfLogs, Queries, Settings, Tlog, allow, tenant_scope
from audit.exports import service as exports
from audit.exports.service import ExportFile, ExportOut
from audit.exports.service import ExportRequest as ExportRequest  # re-exported
from audit.exports.service import manifest_query as manifest_query  # re-exported

router = APIRouter(prefix="/v1/exports", tags=["exports"])


@router.post(
    "",
    response_model=ExportOut,
    status_code=201,
    responses={401: {}, 403: {}, 413: {"description": "too many records"}},
)
async def create_export(
    request: Request,
    who: Caller,
    service: Queries,
    settings: Settings,
    servicelog: LogOfLogs,
    tlog: Tlog,
    body: ExportRequest,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> ExportOut:
    """A bundle that anyone can check offline with `ffaudit verify-export`, with every
    exported record's transparency-log inclusion proof. Every export is recorded in the log
    of the logs."""
    allow(request, who, Permission.EXPORT)
    return await exports.create_export(
        service,
        settings,
        servicelog,
        who,
        tenant_scope(who, tenant),
        body,
        tlog=tlog,
        client_ip=request.client.host if request.client else None,
    )


@router.get(
    "/{export_id}/{name}", response_class=FileResponse, responses={401: {}, 403: {}, 404: {}}
)
async def export_file(
    request: Request,
    who: Caller,
    settings: Settings,
    export_id: str,
    name: ExportFile,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> FileResponse:
    """One file of an export of the caller's tenant."""
    allow(request, who, Permission.EXPORT)
    return FileResponse(exports.export_file(settings, tenant_scope(who, tenant), export_id, name))
