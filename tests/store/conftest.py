"""Real backends for the event store contract: SQLite, PostgreSQL and Elasticsearch.

URLs come from FFAUDIT_TEST_ELASTICSEARCH_URL / FFAUDIT_TEST_POSTGRES_URL (CI exports them);
when unset, the fixtures run `ffaudit dev ... up` themselves. A backend that cannot be
provisioned fails the tests that need it: nothing here skips or mocks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from audit.db.session import upgrade
from audit.integrity.chain import record_hash
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore, StoredEvent
from audit.store.sql import SqlEventStore

BACKENDS = ("sqlite", "postgres", "elasticsearch")
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'events.db'}"
    upgrade(url)
    return url


StoreFactory = Callable[..., EventStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """make_store(page_size=...) -> a store on this test's backend, closed at teardown."""
    made: list[EventStore] = []

    def factory(**options: Any) -> EventStore:
        store: EventStore
        if backend == "elasticsearch":
            url = request.getfixturevalue("elasticsearch_url")
            prefix = request.getfixturevalue("es_prefix")
            store = ElasticEventStore(url, prefix=prefix, **options)
        else:
            store = SqlEventStore(request.getfixturevalue(f"{backend}_url"), **options)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> EventStore:
    return make_store()


@pytest.fixture
def tenant() -> str:
    """A tenant of this test only, so tests share databases and indices without clashing."""
    return f"t{uuid.uuid4().hex[:12]}"


def make_record(
    tenant: str, stream: str, sequence: int, timestamp: datetime, **extra: Any
) -> dict[str, Any]:
    """A record shaped like the sealer's (flat ECS keys), with a correct event.hash."""
    record: dict[str, Any] = {
        "@timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event.id": f"0123456789abcdef-{sequence}",
        "event.action": "face.swapped",
        "event.kind": "event",
        "event.category": ["process"],
        "event.type": ["change"],
        "event.outcome": "success",
        "event.dataset": "ffaudit.audit",
        "event.sequence": sequence,
        "ffaudit.schema": 1,
        "ffaudit.stream": stream,
        "ffaudit.tenant": tenant,
        "ffaudit.prev": "0" * 64,
        "user.hash": "a" * 64,
        "ffaudit.session.hash": "b" * 64,
        "trace.id": f"job-{sequence // 10}",
        "ffaudit.metadata": {"blend_ratio": 0.75, "target_face_index": sequence % 3},
        **extra,
    }
    record["event.hash"] = record_hash(record)
    return record


def make_event(
    tenant: str,
    sequence: int,
    *,
    stream: str = "cam-1",
    timestamp: datetime | None = None,
    doc_id: str | None = None,
    verdict: str = "ok",
    failure: str | None = None,
    extra: dict[str, Any] | None = None,
) -> StoredEvent:
    """A stored event of a record made by `make_record`, with `extra` fields in the record."""
    when = timestamp or T0 + timedelta(milliseconds=50 * sequence)
    record = make_record(tenant, stream, sequence, when, **(extra or {}))
    return StoredEvent(
        doc_id=doc_id or f"{stream}:{sequence}",
        tenant=tenant,
        stream=stream,
        sequence=sequence,
        event_hash=record["event.hash"],
        timestamp=when,
        record=record,
        verdict=verdict,
        failure=failure,
        received_at=RECEIVED,
    )


async def collect(events: AsyncIterator[StoredEvent]) -> list[StoredEvent]:
    return [event async for event in events]
