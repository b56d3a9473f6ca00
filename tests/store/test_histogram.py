"""Contract of `EventStore.histogram` (the console's event chart) on every backend: one
aggregation whose bucket counts add up to what the store holds for the same query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from audit.errors import InvalidInputError
from audit.store.protocol import EventStore, StoredEvent
from audit.store.query import EventQuery
from tests.store.conftest import T0, make_event


def events(tenant: str) -> list[StoredEvent]:
    """30 records over 3 hours (one every 6 minutes, a second past): cam-1 and cam-2
    alternating, every third a failed job, one record with a word to search for."""
    out = []
    for i in range(1, 31):
        extra: dict[str, object] = {}
        if i % 3 == 0:
            extra = {"event.action": "job.failed", "event.outcome": "failure"}
        if i == 7:
            extra["error.message"] = "needle in the haystack"
        out.append(
            make_event(
                tenant,
                i,
                stream="cam-1" if i % 2 else "cam-2",
                timestamp=T0 + timedelta(minutes=6 * i, seconds=1),
                extra=extra,
            )
        )
    return out


async def total(store: EventStore, query: EventQuery) -> int:
    return sum((await store.stats(query, by="stream")).values())


@pytest.mark.parametrize("interval_s", [1, 60, 300, 3600, 86400])
async def test_buckets_add_up_to_the_store_count(
    store: EventStore, tenant: str, interval_s: int
) -> None:
    await store.write(events(tenant))
    query = EventQuery(tenant=tenant)
    buckets = await store.histogram(query, interval_s=interval_s)
    assert sum(n for _, n in buckets) == await total(store, query) == 30
    starts = [start for start, _ in buckets]
    assert starts == sorted(starts)
    assert all(n > 0 for _, n in buckets)  # empty buckets are absent
    for start, _ in buckets:
        assert start.tzinfo is not None
        assert int(start.timestamp()) % interval_s == 0  # aligned on the epoch


async def test_buckets_are_exact(store: EventStore, tenant: str) -> None:
    await store.write(events(tenant))
    hourly = await store.histogram(EventQuery(tenant=tenant), interval_s=3600)
    # T0 is 10:00; records at 10:06:01 ... 13:00:01, ten per hour (10:06-10:54 nine).
    assert hourly == [
        (datetime(2026, 11, 21, 10, tzinfo=UTC), 9),
        (datetime(2026, 11, 21, 11, tzinfo=UTC), 10),
        (datetime(2026, 11, 21, 12, tzinfo=UTC), 10),
        (datetime(2026, 11, 21, 13, tzinfo=UTC), 1),
    ]
    five = await store.histogram(EventQuery(tenant=tenant), interval_s=300)
    assert five[0] == (datetime(2026, 11, 21, 10, 5, tzinfo=UTC), 1)
    assert len(five) == 30


@pytest.mark.parametrize(
    "filters",
    [
        {"streams": ("cam-2",)},
        {"actions": ("job.failed",)},
        {"outcomes": ("failure",), "streams": ("cam-1",)},
        {"since": T0 + timedelta(hours=1), "until": T0 + timedelta(hours=2)},
        {"text": "needle"},
        {"verdicts": ("pending",)},
    ],
)
async def test_same_filters_as_the_store(
    store: EventStore, tenant: str, filters: dict[str, object]
) -> None:
    await store.write(events(tenant))
    query = EventQuery(tenant=tenant, **filters)  # type: ignore[arg-type]
    buckets = await store.histogram(query, interval_s=600)
    assert sum(n for _, n in buckets) == await total(store, query)


async def test_other_tenants_and_empty(store: EventStore, tenant: str) -> None:
    await store.write(events(tenant))
    assert await store.histogram(EventQuery(tenant=tenant + "x"), interval_s=60) == []


@pytest.mark.parametrize("interval_s", [0, -5, 366 * 86400 + 1])
async def test_bad_intervals(store: EventStore, tenant: str, interval_s: int) -> None:
    with pytest.raises(InvalidInputError):
        await store.histogram(EventQuery(tenant=tenant), interval_s=interval_s)
