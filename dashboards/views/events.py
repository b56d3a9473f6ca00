"""The events explorer: filter, chart, facet and page through the tenant's records, and
open one record with its place in the chain.

Everything here is what GET /v1/events does (QueryService.build: the same tenant scope and
the same pseudonymisation of raw ids, the store's keyset pages) plus the store's
aggregations: the chart is ONE `EventStore.histogram` query (its time span, when the
filters leave it open, one `time_span` min/max aggregation) and the facets are ONE
`EventStore.facets` request, never counting over rows here; the page, the facets and the
chart run concurrently. Reads of the trail itself (the log of the logs: audit.queried /
verified / exported) are hidden unless `include_trail=1`, so the explorer's own page views
do not bury the records being looked at: an exclusion of those three actions
(`EventQuery.excluded_actions`, a must-not of three rare terms in Elasticsearch), where
listing every other action made each query a disjunction of some thirty terms over
nearly every record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from audit.auth.policy import Permission, scope
from audit.auth.tokens import ReadScope
from audit.errors import InvalidInputError
from audit.integrity.events import EventAction, Outcome
from audit.integrity.record import document_id
from audit.query.service import Filters, describe
from audit.services import Services
from audit.store.query import EventPage, EventQuery, StatsBy
from dashboards.auth import ConsoleViewer, Viewer
from dashboards.pages import PREFIX, View, render
from dashboards.state import Console
from dashboards.views.common import Svc, admit, allowed, log_view

router = APIRouter()

PAGE_SIZE = 50
AROUND = 10  # records on each side of an opened one
VERDICTS = ("ok", "pending", "broken", "rejected")
OUTCOMES = tuple(o.value for o in Outcome)
FACETS: tuple[StatsBy, ...] = ("action", "outcome", "verdict", "stream")
# Reads of the audit trail recorded in the log of the logs: hidden by default.
TRAIL_READS = frozenset(
    {
        EventAction.AUDIT_QUERIED.value,
        EventAction.AUDIT_VERIFIED.value,
        EventAction.AUDIT_EXPORTED.value,
    }
)
# A chart of about 60-120 bars: the first of these widths that needs at most MAX_BUCKETS.
INTERVALS = (
    1,
    5,
    15,
    60,
    5 * 60,
    15 * 60,
    3600,
    3 * 3600,
    6 * 3600,
    86400,
    7 * 86400,
    30 * 86400,
    365 * 86400,
)
MAX_BUCKETS = 120


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    field: str  # the record's key; "" for the stored event's own attributes
    short: bool = False  # a pseudonym: shown abbreviated (the full value in its title)


COLUMNS = {
    c.key: c
    for c in (
        Column("time", "Time (UTC)", "@timestamp"),
        Column("stream", "Stream", ""),
        Column("sequence", "Seq.", ""),
        Column("action", "Action", "event.action"),
        Column("outcome", "Outcome", "event.outcome"),
        Column("actor", "Actor (pseudonym)", "user.hash", short=True),
        Column("session", "Session (pseudonym)", "ffaudit.session.hash", short=True),
        Column("client_ip", "Client IP (pseudonym)", "ffaudit.client.ip_hash", short=True),
        Column("target", "Target (pseudonym)", "ffaudit.target.hash", short=True),
        Column("job", "Job", "trace.id"),
        Column("error", "Error", "error.type"),
        Column("message", "Message", "error.message"),
        Column("verdict", "Verdict", ""),
    )
}
DEFAULT_COLUMNS = ("time", "stream", "sequence", "action", "outcome", "actor", "job", "verdict")


def pick_interval(start: datetime, end: datetime) -> int:
    """Bucket width in seconds for a chart of [start, end]: at most MAX_BUCKETS bars."""
    span = max(1.0, (end - start).total_seconds())
    for width in INTERVALS:
        if span / width <= MAX_BUCKETS:
            return width
    return INTERVALS[-1]


def parse_time(name: str, value: str | None) -> datetime | None:
    """RFC 3339 text from the form or the chart's brush; a time without zone is UTC."""
    if value is None or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"{name}: an RFC 3339 date-time is expected, e.g. 2026-11-03T00:00:00Z"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _own(who: Viewer, svc: Services) -> str | None:
    """As GET /v1/events: a caller whose reads are narrowed sees its own records only."""
    if who.principal is None:
        return None
    own = scope(who.principal, svc.settings, Permission.READ_EVENTS) is ReadScope.OWN
    return who.principal.subject if own else None


def cell(event: Any, column: Column) -> str:
    if column.key == "stream":
        return str(event.stream)
    if column.key == "sequence":
        return str(event.sequence)
    if column.key == "verdict":
        return str(event.verdict) + (f" ({event.failure})" if event.failure else "")
    value = event.record.get(column.field)
    if value is None:
        return ""
    if column.key == "time" and isinstance(value, str):
        return value.replace("T", " ").removesuffix("Z")
    return value if isinstance(value, str) else json.dumps(value)


def _url(params: Sequence[tuple[str, str]], **changes: str | None) -> str:
    kept = [(k, v) for k, v in params if k not in changes and v != ""]
    kept += [(k, v) for k, v in changes.items() if v is not None]
    query = urlencode(kept)
    return f"{PREFIX}/events" + (f"?{query}" if query else "")


async def chart(
    svc: Services, query: EventQuery, filters: Filters
) -> tuple[int, list[tuple[datetime, int]]]:
    """The histogram's bucket width and buckets: over since..until when both are given,
    else over the records' own first and last times (one min/max aggregation first)."""
    start, end = filters.since, filters.until
    if start is None or end is None:
        span = await svc.store.time_span(query)
        start = start or (span[0] if span else None)
        end = end or (span[1] if span else None)
    interval = pick_interval(start, end) if start and end else 3600
    return interval, await svc.store.histogram(query, interval_s=interval)


def hide_trail(query: EventQuery, filters: Filters, include_trail: bool) -> EventQuery:
    """Reads of the trail left out, unless asked for or actions are chosen: an exclusion of
    three actions (a cheap must-not), never a list of every other action."""
    if include_trail or filters.actions:
        return query
    return replace(query, excluded_actions=tuple(sorted(TRAIL_READS)))


@router.get("/events", response_class=HTMLResponse)
async def explorer(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    console: Console,
    actor: Annotated[str | None, Query(max_length=512)] = None,
    action: Annotated[list[EventAction] | None, Query()] = None,
    outcome: Annotated[list[str] | None, Query(max_length=8)] = None,
    job: Annotated[str | None, Query(max_length=256)] = None,
    stream: Annotated[str | None, Query(max_length=128)] = None,
    session: Annotated[str | None, Query(max_length=512)] = None,
    target: Annotated[str | None, Query(max_length=4096)] = None,
    verdict: Annotated[list[str] | None, Query(max_length=4)] = None,
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    col: Annotated[list[str] | None, Query(max_length=len(COLUMNS))] = None,
    include_trail: Annotated[bool, Query()] = False,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    # Pseudonyms as records and alerts show them (an alert's group links here).
    actor_hash: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    session_hash: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    client_ip_hash: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
) -> HTMLResponse:
    admit(who, svc, View.EVENTS)
    # Before any query: a refused load costs the store nothing.
    console.admit_explorer(who.tenant, who.name)
    verdicts = tuple(v for v in verdict or () if v)
    outcomes = tuple(o for o in outcome or () if o)
    if any(o not in OUTCOMES for o in outcomes):
        raise InvalidInputError(f"outcome: one of {', '.join(OUTCOMES)}")
    if any(v not in VERDICTS for v in verdicts):
        raise InvalidInputError(f"verdict: one of {', '.join(VERDICTS)}")
    columns = [COLUMNS[c] for c in dict.fromkeys(col or ()) if c in COLUMNS] or [
        COLUMNS[c] for c in DEFAULT_COLUMNS
    ]
    filters = Filters(
        actor=_text(actor),
        session=_text(session),
        target=_text(target),
        actor_hash=actor_hash,
        session_hash=session_hash,
        client_ip_hash=client_ip_hash,
        actions=tuple(a.value for a in action or ()),
        outcomes=outcomes,
        jobs=(j,) if (j := _text(job)) else (),
        streams=(s,) if (s := _text(stream)) else (),
        verdicts=verdicts,
        since=parse_time("since", since),
        until=parse_time("until", until),
        text=_text(q),
    )
    # build() reads the keyring file and the subject vault: off the event loop.
    built = await asyncio.to_thread(svc.queries.build, who.tenant, _own(who, svc), filters)
    query = hide_trail(built, filters, include_trail)

    async def first_page() -> EventPage:
        found = await svc.queries.search(query, PAGE_SIZE, cursor or None)
        # Logged as soon as the page is known, while the aggregations still run.
        await log_view(
            request,
            svc,
            who,
            View.EVENTS,
            filters=filters.names() + (["include_trail"] if include_trail else []),
            results=len(found.events),
        )
        return found

    # The page, the facets (one request) and the chart, all at once.
    page, counts, (interval, buckets) = await asyncio.gather(
        first_page(), svc.store.facets(query, by=FACETS), chart(svc, query, filters)
    )
    params = list(request.query_params.multi_items())
    context = {
        "events": page.events,
        "columns": columns,
        "all_columns": list(COLUMNS.values()),
        "cell": cell,
        "total": sum(counts.get("stream", {}).values()),
        "facets": {
            by: sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) for by, c in counts.items()
        },
        "facet_url": lambda name, value: _url(params, cursor=None, **{name: value}),
        "histogram": {"buckets": [[int(t.timestamp()), n] for t, n in buckets]},
        "interval": interval,
        "next_url": _url(params, cursor=page.next_cursor) if page.next_cursor else None,
        "first_url": _url(params, cursor=None) if cursor else None,
        "f": {
            "actor": actor or "",
            "actions": set(filters.actions),
            "outcomes": set(filters.outcomes),
            "job": job or "",
            "stream": stream or "",
            "session": session or "",
            "target": target or "",
            "verdicts": set(verdicts),
            "since": since or "",
            "until": until or "",
            "q": q or "",
            "include_trail": include_trail,
            "cols": {c.key for c in columns},
        },
        "actions": [a.value for a in EventAction],
        "outcomes": OUTCOMES,
        "verdict_names": VERDICTS,
        "event_url": event_url,
        "can_export": allowed(who, svc, Permission.EXPORT),
        "export_url": f"{PREFIX}/verify?"
        + urlencode([(k, v) for k, v in params if k not in ("cursor", "col", "include_trail")]),
    }
    template = "events_results.html" if request.headers.get("hx-request") else "events.html"
    return render(request, template, who, svc.settings, view=View.EVENTS, context=context)


def event_url(doc_id: str) -> str:
    return f"{PREFIX}/events/{quote(doc_id, safe=':')}"


@router.get("/events/{event_id}", response_class=HTMLResponse)
async def event(request: Request, who: ConsoleViewer, svc: Svc, event_id: str) -> HTMLResponse:
    admit(who, svc, View.EVENTS)
    own = _own(who, svc)
    found = await svc.queries.one(who.tenant, own, event_id)
    low, high = max(1, found.sequence - AROUND), found.sequence + AROUND
    around = [e async for e in svc.store.scan(who.tenant, found.stream, low, high)]
    if own is not None:  # never reached through admit, kept in step with the API's rule
        around = [e for e in around if e.record.get("user.hash") == found.record.get("user.hash")]
    present = {e.sequence for e in around}
    checkpoint = await _checkpoint(svc, who.tenant, found)
    await log_view(request, svc, who, "event", results=1)
    shown = describe(found)
    return render(
        request,
        "event.html",
        who,
        svc.settings,
        view=View.EVENTS,
        context={
            "event": found,
            "shown": shown,
            "pretty": json.dumps(shown["record"], indent=2, sort_keys=True, ensure_ascii=False),
            "previous": document_id(found.stream, found.sequence - 1)
            if found.sequence - 1 in present
            else None,
            "next": document_id(found.stream, found.sequence + 1)
            if found.sequence + 1 in present
            else None,
            "checkpoint": checkpoint,
            "around": around,
            "event_url": event_url,
            "stream_url": _url([("stream", found.stream)]),
        },
    )


async def _checkpoint(svc: Services, tenant: str, found: Any) -> Mapping[str, Any] | None:
    """The first checkpoint of the stream at or after the record (what signs it)."""
    if found.record.get("event.action") == EventAction.AUDIT_CHECKPOINT:
        return {"id": found.doc_id, "sequence": found.sequence}
    query = EventQuery(
        tenant=tenant,
        streams=(found.stream,),
        actions=(EventAction.AUDIT_CHECKPOINT.value,),
        since=found.timestamp,
        order="asc",
    )
    page = await svc.store.search(query, limit=50)
    for cp in page.events:
        if cp.sequence >= found.sequence:
            return {"id": cp.doc_id, "sequence": cp.sequence}
    return None
