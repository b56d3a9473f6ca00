"""EventStore.scan_day and delete_day, the store side of retention, on every backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from audit.errors import ConflictError
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore
from audit.store.sql import SqlEventStore
from tests.store.conftest import T0, collect, make_event


@pytest.fixture(params=["sqlite", "postgres", "elasticsearch"])
async def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EventStore]:
    made: EventStore
    if request.param == "elasticsearch":
        made = ElasticEventStore(
            request.getfixturevalue("elasticsearch_url"),
            prefix=request.getfixturevalue("fresh_es_prefix"),
            page_size=3,
        )
    elif request.param == "postgres":
        made = SqlEventStore(request.getfixturevalue("postgres_url"), page_size=3)
    else:
        from audit.db.session import upgrade

        url = f"sqlite:///{tmp_path_factory.mktemp('days') / 'events.db'}"
        upgrade(url)
        made = SqlEventStore(url, page_size=3)
    yield made
    await made.close()


async def test_a_day_is_scanned_stream_by_stream_and_deleted_whole(store: EventStore) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    day, next_day = T0, T0 + timedelta(days=1)
    events = [
        *(make_event(tenant, s, stream="b", timestamp=day + timedelta(minutes=s)) for s in (1, 2)),
        *(
            make_event(tenant, s, stream="a", timestamp=day + timedelta(minutes=s))
            for s in range(1, 6)
        ),
        make_event(tenant, 3, stream="b", timestamp=next_day),
        # A fork's second record, and another tenant's record of the same day.
        make_event(tenant, 2, stream="a", doc_id="a:2:fork", timestamp=day),
        make_event(f"{tenant}x", 1, stream="a", timestamp=day),
    ]
    await store.write(events)
    scanned = await collect(store.scan_day(tenant, day.date()))
    assert [(e.stream, e.sequence, e.doc_id) for e in scanned] == [
        ("a", 1, "a:1"),
        ("a", 2, "a:2"),
        ("a", 2, "a:2:fork"),
        ("a", 3, "a:3"),
        ("a", 4, "a:4"),
        ("a", 5, "a:5"),
        ("b", 1, "b:1"),
        ("b", 2, "b:2"),
    ]
    assert scanned[0].record == events[2].record

    with pytest.raises(ConflictError):
        await store.delete_day(tenant, day.date(), expected=7)  # one more arrived since
    assert len(await collect(store.scan_day(tenant, day.date()))) == 8  # nothing deleted
    await store.write([make_event(tenant, 1, stream="c", timestamp=day)])  # still writable
    assert await store.delete_day(tenant, day.date(), expected=9) == 9
    assert await collect(store.scan_day(tenant, day.date())) == []
    assert [e.doc_id for e in await collect(store.scan_day(tenant, next_day.date()))] == ["b:3"]
    assert await store.count(f"{tenant}x") == 1  # the other tenant's day is untouched
    assert await store.delete_day(tenant, day.date(), expected=0) == 0
