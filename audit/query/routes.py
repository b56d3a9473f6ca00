"""GET /v1/events, /v1/events/{id}, /v1/stats, /v1/jobs/{job_id}; POST /v1/verify."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from audit.auth.policy import Permission, scope
from audit.auth.tokens import Principal, ReadScope
from audit.deps import Caller, LogOfLogs, Queries, Settings, allow, tenant_scope
from audit.errors import NotFoundError
from audit.integrity.events import EventAction, Outcome
from audit.query.progress import NDJSON, verification_lines
from audit.query.service import Filters, QueryService, StreamVerification, describe
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings
from audit.store.query import SHA256_PATTERN, TEXT_SCHEMA, StatsBy
from audit.streams.schemas import StreamId
from audit.timestamps import Timestamp

router = APIRouter(prefix="/v1", tags=["who-did-what"])


def _own_only(settings: AuditSettings, who: Principal | None) -> str | None:
    """The caller's subject id when it may read only its own records; None for the tenant.
    (Open mode, no token: the whole tenant.)"""
    if who is None:
        return None
    return who.subject if scope(who, settings, Permission.READ_EVENTS) is ReadScope.OWN else None


# A pseudonym as records and alerts show it: 64 lowercase hex digits.
def _pseudonym() -> Any:
    return Query(pattern=r"^[0-9a-f]{64}$", description="a pseudonym, as records show it")


# A file's SHA-256 as records name it (file.hash.sha256, the metadata's *_sha256).
FileHash = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]

log = logging.getLogger("audit.query")


class EventOut(BaseModel):
    id: str
    stream: str
    sequence: int
    verdict: str = Field(description="what ingest decided when the record arrived")
    failure: str | None
    intact: bool = Field(
        description="the record as stored still hashes to its event.hash (checked on read): "
        "false means it was edited in the store after ingest, whatever `verdict` says"
    )
    record: dict[str, Any]


class Coverage(BaseModel):
    keys: list[str] = Field(description="pseudonym key ids the raw ids were matched under")
    not_searchable: list[str] = Field(
        description="streams sealed under a key the service does not hold (or none known "
        "yet): their records cannot match a raw id (ffaudit keyrings import)"
    )


class EventPageOut(BaseModel):
    events: list[EventOut]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page")
    coverage: Coverage | None = Field(
        default=None, description="with a raw-id filter: which keys and streams it covered"
    )


class StatsOut(BaseModel):
    by: str
    counts: dict[str, int]


class JobSummary(BaseModel):
    job_id: str
    stream: str
    outcome: Literal["success", "failure"]
    finished_at: str = Field(description="the @timestamp of its job.completed / job.failed")
    error_type: str | None
    error_message: str | None = Field(description="as the engine recorded it (scrubbed)")
    event_id: str = Field(description="its final record (GET /v1/events/{id})")
    intact: bool


class JobPageOut(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page")


class JobTimeline(BaseModel):
    job_id: str
    events: list[EventOut]
    outcome: str | None
    failed_frames: int


def _named(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [field], "properties": {field: schema}}


class VerifyRequest(BaseModel):
    # The scope rule below, in the OpenAPI document too: a stream, or since, or until.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                _named("stream", {"type": "string"}),
                _named("since", {"type": "string"}),
                _named("until", {"type": "string"}),
            ]
        }
    )

    stream: str | None = Field(default=None, max_length=128)
    since: Timestamp | None = None
    until: Timestamp | None = None

    @model_validator(mode="after")
    def _one_scope(self) -> VerifyRequest:
        if self.stream is None and self.since is None and self.until is None:
            raise ValueError("name a stream, or a time range (since/until) of the tenant")
        return self


class FailureOut(BaseModel):
    kind: str
    line: int | None
    sequence: int | None
    detail: str
    record_id: str | None = None  # the blamed record (GET /v1/events/{id})


class StreamVerifyOut(BaseModel):
    stream: str
    records: int
    ok: bool
    failures: list[FailureOut]
    head_sequence: int
    stored_last_sequence: int
    signed_through: int
    matches_head: bool


class VerifyOut(BaseModel):
    ok: bool
    streams: list[StreamVerifyOut]


class VerifyProgress(BaseModel):
    stream: str
    records: int = Field(description="records of the stream checked so far")
    expected: int = Field(
        description="records the stream should hold: the accepted head's sequence less "
        "those retention purged"
    )


_VERIFY_LINES = {
    "description": (
        "Verification report (JSON). With `Accept: application/x-ndjson`, progress as it "
        "goes instead: one JSON object per line, `progress` lines (one when each stream "
        "starts, then every thousand records or so), ending with one `result` line (the "
        "JSON report) or, when verification could not finish, one `error` line in the "
        "error schema. Errors found before the first line are ordinary error responses."
    ),
    "content": {
        NDJSON: {
            "schema": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["progress"],
                        "properties": {"progress": VerifyProgress.model_json_schema()},
                    },
                    {
                        "type": "object",
                        "required": ["result"],
                        "properties": {"result": {"$ref": "#/components/schemas/VerifyOut"}},
                    },
                    {"$ref": "#/components/schemas/ErrorBody"},
                ]
            }
        }
    },
}


async def _log(
    servicelog: ServiceLog,
    request: Request,
    who: Principal | None,
    tenant: str,
    action: EventAction,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    **metadata: Any,
) -> None:
    await servicelog.record(
        who,
        tenant,
        action,
        outcome=outcome,
        metadata=metadata,
        client_ip=request.client.host if request.client else None,
    )


@router.get("/events", response_model=EventPageOut, responses={401: {}, 403: {}, 409: {}})
async def list_events(
    request: Request,
    who: Caller,
    service: Queries,
    servicelog: LogOfLogs,
    settings: Settings,
    actor: Annotated[str | None, Query(max_length=512, description="raw user id")] = None,
    session: Annotated[str | None, Query(max_length=512)] = None,
    target: Annotated[str | None, Query(max_length=4096, description="raw input path")] = None,
    client_ip: Annotated[
        str | None, Query(max_length=64, description="raw client IP, under every key")
    ] = None,
    actor_hash: Annotated[str | None, _pseudonym()] = None,
    session_hash: Annotated[str | None, _pseudonym()] = None,
    client_ip_hash: Annotated[str | None, _pseudonym()] = None,
    file_hash: Annotated[
        list[FileHash] | None,
        Query(
            max_length=20,
            description="SHA-256 of an input or output file (lowercase hex), repeatable: "
            "records naming any of them as file.hash.sha256 or in their metadata",
        ),
    ] = None,
    action: Annotated[list[EventAction] | None, Query()] = None,
    outcome: Annotated[list[Outcome] | None, Query()] = None,
    job: Annotated[list[str] | None, Query(max_length=20)] = None,
    stream: Annotated[list[StreamId] | None, Query(max_length=20)] = None,
    verdict: Annotated[list[Literal["ok", "pending", "broken", "rejected"]] | None, Query()] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="free text, non-PII", json_schema_extra=TEXT_SCHEMA),
    ] = None,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> EventPageOut:
    """Events of the caller's tenant, newest first, with stable cursor pagination (a caller
    whose only reading role is `subject` sees its own records)."""
    own = _own_only(settings, who)
    scope = tenant_scope(who, tenant)
    filters = Filters(
        actor=actor,
        session=session,
        target=target,
        client_ip=client_ip,
        actor_hash=actor_hash,
        session_hash=session_hash,
        client_ip_hash=client_ip_hash,
        file_hashes=tuple(file_hash or ()),
        actions=tuple(a.value for a in action or ()),
        outcomes=tuple(o.value for o in outcome or ()),
        jobs=tuple(job or ()),
        streams=tuple(stream or ()),
        verdicts=tuple(verdict or ()),
        since=since,
        until=until,
        text=q,
        order=order,
    )
    limit = min(limit, settings.max_page_size)
    # build() reads the keyring file and the subject vault: off the event loop.
    query = await asyncio.to_thread(service.build, scope, own, filters)
    page = await service.search(query, limit, cursor)
    await _log(
        servicelog,
        request,
        who,
        scope,
        EventAction.AUDIT_QUERIED,
        endpoint="events",
        filters=filters.names(),
        results=len(page.events),
    )
    coverage = None
    if any(v is not None for v in (actor, session, target, client_ip)):
        keys, blind = await asyncio.to_thread(service.coverage, scope)
        coverage = Coverage(keys=keys, not_searchable=blind)
    return EventPageOut(
        events=[EventOut(**describe(e)) for e in page.events],
        next_cursor=page.next_cursor,
        coverage=coverage,
    )


@router.get("/events/{event_id}", response_model=EventOut, responses={401: {}, 403: {}, 404: {}})
async def get_event(
    request: Request,
    who: Caller,
    service: Queries,
    servicelog: LogOfLogs,
    settings: Settings,
    event_id: str,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> EventOut:
    """One event of the caller's tenant (a subject sees only its own)."""
    own = _own_only(settings, who)
    scope = tenant_scope(who, tenant)
    event = await service.one(scope, own, event_id)
    await _log(
        servicelog, request, who, scope, EventAction.AUDIT_QUERIED, endpoint="event", results=1
    )
    return EventOut(**describe(event))


@router.get("/stats", response_model=StatsOut, responses={401: {}, 403: {}})
async def stats(
    request: Request,
    who: Caller,
    service: Queries,
    servicelog: LogOfLogs,
    by: StatsBy = "action",
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> StatsOut:
    """Counts by action, outcome, actor, client IP or session (pseudonyms), stream, day or
    verdict over a time range."""
    allow(request, who, Permission.READ_STATS)
    scope = tenant_scope(who, tenant)
    query = await asyncio.to_thread(service.build, scope, None, Filters(since=since, until=until))
    counts = await service.store.stats(query, by=by)
    await _log(servicelog, request, who, scope, EventAction.AUDIT_QUERIED, endpoint="stats", by=by)
    return StatsOut(by=by, counts=counts)


_FINISHED = {"success": "job.completed", "failure": "job.failed"}


@router.get("/jobs", response_model=JobPageOut, responses={401: {}, 403: {}})
async def list_jobs(
    request: Request,
    who: Caller,
    service: Queries,
    servicelog: LogOfLogs,
    settings: Settings,
    outcome: Literal["success", "failure"] | None = None,
    stream: Annotated[list[StreamId] | None, Query(max_length=20)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> JobPageOut:
    """Finished jobs, newest first: `outcome=failure` lists the failed ones with their error
    (engineers included; records carry pseudonyms only). GET /v1/jobs/{id} has the rest."""
    allow(request, who, Permission.READ_JOBS)
    scope = tenant_scope(who, tenant)
    filters = Filters(
        actions=(_FINISHED[outcome],) if outcome else tuple(_FINISHED.values()),
        streams=tuple(stream or ()),
        since=since,
        until=until,
    )
    query = await asyncio.to_thread(service.build, scope, None, filters)
    page = await service.search(query, min(limit, settings.max_page_size), cursor)
    await _log(
        servicelog,
        request,
        who,
        scope,
        EventAction.AUDIT_QUERIED,
        endpoint="jobs",
        filters=filters.names(),
        results=len(page.events),
    )
    jobs = []
    for e in page.events:
        shown = describe(e)
        r = e.record
        jobs.append(
            JobSummary(
                job_id=str(r.get("trace.id", "")),
                stream=e.stream,
                outcome="failure" if r.get("event.action") == "job.failed" else "success",
                finished_at=str(r.get("@timestamp", "")),
                error_type=r.get("error.type") if isinstance(r.get("error.type"), str) else None,
                error_message=r.get("error.message")
                if isinstance(r.get("error.message"), str)
                else None,
                event_id=e.doc_id,
                intact=shown["intact"],
            )
        )
    return JobPageOut(jobs=jobs, next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}", response_model=JobTimeline, responses={401: {}, 403: {}, 404: {}})
async def job_timeline(
    request: Request,
    who: Caller,
    service: Queries,
    servicelog: LogOfLogs,
    job_id: str,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> JobTimeline:
    """A job's events in order: inputs, models and hashes, steps, failed frames, outcome."""
    allow(request, who, Permission.READ_JOBS)
    scope = tenant_scope(who, tenant)
    events = await service.store.by_job(scope, job_id)
    if not events:
        raise NotFoundError(f"no job {job_id!r}")
    await _log(
        servicelog,
        request,
        who,
        scope,
        EventAction.AUDIT_QUERIED,
        endpoint="job",
        results=len(events),
    )
    final = [
        e.record["event.action"]
        for e in events
        if e.record["event.action"] in ("job.completed", "job.failed")
    ]
    return JobTimeline(
        job_id=job_id,
        events=[EventOut(**describe(e)) for e in events],
        outcome=final[-1] if final else None,
        failed_frames=sum(e.record["event.action"] == "frame.failed" for e in events),
    )


@router.post(
    "/verify",
    response_model=VerifyOut,
    responses={200: _VERIFY_LINES, 401: {}, 403: {}, 404: {}},
)
async def verify(
    request: Request,
    who: Caller,
    service: Queries,
    servicelog: LogOfLogs,
    body: VerifyRequest,
    tenant: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> Response | VerifyOut:
    """Re-verify stored chains: hashes, links, signatures, and that the store still ends at
    the head the service accepted (deletions or edits inside the store are detected).
    Long chains: ask for `application/x-ndjson` to get progress while it runs."""
    allow(request, who, Permission.VERIFY)
    scope = tenant_scope(who, tenant)
    # A time range verifies every stream of the tenant: a chain is only provable whole.
    names = [body.stream] if body.stream is not None else service.streams.names(scope)
    if _accepts_ndjson(request):
        # Read now, so that an unknown stream is a plain 404 rather than an error line.
        heads = {name: service.streams.read(name, tenant_id=scope).head_sequence for name in names}
        return StreamingResponse(
            _verify_lines(service, servicelog, request, who, scope, heads), media_type=NDJSON
        )
    results = [await service.verify_stream(scope, name) for name in names]
    out = _verify_out(results)
    await _log(
        servicelog,
        request,
        who,
        scope,
        EventAction.AUDIT_VERIFIED,
        # A verification that found failures is a failed verification in the log of the logs.
        outcome=Outcome.SUCCESS if out.ok else Outcome.FAILURE,
        streams=len(results),
        ok=out.ok,
    )
    return out


def _accepts_ndjson(request: Request) -> bool:
    for item in request.headers.get("accept", "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() == NDJSON:
            q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
            with contextlib.suppress(ValueError):
                return float(q) > 0
    return False


def _verify_lines(
    service: QueryService,
    servicelog: ServiceLog,
    request: Request,
    who: Principal | None,
    scope: str,
    heads: dict[str, int],
) -> AsyncIterator[bytes]:
    """The NDJSON body (audit.query.progress), ending with the VerifyOut as `result`."""

    async def record(outcome: Outcome, metadata: dict[str, Any]) -> None:
        await _log(
            servicelog, request, who, scope, EventAction.AUDIT_VERIFIED, outcome=outcome, **metadata
        )

    async def finish(results: list[StreamVerification]) -> tuple[bool, dict[str, Any]]:
        out = _verify_out(results)
        return out.ok, {"result": out.model_dump(mode="json")}

    return verification_lines(service, scope, heads, record=record, finish=finish)


def _verify_out(results: list[StreamVerification]) -> VerifyOut:
    return VerifyOut(
        ok=all(not r.failures and r.matches_head for r in results),
        streams=[
            StreamVerifyOut(
                stream=r.stream,
                records=r.records,
                ok=not r.failures and r.matches_head,
                failures=[
                    FailureOut(
                        kind=f.kind.value,
                        line=f.line,
                        sequence=f.sequence,
                        detail=f.detail,
                        record_id=f.record_id,
                    )
                    for f in r.failures
                ],
                head_sequence=r.head_sequence,
                stored_last_sequence=r.stored_last_sequence,
                signed_through=r.signed_through,
                matches_head=r.matches_head,
            )
            for r in results
        ],
    )
