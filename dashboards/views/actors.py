"""Who did what: one page per actor, found by raw id or by pseudonym.

A raw user id is pseudonymised under the tenant keyring (and the subject's live vault key)
by QueryService.build, exactly as GET /v1/events?actor= does; a 64-hex pseudonym is used as
`actor_hash`. The page shows the actor's jobs (with their outcome), its actions per day
(ONE `EventStore.histogram` and `stats` by day and by action), its failures, and the
exports it made (the `audit.exported` records of the tenant's log of the logs, whose actor
is pseudonymised under the service's own keyring).

Erasure: after `POST /v1/subjects/erase` the vault no longer holds the subject's key, so
the raw id no longer reaches its vault-era records (they remain and still verify). The page
says so: "erased subject" when the vault holds no live key for the id and the tenant holds
erasure receipts of user ids (QueryService.subject_linked, SubjectService.erasures).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from audit.auth.policy import Permission, scope
from audit.auth.tokens import ReadScope
from audit.errors import ConflictError
from audit.integrity.events import EventAction
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.query.service import Filters
from audit.services import Services
from audit.store.protocol import StoredEvent
from audit.store.query import EventQuery
from dashboards.auth import ConsoleViewer, Viewer
from dashboards.pages import PREFIX, View, render
from dashboards.views.common import Svc, admit, allowed, log_view
from dashboards.views.events import TRAIL_READS, event_url, parse_time
from dashboards.views.jobs import job_url

router = APIRouter()

PSEUDONYM = re.compile(r"^[0-9a-f]{64}$")
PAGE_SIZE = 50
JOBS_SHOWN = 100
FINISHED = (EventAction.JOB_COMPLETED.value, EventAction.JOB_FAILED.value)
_ERASURES_READ = 1000  # tombstones read to tell whether any user id was erased
_CHUNK = 100  # job ids per outcome query


def own_only(who: Viewer, svc: Services) -> str | None:
    """The API's `_own_only`: the caller's subject id when its reads are narrowed to its own
    records (role `subject` without a reading role), else None (the tenant)."""
    if who.principal is None:
        return None
    narrowed = scope(who.principal, svc.settings, Permission.READ_EVENTS) is ReadScope.OWN
    return who.principal.subject if narrowed else None


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    records: int  # the actor's records of the job
    outcome: str | None  # "success", "failure", or None while unfinished
    error_type: str | None
    finished_at: str | None


@dataclass(frozen=True, slots=True)
class Erasure:
    """What the page can say about the subject behind a raw id."""

    state: str  # "linked" | "erased" | "maybe_erased" | "not_erased" | "no_vault"
    receipts: int | None  # erasure receipts of user ids (None: not readable by the viewer)


async def actor_jobs(
    svc: Services, tenant: str, own: str | None, query: EventQuery
) -> list[JobRow]:
    """The jobs among `query`'s records (one `count_by` on trace.id) and their outcome (the
    job.completed / job.failed record, read as GET /v1/jobs reads it, same tenant scope)."""
    counts = await svc.store.count_by(query, field="trace.id")
    ids = sorted(counts, key=lambda j: (-counts[j], j))[:JOBS_SHOWN]
    finals: dict[str, StoredEvent] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = tuple(ids[start : start + _CHUNK])
        q = await asyncio.to_thread(
            svc.queries.build, tenant, own, Filters(jobs=chunk, actions=FINISHED, order="asc")
        )
        page = await svc.queries.search(q, len(chunk) * 4, None)
        for e in page.events:
            finals[str(e.record.get("trace.id", ""))] = e  # the last one wins (asc order)
    rows = []
    for job in ids:
        final = finals.get(job)
        record = final.record if final else {}
        error = record.get("error.type")
        rows.append(
            JobRow(
                job_id=job,
                records=counts[job],
                outcome=(
                    ("failure" if record.get("event.action") == "job.failed" else "success")
                    if final
                    else None
                ),
                error_type=error if isinstance(error, str) else None,
                finished_at=str(record.get("@timestamp")) if final else None,
            )
        )
    return rows


def service_pseudonyms(svc: Services, tenant: str, actor: str, is_hash: bool) -> tuple[str, ...]:
    """The actor as the log of the logs names it: the service seals its own records under
    its own keyring (audit.servicelog), not the tenant's."""
    if is_hash:
        return (actor,)
    pseudonymizer = Pseudonymizer(svc.servicelog.keys.keyring, tenant)
    return tuple(sorted(set(pseudonymizer.candidates(PiiKind.USER, actor).values())))


async def exports_by(svc: Services, tenant: str, hashes: tuple[str, ...]) -> list[StoredEvent]:
    """The actor's `audit.exported` records in the tenant's service streams (every replica's:
    `{service_stream}.{tenant}.*`); a producer's look-alike record elsewhere does not count."""
    own_streams = f"{svc.settings.service_stream}.{tenant}."
    query = EventQuery(
        tenant=tenant, actor_hashes=hashes, actions=(EventAction.AUDIT_EXPORTED.value,)
    )
    page = await svc.store.search(query, limit=PAGE_SIZE)
    return [e for e in page.events if e.stream.startswith(own_streams)]


async def erasure_state(svc: Services, who: Viewer, actor: str) -> Erasure:
    linked = await asyncio.to_thread(svc.queries.subject_linked, who.tenant, actor)
    if linked is None:
        return Erasure("no_vault", None)
    if linked:
        return Erasure("linked", None)
    if not allowed(who, svc, Permission.READ_ERASURES):
        return Erasure("maybe_erased", None)
    receipts = await svc.subjects.erasures(who.tenant, _ERASURES_READ)
    users = sum(1 for r in receipts if r.kind == PiiKind.USER.value)
    return Erasure("erased" if users else "not_erased", users)


def _text(value: str | None) -> str:
    return value.strip() if value else ""


def metadata_of(event: StoredEvent) -> dict[str, Any]:
    meta = event.record.get("ffaudit.metadata")
    return meta if isinstance(meta, dict) else {}


@router.get("/actors", response_class=HTMLResponse)
async def actor_page(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    actor: Annotated[str | None, Query(max_length=512)] = None,
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> HTMLResponse:
    admit(who, svc, View.ACTORS)
    raw = _text(actor)
    context: dict[str, Any] = {
        "actor": raw,
        "since": since or "",
        "until": until or "",
        "message": None,
        "found": False,
        "event_url": event_url,
        "job_url": job_url,
        "short": lambda h: f"{h[:12]}…" if isinstance(h, str) and len(h) > 12 else h,
        "metadata_of": metadata_of,
    }
    if not raw:
        await log_view(request, svc, who, View.ACTORS, filters=[], results=0)
        return _page(request, who, svc, context)
    is_hash = bool(PSEUDONYM.fullmatch(raw))
    base = Filters(
        actor=None if is_hash else raw,
        actor_hash=raw if is_hash else None,
        since=parse_time("since", since),
        until=parse_time("until", until),
    )
    own = own_only(who, svc)
    # Reads of the trail are shown apart (the exports below), not as the actor's actions.
    activity = replace(base, actions=tuple(a.value for a in EventAction if a not in TRAIL_READS))
    try:
        # build() reads the keyring file and the subject vault: off the event loop.
        query = await asyncio.to_thread(svc.queries.build, who.tenant, own, activity)
    except ConflictError as exc:  # no keyring: a raw id cannot be searched (the API's 409)
        await log_view(request, svc, who, View.ACTORS, filters=base.names(), results=0)
        context["message"] = exc.message
        return _page(request, who, svc, context, status_code=409)
    failed_q = await asyncio.to_thread(
        svc.queries.build, who.tenant, own, replace(activity, outcomes=("failure",))
    )
    page, by_day, by_action, buckets = await asyncio.gather(
        svc.queries.search(query, PAGE_SIZE, cursor or None),
        svc.store.stats(query, by="day"),
        svc.store.stats(query, by="action"),
        svc.store.histogram(query, interval_s=86400),
    )
    jobs, failures, failed_total = await asyncio.gather(
        actor_jobs(svc, who.tenant, own, query),
        svc.queries.search(failed_q, PAGE_SIZE, None),
        svc.store.stats(failed_q, by="action"),
    )
    exports = await exports_by(
        svc, who.tenant, await asyncio.to_thread(service_pseudonyms, svc, who.tenant, raw, is_hash)
    )
    coverage = None
    erasure = None
    if not is_hash:
        keys, blind = await asyncio.to_thread(svc.queries.coverage, who.tenant)
        coverage = {"keys": keys, "not_searchable": blind}
        erasure = await erasure_state(svc, who, raw)
    total = sum(by_day.values())
    await log_view(request, svc, who, View.ACTORS, filters=base.names(), results=len(page.events))
    context.update(
        found=True,
        is_hash=is_hash,
        total=total,
        by_day=sorted(by_day.items()),
        by_action=sorted(by_action.items(), key=lambda kv: (-kv[1], kv[0])),
        histogram={"buckets": [[int(t.timestamp()), n] for t, n in buckets]},
        events=page.events,
        next_url=View.ACTORS.url(actor=raw, since=since, until=until, cursor=page.next_cursor)
        if page.next_cursor
        else None,
        jobs=jobs,
        failures=failures.events,
        failed_total=sum(failed_total.values()),
        exports=exports,
        coverage=coverage,
        erasure=erasure,
        events_url=f"{PREFIX}/events?"
        + ("actor_hash=" if is_hash else "actor=")
        + quote(raw, safe=""),
    )
    return _page(request, who, svc, context)


def _page(
    request: Request,
    who: Viewer,
    svc: Services,
    context: dict[str, Any],
    *,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "actors.html",
        who,
        svc.settings,
        view=View.ACTORS,
        status_code=status_code,
        context=context,
    )
