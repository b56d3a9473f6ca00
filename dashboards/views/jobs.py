"""Job timeline: the tenant's finished jobs, failed ones grouped by error type, and one job's
steps.

The list is GET /v1/jobs (QueryService.build over job.completed / job.failed, no own-only:
READ_JOBS has no `subject` scope, and engineers read it; records carry pseudonyms only).
Failures per day are ONE `EventStore.stats` by day, and the grouping by error type is ONE
`EventStore.error_types` aggregation (terms on error.type, a day histogram and the latest
job per type) over every failed job, however many: no records are read back to count. A
job's page is GET /v1/jobs/{job_id} (`EventStore.by_job`): inputs (file hashes), models
with their hashes and providers (from job.submitted and model.loaded), every step with the
time since the previous one, failed frames with their errors, and the outcome.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from audit.errors import NotFoundError
from audit.integrity.events import EventAction
from audit.query.service import Filters, describe
from audit.services import Services
from audit.store.protocol import StoredEvent
from audit.store.query import FILE_HASH_KEYS, ErrorTypeGroup
from dashboards.auth import ConsoleViewer
from dashboards.pages import PREFIX, View, render
from dashboards.views.common import Svc, admit, log_view
from dashboards.views.events import event_url, parse_time

router = APIRouter()

PAGE_SIZE = 50
# As GET /v1/jobs: a job is listed by the record that finished it.
FINISHED = {"success": EventAction.JOB_COMPLETED.value, "failure": EventAction.JOB_FAILED.value}
NO_ERROR_TYPE = "(no error type)"


def job_url(job_id: str) -> str:
    return f"{PREFIX}/jobs/{quote(job_id, safe='')}"


@dataclass(frozen=True, slots=True)
class JobRow:
    """GET /v1/jobs's JobSummary, as the page shows it."""

    job_id: str
    stream: str
    outcome: str
    finished_at: str
    error_type: str | None
    error_message: str | None
    event_id: str
    intact: bool


@dataclass(slots=True)
class ErrorGroup:
    error_type: str
    count: int
    per_day: dict[str, int] = field(default_factory=dict)
    last_job: str | None = None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def job_row(event: StoredEvent) -> JobRow:
    """The API's JobSummary of a job.completed / job.failed record."""
    r = event.record
    return JobRow(
        job_id=str(r.get("trace.id", "")),
        stream=event.stream,
        outcome="failure" if r.get("event.action") == "job.failed" else "success",
        finished_at=str(r.get("@timestamp", "")),
        error_type=_str(r.get("error.type")),
        error_message=_str(r.get("error.message")),
        event_id=event.doc_id,
        intact=bool(describe(event)["intact"]),
    )


def error_groups(groups: Sequence[ErrorTypeGroup]) -> list[ErrorGroup]:
    """The store's groups as the page shows them: records without an error type under
    NO_ERROR_TYPE, most frequent first."""
    shown = [
        ErrorGroup(g.error_type or NO_ERROR_TYPE, g.count, dict(g.per_day), g.last_job)
        for g in groups
    ]
    return sorted(shown, key=lambda g: (-g.count, g.error_type))


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    outcome: Annotated[Literal["success", "failure", ""] | None, Query()] = None,
    stream: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> HTMLResponse:
    admit(who, svc, View.JOBS)
    streams = (stream.strip(),) if stream and stream.strip() else ()
    start, end = parse_time("since", since), parse_time("until", until)
    filters = Filters(
        actions=(FINISHED[outcome],) if outcome else tuple(FINISHED.values()),
        streams=streams,
        since=start,
        until=end,
    )
    failed = Filters(actions=(FINISHED["failure"],), streams=streams, since=start, until=end)
    # build() reads the keyring file and the subject vault: off the event loop. As the
    # API: the tenant, never own-only (READ_JOBS has no subject scope).
    query, failed_q = await asyncio.gather(
        asyncio.to_thread(svc.queries.build, who.tenant, None, filters),
        asyncio.to_thread(svc.queries.build, who.tenant, None, failed),
    )
    page, per_day, by_outcome, by_type = await asyncio.gather(
        svc.queries.search(query, PAGE_SIZE, cursor or None),
        svc.store.stats(failed_q, by="day"),
        svc.store.stats(query, by="action"),
        svc.store.error_types(failed_q),
    )
    failed_total = sum(per_day.values())
    await log_view(
        request,
        svc,
        who,
        View.JOBS,
        filters=filters.names(),
        results=len(page.events),
    )
    params = {"outcome": outcome, "stream": stream, "since": since, "until": until}
    return render(
        request,
        "jobs.html",
        who,
        svc.settings,
        view=View.JOBS,
        context={
            "jobs": [job_row(e) for e in page.events],
            "groups": error_groups(by_type),
            "failed_total": failed_total,
            "per_day": sorted(per_day.items()),
            "completed": by_outcome.get(FINISHED["success"], 0),
            "failed_listed": by_outcome.get(FINISHED["failure"], 0),
            "f": {k: v or "" for k, v in params.items()},
            "next_url": View.JOBS.url(**params, cursor=page.next_cursor)
            if page.next_cursor
            else None,
            "first_url": View.JOBS.url(**params) if cursor else None,
            "job_url": job_url,
            "event_url": event_url,
            "events_url": lambda kind: f"{PREFIX}/events?action=job.failed&q={quote(kind)}",
            "no_error_type": NO_ERROR_TYPE,
        },
    )


# -- one job --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    event: StoredEvent
    action: str
    outcome: str
    at: datetime
    since_previous: timedelta | None
    detail: str
    intact: bool


@dataclass(frozen=True, slots=True)
class Model:
    role: str
    name: str
    version: str
    sha256: str
    providers: str
    source: str  # which record named it


@dataclass(slots=True)
class Timeline:
    steps: list[Step]
    inputs: list[tuple[str, str]]  # (what, sha256)
    models: list[Model]
    providers: list[str]
    failed_frames: list[StoredEvent]
    outcome: str | None
    final: StoredEvent | None
    duration: timedelta | None


def _meta(event: StoredEvent) -> Mapping[str, Any]:
    meta = event.record.get("ffaudit.metadata")
    return meta if isinstance(meta, dict) else {}


def _scalar(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _detail(event: StoredEvent) -> str:
    """The metadata's scalar members, compactly (hashes and lists are shown elsewhere)."""
    parts = [
        f"{k}={_scalar(v)}"
        for k, v in sorted(_meta(event).items())
        if not isinstance(v, dict | list) and v is not None and k not in FILE_HASH_KEYS
    ]
    error = _str(event.record.get("error.type"))
    if error:
        parts.insert(0, f"error={error}")
    return ", ".join(parts)


def _model(info: Mapping[str, Any], source: str, providers: object = None) -> Model:
    return Model(
        role=str(info.get("role", "") or ""),
        name=str(info.get("name", "") or ""),
        version=str(info.get("version", "") or ""),
        sha256=str(info.get("sha256", "") or ""),
        providers=", ".join(str(p) for p in providers) if isinstance(providers, list) else "",
        source=source,
    )


def timeline(events: Sequence[StoredEvent]) -> Timeline:
    """What GET /v1/jobs/{job_id} returns, laid out: pure, for the tests."""
    ordered = sorted(events, key=lambda e: (e.timestamp, e.stream, e.sequence, e.doc_id))
    steps: list[Step] = []
    inputs: dict[str, str] = {}
    models: list[Model] = []
    providers: list[str] = []
    previous: datetime | None = None
    for e in ordered:
        r = e.record
        action = str(r.get("event.action", ""))
        meta = _meta(e)
        digest = _str(r.get("file.hash.sha256"))
        if digest:
            inputs.setdefault(digest, "input (file.hash.sha256)")
        for key in FILE_HASH_KEYS:
            value = _str(meta.get(key))
            if value:
                inputs.setdefault(value, key.removesuffix("_sha256"))
        if action == EventAction.JOB_SUBMITTED:
            for m in meta.get("models") or ():
                if isinstance(m, dict):
                    models.append(_model(m, "job.submitted", meta.get("providers")))
        if action == EventAction.MODEL_LOADED:
            models.append(_model(meta, "model.loaded", meta.get("providers")))
        listed = meta.get("providers")
        if isinstance(listed, list):
            providers += [str(p) for p in listed if str(p) not in providers]
        steps.append(
            Step(
                event=e,
                action=action,
                outcome=str(r.get("event.outcome", "")),
                at=e.timestamp,
                since_previous=e.timestamp - previous if previous is not None else None,
                detail=_detail(e),
                intact=bool(describe(e)["intact"]),
            )
        )
        previous = e.timestamp
    finals = [s.event for s in steps if s.action in FINISHED.values()]
    final = finals[-1] if finals else None
    return Timeline(
        steps=steps,
        inputs=[(what, digest) for digest, what in inputs.items()],
        models=models,
        providers=providers,
        failed_frames=[s.event for s in steps if s.action == EventAction.FRAME_FAILED],
        outcome=str(final.record.get("event.action")) if final else None,
        final=final,
        duration=steps[-1].at - steps[0].at if len(steps) > 1 else None,
    )


def human(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


async def job_events(svc: Services, tenant: str, job_id: str) -> list[StoredEvent]:
    """GET /v1/jobs/{job_id}'s read: the tenant's records of the job, or 404."""
    events = await svc.store.by_job(tenant, job_id)
    if not events:
        raise NotFoundError(f"no job {job_id!r}")
    return events


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, who: ConsoleViewer, svc: Svc, job_id: str) -> HTMLResponse:
    admit(who, svc, View.JOBS)
    events = await job_events(svc, who.tenant, job_id)
    await log_view(request, svc, who, "job", results=len(events))
    return render(
        request,
        "job.html",
        who,
        svc.settings,
        view=View.JOBS,
        context={
            "job_id": job_id,
            "t": timeline(events),
            "human": human,
            "event_url": event_url,
        },
    )
