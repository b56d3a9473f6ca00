"""Contract of the console's aggregations on every backend: `facets` (several `stats` in one
request), `time_span` (min and max record time in one aggregation) and `error_types`
(failures by error.type, per day, with the latest job), all against what the records say."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, timedelta
from typing import Any

import pytest

from audit.errors import InvalidInputError
from audit.store.protocol import EventStore, StoredEvent
from audit.store.query import ERROR_TYPE_LONGEST, STATS_BY, ErrorTypeGroup, EventQuery
from tests.store.conftest import T0, make_event
from tests.store.test_query import expected, group, queries, write_dataset


async def test_facets_equal_stats_of_each_grouping(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)
    for query in queries(tenant):
        got = await store.facets(query, by=STATS_BY)  # type: ignore[arg-type]
        assert list(got) == list(STATS_BY)
        for by in STATS_BY:
            want = Counter(group(e, by) for e in expected(events, query))
            assert got[by] == dict(want), (query, by)  # type: ignore[index]
    everything = EventQuery(tenant)
    assert await store.facets(everything, by=("stream", "action", "stream")) == {
        "stream": await store.stats(everything, by="stream"),
        "action": await store.stats(everything, by="action"),
    }
    assert await store.facets(everything, by=()) == {}
    with pytest.raises(InvalidInputError):
        await store.facets(everything, by=("action", "tenant"))  # type: ignore[arg-type]


async def test_facets_page_through_many_groups(store: EventStore, tenant: str) -> None:
    # More actors than an aggregation page (1000) beside a small grouping in one request.
    events = [
        make_event(tenant, n, extra={"user.hash": f"{n % 1200:064x}"}) for n in range(1, 2401)
    ]
    await store.write(events)
    got = await store.facets(EventQuery(tenant), by=("actor", "verdict"))
    assert got["actor"] == dict(Counter(e.record["user.hash"] for e in events))
    assert len(got["actor"]) == 1200
    assert got["verdict"] == {"ok": 2400}


async def test_time_span_is_the_first_and_last_record_time(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)
    for query in queries(tenant):
        chosen = expected(events, query)
        span = await store.time_span(query)
        if not chosen:
            assert span is None, query
            continue
        times = sorted(e.timestamp for e in chosen)
        assert span == (times[0], times[-1]), query
        assert span is not None
        assert span[0].tzinfo is not None
    assert await store.time_span(EventQuery(f"{tenant}-none")) is None
    assert await store.time_span(EventQuery("*")) is None


def want_error_types(events: list[StoredEvent], query: EventQuery) -> list[ErrorTypeGroup]:
    chosen = expected(events, replace(query, order="desc"))
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    latest: dict[str, Any] = {}
    for event in chosen:  # newest first: the first of a group is its latest
        value = event.record.get("error.type")
        kind = value if isinstance(value, str) and len(value) <= ERROR_TYPE_LONGEST else ""
        per_day[kind][event.timestamp.astimezone(UTC).date().isoformat()] += 1
        if kind not in latest:
            job = event.record.get("trace.id")
            latest[kind] = job if isinstance(job, str) else None
    groups = [
        ErrorTypeGroup(kind, sum(days.values()), dict(days), latest[kind])
        for kind, days in per_day.items()
    ]
    return sorted(groups, key=lambda g: (-g.count, g.error_type))


async def test_error_types_group_by_type_and_day(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)
    for query in queries(tenant):
        assert await store.error_types(query) == want_error_types(events, query), query
    failed = await store.error_types(EventQuery(tenant, actions=("job.failed", "frame.failed")))
    assert {g.error_type for g in failed} == {"TimeoutError", "CudaOutOfMemory"}
    assert all(len(g.per_day) > 1 for g in failed)
    assert await store.error_types(EventQuery(tenant, streams=("cam-9",))) == []
    assert await store.error_types(EventQuery("*")) == []


async def test_error_types_of_odd_values_and_ties(store: EventStore, tenant: str) -> None:
    failed = {"event.action": "job.failed", "event.outcome": "failure"}
    same = T0 + timedelta(hours=1)
    events = [
        make_event(tenant, 1, extra={**failed, "error.type": "A", "trace.id": "job-1"}),
        # Two of type A at one instant: the later stream is the latest (page order).
        make_event(tenant, 2, timestamp=same, extra={**failed, "error.type": "A"}),
        make_event(
            tenant,
            2,
            stream="cam-2",
            timestamp=same,
            extra={**failed, "error.type": "A", "trace.id": "job-2b"},
        ),
        make_event(tenant, 3, extra={**failed, "error.type": "x" * (ERROR_TYPE_LONGEST + 1)}),
        make_event(tenant, 4, extra=failed),  # no error type
        make_event(tenant, 5, extra={**failed, "error.type": "B", "trace.id": "job-5"}),
        make_event(
            tenant, 6, timestamp=T0 + timedelta(days=1), extra={**failed, "error.type": "B"}
        ),
    ]
    events[-1].record.pop("trace.id")
    await store.write(events)
    got = await store.error_types(EventQuery(tenant))
    assert got == [
        ErrorTypeGroup("A", 3, {"2026-11-21": 3}, "job-2b"),
        ErrorTypeGroup("", 2, {"2026-11-21": 2}, "job-0"),
        ErrorTypeGroup("B", 2, {"2026-11-21": 1, "2026-11-22": 1}, None),
    ]
