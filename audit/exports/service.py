"""Export bundles: the one code path of POST /v1/exports and the console's export form, and
where an export's files are (GET /v1/exports/{id}/{name} and the console's download)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
import zipfile
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import BaseModel, Field, StringConstraints

from audit.auth.tokens import Principal
from audit.errors import NotFoundError, UsageError
from audit.exports.bundle import write_export
from audit.exports.chain import Finding, FindingKind
from audit.exports.logproofs import Placed, stream_log
from audit.exports.tlog import StreamLog
from audit.integrity.events import EventAction, Outcome
from audit.integrity.record import format_timestamp
from audit.query.service import Filters, QueryService
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings
from audit.store.protocol import Verdict
from audit.store.query import SHA256_PATTERN, TEXT_SCHEMA
from audit.timestamps import Timestamp
from audit.tlog.service import TlogService

ExportFile = Literal[
    "manifest.json",
    "manifest.sig",
    "records.ndjson",
    "records.csv",
    "links.ndjson",
    "checkpoints.ndjson",
    "tlog.ndjson",
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


class TooLarge(UsageError):
    http_status = 413


async def create_export(
    service: QueryService,
    settings: AuditSettings,
    servicelog: ServiceLog,
    who: Principal | None,
    scope: str,
    body: ExportRequest,
    *,
    tlog: TlogService,
    client_ip: str | None,
) -> ExportOut:
    """Select the records of `body` in tenant `scope`, write the signed bundle with the
    transparency log's proofs (`tlog`) and record the export in the log of the logs (the
    caller has checked Permission.EXPORT)."""
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
            raise TooLarge(f"more than {settings.max_export_records} records: narrow the query")
        cursor = page.next_cursor
        if cursor is None:
            break
    records: list[dict[str, Any]] = []
    findings: list[Finding] = []
    keys: dict[str, str] = {}
    placed: dict[str, dict[int, Placed]] = {}
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
            checkpoint = event.record["event.action"] == "audit.checkpoint"
            # How ingest placed each record, for the log's proofs (first per sequence,
            # as the writer keeps it).
            placed.setdefault(stream, {}).setdefault(
                event.sequence,
                Placed(
                    event.sequence,
                    event.event_hash,
                    event.verdict,
                    event.failure,
                    full=checkpoint or (stream, event.sequence) in selected,
                ),
            )
            # The range ends at the first checkpoint at or after the last selected record,
            # so that a producer signature covers it.
            if event.sequence >= wanted[-1] and checkpoint:
                break
    logs = await asyncio.to_thread(_logs, tlog, settings, scope, placed)
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
        tlog=logs,
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
        client_ip=client_ip,
    )
    return ExportOut(
        export_id=export_id,
        records=len(selected),
        manifest=result.manifest,
        files=[f for f in _FILES if (directory / f).exists()],
    )


def _logs(
    tlog: TlogService,
    settings: AuditSettings,
    tenant: str,
    ranges: Mapping[str, Mapping[int, Placed]],
) -> dict[str, StreamLog]:
    return {
        stream: stream_log(tlog, settings, tenant, stream, list(placed.values()))
        for stream, placed in ranges.items()
    }


def export_file(settings: AuditSettings, scope: str, export_id: str, name: str) -> Path:
    """The path of one file of an export of tenant `scope`; 404 unless it exists."""
    if not export_id.isalnum() or name not in _FILES:
        raise NotFoundError("no such export")
    path = Path(settings.exports_dir) / scope / export_id / name
    if not path.is_file():
        raise NotFoundError("no such export file")
    return path


def export_files(settings: AuditSettings, scope: str, export_id: str) -> list[str]:
    """The files of an export of tenant `scope`, in bundle order; 404 unless it exists."""
    if not export_id.isalnum():
        raise NotFoundError("no such export")
    directory = Path(settings.exports_dir) / scope / export_id
    if not (directory / "manifest.json").is_file():
        raise NotFoundError("no such export")
    return [f for f in _FILES if (directory / f).is_file()]


def read_manifest(settings: AuditSettings, scope: str, export_id: str) -> dict[str, Any]:
    """The signed manifest of an export of tenant `scope` (what its page shows); 404 unless
    it exists."""
    path = export_file(settings, scope, export_id, "manifest.json")
    manifest: dict[str, Any] = orjson.loads(path.read_bytes())
    return manifest


def zip_bundle(settings: AuditSettings, scope: str, export_id: str) -> Path:
    """The files of an export of tenant `scope`, byte for byte, in one zip archive (a folder
    named after the export, as `ffaudit export` writes it): a temporary file the caller
    deletes once sent. Verified after unpacking, exactly like the files fetched one by one."""
    names = export_files(settings, scope, export_id)
    directory = Path(settings.exports_dir) / scope / export_id
    fd, name = tempfile.mkstemp(prefix=f"export-{export_id}-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in names:
                zf.write(directory / file, f"{export_id}/{file}")
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)
