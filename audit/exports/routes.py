"""POST /v1/exports (a verifiable bundle for a query) and GET its files."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, StringConstraints

from audit.auth.policy import Permission
from audit.deps import Caller, LogOfLogs, Queries, Settings, allow, tenant_scope
from audit.errors import NotFoundError, UsageError
from audit.exports.bundle import write_export
from audit.exports.chain import Finding, FindingKind
from audit.integrity.events import EventAction, Outcome
from audit.integrity.record import format_timestamp
from audit.query.service import Filters
from audit.store.protocol import Verdict
from audit.store.query import SHA256_PATTERN, TEXT_SCHEMA
from audit.timestamps import Timestamp

router = APIRouter(prefix="/v1/exports", tags=["exports"])
ExportFile = Literal[
    "manifest.json",
    "manifest.sig",
    "records.ndjson",
    "records.csv",
    "links.ndjson",
    "checkpoints.ndjson",
    "service.pub",
]
_FILES: tuple[str, ...] = get_args(ExportFile)
_PAGE = 1000


class ExportRequest(BaseModel):
    actor: str | None = Field(default=None, max_length=512)
    action: list[EventAction] = Field(default_factory=list)
    outcome: list[Outcome] = Field(default_factory=list)
    job: list[str] = Field(default_factory=list)
    stream: list[str] = Field(default_factory=list)
    file_hash: list[Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]] = Field(
        default_factory=list,
        max_length=20,
        description="SHA-256 of an input or output file, as GET /v1/events takes it",
    )
    since: Timestamp | None = None
    until: Timestamp | None = None
    q: str | None = Field(default=None, max_length=200, json_schema_extra=TEXT_SCHEMA)


def manifest_query(
    export_id: str, body: ExportRequest, actor_hashes: tuple[str, ...]
) -> dict[str, Any]:
    """The manifest's `query` (spec §10.2): the filters with their values as the service
    applied them, the raw actor id replaced by its pseudonyms (under every key of the
    tenant): a bundle leaves the service, and a raw id in it would outlive an erasure."""
    filters: dict[str, Any] = {}
    if body.actor is not None:
        filters["actor_hashes"] = sorted(actor_hashes)
    for name in ("action", "outcome", "job", "stream", "file_hash"):
        values = getattr(body, name)
        if values:
            filters[name] = [str(v) for v in values]
    for name in ("since", "until"):
        value = getattr(body, name)
        if value is not None:
            filters[name] = format_timestamp(value if value.tzinfo else value.replace(tzinfo=UTC))
    if body.q is not None:
        filters["q"] = body.q  # searched over non-PII fields only
    return {"export_id": export_id, "filters": filters, "order": "asc"}


class ExportOut(BaseModel):
    export_id: str
    records: int
    manifest: dict[str, Any]
    files: list[str]


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
    body: ExportRequest,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> ExportOut:
    """A bundle that anyone can check offline with `ffaudit verify-export`. Every export is
    recorded in the log of the logs."""
    allow(request, who, Permission.EXPORT)
    scope = tenant_scope(who, tenant)
    filters = Filters(
        actor=body.actor,
        actions=tuple(a.value for a in body.action),
        outcomes=tuple(o.value for o in body.outcome),
        jobs=tuple(body.job),
        streams=tuple(body.stream),
        file_hashes=tuple(body.file_hash),
        since=body.since,
        until=body.until,
        text=body.q,
        order="asc",
    )
    query = await asyncio.to_thread(service.build, scope, None, filters)
    selected: set[tuple[str, int]] = set()
    cursor = None
    while True:
        page = await service.search(query, _PAGE, cursor)
        # Evidence kept aside at ingest is not part of any chain: never exported as one.
        selected.update(
            (e.stream, e.sequence) for e in page.events if e.verdict != Verdict.REJECTED
        )
        if len(selected) > settings.max_export_records:
            raise _TooLarge(f"more than {settings.max_export_records} records: narrow the query")
        cursor = page.next_cursor
        if cursor is None:
            break
    records: list[dict[str, Any]] = []
    findings: list[Finding] = []
    keys: dict[str, str] = {}
    for stream in sorted({s for s, _ in selected}):
        wanted = sorted(seq for s, seq in selected if s == stream)
        service.streams.read(stream, tenant_id=scope)  # 404 unless the caller's tenant's
        keys[stream] = service.streams.verifier(scope, stream).pem().decode()
        async for event in service.store.scan(scope, stream, start=wanted[0]):
            if event.verdict == Verdict.REJECTED:
                # Evidence kept aside at ingest is not part of any chain: the bundle states
                # that it exists instead of carrying it.
                findings.append(
                    Finding(
                        FindingKind.REJECTED_AT_INGEST,
                        stream,
                        event.sequence,
                        f"a record claiming this sequence was kept as evidence at ingest "
                        f"({event.failure or 'rejected'}): event.hash {event.event_hash[:16]}…",
                    )
                )
                continue
            # A fork's second record follows its sequence's plain name in the scan: the
            # writer keeps the first and states the other as a finding.
            records.append(event.record)
            # The range ends at the first checkpoint at or after the last selected record,
            # so that a producer signature covers it.
            if event.sequence >= wanted[-1] and event.record["event.action"] == "audit.checkpoint":
                break
    export_id = uuid.uuid4().hex
    directory = Path(settings.exports_dir) / scope / export_id
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = await asyncio.to_thread(
        write_export,
        directory,
        records,
        selected,
        keys,
        manifest_query(export_id, body, query.actor_hashes),
        servicelog.keys.signer,
        tenant=scope,
        findings=findings,
    )
    await servicelog.record(
        who,
        scope,
        EventAction.AUDIT_EXPORTED,
        metadata={
            "export_id": export_id,
            "records": len(selected),
            # An export of a damaged range is evidence: the trail says it was taken.
            "failures": len(result.manifest["failures"]),
            "findings": len(result.manifest["findings"]),
            "filters": filters.names(),
            "streams": sorted(keys),
            # The admin-export alert rule reads them (audit.alerts.rules.AdminExportRule).
            "roles": sorted(r.value for r in who.roles) if who is not None else [],
        },
        client_ip=request.client.host if request.client else None,
    )
    return ExportOut(
        export_id=export_id,
        records=len(selected),
        manifest=result.manifest,
        files=[f for f in _FILES if (directory / f).exists()],
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
    scope = tenant_scope(who, tenant)
    if not export_id.isalnum():
        raise NotFoundError("no such export")
    path = Path(settings.exports_dir) / scope / export_id / name
    if not path.is_file():
        raise NotFoundError("no such export file")
    return FileResponse(path)


class _TooLarge(UsageError):
    http_status = 413
