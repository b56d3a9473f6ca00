"""One contract, every backend: SQLite, PostgreSQL and Elasticsearch, all real."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from elasticsearch import AsyncElasticsearch
from sqlalchemy import create_engine, inspect

from audit.db.session import alembic_config
from audit.errors import StoreUnavailableError
from audit.integrity.canonical import canonicalize
from audit.integrity.keys import Signer
from audit.settings import AuditSettings
from audit.store import make_event_store
from audit.store.archive import ArchiveKind, Archiver, ArchiveSettings
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore
from audit.store.sql import SqlEventStore
from tests.store.conftest import T0, StoreFactory, collect, make_event

ODD_METADATA: dict[str, Any] = {
    "floats": [0.1, 0.75, 1e-7, 3.141592653589793, -2.5e300, 5e-324, 123456.789],
    "integral_float": 2.0,
    "big_int": 2**53 - 1,
    "unicode": 'visage ünïcødé 顔 😀 \u2028 "quoted" \\ tab\t',
    "nested": {"a": {"b": [1, 2.5, {"c": "d", "e": [True, False, None]}]}, "empty": {}},
    "list": [],
}


async def test_write_then_get_round_trips_exactly(store: EventStore, tenant: str) -> None:
    events = [
        make_event(tenant, 1, extra={"ffaudit.metadata": ODD_METADATA}),
        make_event(tenant, 2, verdict="broken", failure="modified"),
        make_event(tenant, 3, extra={"ffaudit.signature": "A" * 86 + "=="}),
    ]
    result = await store.write(events)
    assert result.written == 3
    assert result.existing == ()
    # No refresh: a store reads its own writes at once.
    for event in events:
        got = await store.get(tenant, event.doc_id)
        assert got == event
        assert got is not None
        assert canonicalize(got.record) == canonicalize(event.record)
        assert got.timestamp.tzinfo is not None
        assert got.received_at == event.received_at
    floats = (await store.get(tenant, "cam-1:1")).record["ffaudit.metadata"]["floats"]  # type: ignore[union-attr]
    assert floats == ODD_METADATA["floats"]
    assert all(isinstance(x, float) for x in floats)
    assert await store.get(tenant, "cam-1:99") is None


async def test_concurrent_readers_all_see_the_stores_own_writes(
    store: EventStore, tenant: str
) -> None:
    # Read-your-writes holds for every reader, not just the first: a second reader arriving
    # while the first one's refresh is in flight once read before it and missed records
    # (ingest raced the alert scheduler; a resent record looked late instead of stored).
    for round_ in range(5):
        events = [make_event(tenant, 100 * round_ + n) for n in range(1, 21)]
        await store.write(events)
        ids = [e.doc_id for e in events]
        seen = await asyncio.gather(*(store.get_many(tenant, ids) for _ in range(4)))
        assert [len(found) for found in seen] == [20, 20, 20, 20]


async def test_unindexable_records_are_stored_verbatim(store: EventStore, tenant: str) -> None:
    # Wrong types for mapped fields and keys that look like the store's own annotations:
    # still stored, whole, and never allowed to override what the service recorded.
    odd = make_event(
        tenant,
        1,
        extra={
            "event.action": {"not": "a keyword"},
            "@timestamp": "yesterday",
            "ffaudit.ingest.verdict": "ok",
            "ffaudit.ingest.tenant": "someone-else",
        },
        verdict="broken",
        failure="malformed",
    )
    mistyped = make_event(tenant, 2, extra={"event.sequence": "two", "ffaudit.schema": [1]})
    plain = make_event(tenant, 3)
    assert (await store.write([odd, mistyped, plain])).written == 3
    assert await store.get(tenant, odd.doc_id) == odd
    assert await store.get(tenant, mistyped.doc_id) == mistyped
    assert await store.get(tenant, plain.doc_id) == plain
    assert await store.count(tenant, "cam-1") == 3
    scanned = await collect(store.scan(tenant, "cam-1"))
    assert scanned == [odd, mistyped, plain]
    assert await store.get("someone-else", odd.doc_id) is None


async def test_rewrite_is_idempotent_and_never_overwrites(store: EventStore, tenant: str) -> None:
    events = [make_event(tenant, n) for n in range(1, 6)]
    assert (await store.write(events)).written == 5
    # A retry of the batch, with different content under the same ids: nothing changes.
    changed = [replace(e, verdict="broken", failure="modified") for e in events]
    again = await store.write([*changed, make_event(tenant, 6)])
    assert again.written == 1
    assert again.existing == tuple(e.doc_id for e in events)
    for event in events:
        assert await store.get(tenant, event.doc_id) == event
    # The same id twice in one batch is written once.
    twice = make_event(tenant, 7)
    result = await store.write([twice, replace(twice, verdict="pending")])
    assert (result.written, result.existing) == (1, (twice.doc_id,))
    assert await store.get(tenant, twice.doc_id) == twice
    assert await store.count(tenant) == 7
    assert await store.write([]) == type(result)(written=0, existing=())


async def test_scan_orders_filters_and_pages(make_store: StoreFactory, tenant: str) -> None:
    store = make_store(page_size=100)
    n = 2500
    # Record times spread over three days (three daily indices), written out of order.
    events = [
        make_event(tenant, seq, timestamp=T0 + timedelta(minutes=2 * seq))
        for seq in range(1, n + 1)
    ]
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    for i in range(0, n, 1000):
        assert (await store.write(shuffled[i : i + 1000])).written == len(shuffled[i : i + 1000])
    await store.write([make_event(tenant, 5, stream="cam-2")])

    everything = await collect(store.scan(tenant, "cam-1"))
    assert [e.sequence for e in everything] == list(range(1, n + 1))
    assert everything == events
    window = await collect(store.scan(tenant, "cam-1", start=1001, end=1250))
    assert [e.sequence for e in window] == list(range(1001, 1251))
    tail = await collect(store.scan(tenant, "cam-1", start=2401))
    assert [e.sequence for e in tail] == list(range(2401, n + 1))
    # Exactly one page, and page boundaries that fall on the last record.
    assert len(await collect(store.scan(tenant, "cam-1", start=101, end=200))) == 100
    assert await collect(store.scan(tenant, "cam-1", start=n + 1)) == []
    assert await collect(store.scan(tenant, "cam-1", start=10, end=9)) == []
    assert [e.stream for e in await collect(store.scan(tenant, "cam-2"))] == ["cam-2"]


async def test_forks_are_both_kept_and_scanned(make_store: StoreFactory, tenant: str) -> None:
    store = make_store(page_size=2)
    main = [make_event(tenant, n) for n in range(1, 6)]
    rival = make_event(tenant, 3, extra={"event.action": "face.anonymized"})
    rival = replace(
        rival, doc_id=f"cam-1:3:{rival.event_hash[:16]}", verdict="broken", failure="fork"
    )
    await store.write([*main, rival])
    scanned = await collect(store.scan(tenant, "cam-1"))
    assert [e.doc_id for e in scanned] == [
        "cam-1:1",
        "cam-1:2",
        "cam-1:3",
        rival.doc_id,
        "cam-1:4",
        "cam-1:5",
    ]
    assert scanned[3] == rival
    assert [e.doc_id for e in await collect(store.scan(tenant, "cam-1", 3, 3))] == [
        "cam-1:3",
        rival.doc_id,
    ]
    assert await store.count(tenant, "cam-1") == 6


async def test_update_verdicts(store: EventStore, tenant: str) -> None:
    other = f"{tenant}x"
    # Odd metadata: an update must leave the record exactly as it was (Elasticsearch
    # rewrites _source on update).
    pending = [
        make_event(tenant, n, verdict="pending", extra={"ffaudit.metadata": ODD_METADATA})
        for n in (4, 5, 6)
    ]
    foreign = make_event(other, 4, stream="cam-9", verdict="pending")
    await store.write([*pending, foreign])
    await store.update_verdicts(
        tenant,
        [
            (pending[0].doc_id, pending[0].timestamp, "ok", None),
            (pending[1].doc_id, pending[1].timestamp, "broken", "gap"),
            ("cam-1:404", T0, "ok", None),  # unknown: ignored
            (foreign.doc_id, foreign.timestamp, "ok", None),  # another tenant's: unreachable
        ],
    )
    assert await store.get(tenant, pending[0].doc_id) == replace(pending[0], verdict="ok")
    assert await store.get(tenant, pending[1].doc_id) == replace(
        pending[1], verdict="broken", failure="gap"
    )
    assert await store.get(tenant, pending[2].doc_id) == pending[2]
    assert await store.get(other, foreign.doc_id) == foreign
    assert await store.get(tenant, "cam-1:404") is None
    # And back: a failure can be cleared.
    await store.update_verdicts(tenant, [(pending[1].doc_id, pending[1].timestamp, "ok", None)])
    assert await store.get(tenant, pending[1].doc_id) == replace(pending[1], verdict="ok")
    assert [e.verdict for e in await collect(store.scan(tenant, "cam-1"))] == [
        "ok",
        "ok",
        "pending",
    ]


async def test_count_per_tenant_and_stream(store: EventStore, tenant: str) -> None:
    assert await store.count(tenant) == 0
    await store.write(
        [make_event(tenant, n) for n in range(1, 4)]
        + [make_event(tenant, n, stream="cam-2") for n in range(1, 3)]
        + [make_event(f"{tenant}-eu", 1, stream="cam-3")]
    )
    assert await store.count(tenant) == 5
    assert await store.count(tenant, "cam-1") == 3
    assert await store.count(tenant, "cam-2") == 2
    assert await store.count(tenant, "cam-3") == 0
    assert await store.count(f"{tenant}-eu") == 1


async def test_get_many_reads_a_batch_with_first_stored_winning(
    make_store: StoreFactory, tenant: str
) -> None:
    store = make_store(page_size=2)  # several chunks, so chunking is exercised too
    events = [make_event(tenant, n) for n in range(1, 6)]
    await store.write(events)
    neighbour = make_event(f"{tenant}-eu", 1)
    await store.write([neighbour])
    # The same id on another day: the first stored record is the one read back.
    later = make_event(tenant, 2, timestamp=T0 + timedelta(days=1), extra={"late": True})
    await store.write([later])
    asked = [e.doc_id for e in events] + ["cam-1:99", events[0].doc_id, neighbour.doc_id]
    found = await store.get_many(tenant, asked)
    assert found == {e.doc_id: e for e in events}  # missing ids absent, duplicates once
    assert await store.get_many(tenant, []) == {}
    assert await store.get_many("*", asked) == {}


async def test_tenant_isolation(store: EventStore, tenant: str) -> None:
    # "<t>-eu" is the tricky neighbour: its index names start with "<t>-".
    neighbour, stranger = f"{tenant}-eu", f"{tenant}z"
    theirs = [make_event(neighbour, n, stream="cam-eu") for n in range(1, 4)]
    await store.write(theirs)
    for event in theirs:
        assert await store.get(tenant, event.doc_id) is None
        assert await store.get(stranger, event.doc_id) is None
        assert await store.get(neighbour, event.doc_id) == event
    assert await collect(store.scan(tenant, "cam-eu")) == []
    assert await store.count(tenant) == 0
    assert await store.count(tenant, "cam-eu") == 0
    assert await store.count(neighbour) == 3
    # Tenant ids that could never name an index, or would widen a pattern.
    for bogus in ("*", f"{tenant}*", "", "../x", tenant.upper()):
        assert await store.get(bogus, theirs[0].doc_id) is None
        assert await collect(store.scan(bogus, "cam-eu")) == []
        assert await store.count(bogus) == 0


async def test_ping(store: EventStore) -> None:
    assert await store.ping() is True


def test_every_backend_supplies_its_archiver(store: EventStore, tmp_path: Path) -> None:
    settings = ArchiveSettings(tmp_path, Signer.generate(), "repository", "location")
    archiver = store.archiver(settings)
    assert isinstance(archiver, Archiver)  # what retention needs (audit.store.archive)
    assert archiver.kind in ArchiveKind


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_elasticsearch_raises_store_unavailable(es_prefix: str) -> None:
    store = ElasticEventStore(
        f"http://127.0.0.1:{_closed_port()}", prefix=es_prefix, retry_budget_s=0.5
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.write([make_event("acme", 1)])
        assert time.monotonic() - started < 10
        assert await store.ping() is False
        with pytest.raises(StoreUnavailableError):
            await store.count("acme")
    finally:
        await store.close()


async def test_unreachable_postgres_raises_store_unavailable() -> None:
    store = SqlEventStore(f"postgresql+psycopg://x:y@127.0.0.1:{_closed_port()}/none")
    try:
        with pytest.raises(StoreUnavailableError):
            await store.write([make_event("acme", 1)])
        assert await store.ping() is False
    finally:
        await store.close()


# -- Elasticsearch specifics ------------------------------------------------------------------


async def test_es_daily_per_tenant_indices_and_template(
    elasticsearch_url: str, es_prefix: str, tenant: str
) -> None:
    store = ElasticEventStore(elasticsearch_url, prefix=es_prefix)
    client = AsyncElasticsearch(elasticsearch_url)
    try:
        late = datetime(2026, 11, 21, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # 22nd UTC
        await store.write(
            [
                make_event(tenant, 1, timestamp=datetime(2026, 11, 21, 0, 0, tzinfo=UTC)),
                make_event(tenant, 2, timestamp=datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC)),
                make_event(tenant, 3, timestamp=late),
            ]
        )
        indices = await client.indices.get(index=f"{es_prefix}-{tenant}-*")
        assert set(indices) == {
            f"{es_prefix}-{tenant}-2026.11.21",
            f"{es_prefix}-{tenant}-2026.11.22",
        }
        assert store.index_for(tenant, late) == f"{es_prefix}-{tenant}-2026.11.22"
        doc = await client.get(index=f"{es_prefix}-{tenant}-2026.11.21", id="cam-1:2")
        assert doc["_source"]["event.sequence"] == 2  # flat dotted keys, as received

        template = await client.indices.get_index_template(name=es_prefix)
        body = template["index_templates"][0]["index_template"]
        assert body["index_patterns"] == [f"{es_prefix}-*"]
        assert body["composed_of"] == [f"{es_prefix}-settings", f"{es_prefix}-mappings"]

        index = indices[f"{es_prefix}-{tenant}-2026.11.21"]
        settings = index["settings"]["index"]
        assert (settings["number_of_shards"], settings["number_of_replicas"]) == ("1", "0")
        assert settings["refresh_interval"] == "1s"
        assert settings["translog"]["durability"] == "request"
        mappings = index["mappings"]
        assert mappings["dynamic"] == "false"
        props = mappings["properties"]
        assert props["@timestamp"]["type"] == "date"
        assert props["event"]["properties"]["sequence"]["type"] == "long"
        assert props["event"]["properties"]["hash"]["type"] == "keyword"
        assert props["ffaudit"]["properties"]["schema"]["type"] == "integer"
        assert props["ffaudit"]["properties"]["metadata"]["type"] == "flattened"
        assert props["error"]["properties"]["message"]["type"] == "text"
        assert props["error"]["properties"]["message"]["fields"]["keyword"]["type"] == "keyword"
        ingest = props["ffaudit"]["properties"]["ingest"]["properties"]
        assert ingest["verdict"]["type"] == "keyword"
        assert ingest["received_at"]["type"] == "date"
    finally:
        await client.close()
        await store.close()


def _leaf_fields(mapping: dict[str, Any]) -> int:
    total = 0
    for spec in mapping.get("properties", {}).values():
        total += _leaf_fields(spec) if "properties" in spec else 1
        total += len(spec.get("fields", {}))
    return total


async def test_es_metadata_is_flattened(
    elasticsearch_url: str, es_prefix: str, tenant: str
) -> None:
    store = ElasticEventStore(elasticsearch_url, prefix=es_prefix)
    client = AsyncElasticsearch(elasticsearch_url)
    index = f"{es_prefix}-{tenant}-2026.11.21"
    try:
        await store.write([make_event(tenant, 1)])
        before = _leaf_fields((await client.indices.get_mapping(index=index))[index]["mappings"])
        wide: dict[str, Any] = {f"key_{i}": f"value {i}" for i in range(2000)}
        wide["deep"] = {"er": {"still": [1, 2.5, "x"]}}
        event = make_event(
            tenant, 2, extra={"ffaudit.metadata": wide, "unknown.top.level": {"a": 1}}
        )
        assert (await store.write([event])).written == 1
        after = _leaf_fields((await client.indices.get_mapping(index=index))[index]["mappings"])
        assert after == before < 200
        assert await store.get(tenant, event.doc_id) == event
        await store.refresh()
        hits = await client.count(
            index=index, query={"term": {"ffaudit.metadata.key_1999": "value 1999"}}
        )
        assert hits["count"] == 1
        # Unknown fields are kept in _source but not indexed.
        unknown = await client.count(
            index=index, query={"exists": {"field": "unknown.top.level.a"}}
        )
        assert unknown["count"] == 0
    finally:
        await client.close()
        await store.close()


# -- SQL specifics ----------------------------------------------------------------------------


def test_postgres_schema_is_built_by_the_migrations(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        head = ScriptDirectory.from_config(alembic_config(postgres_url)).get_current_head()
        assert current == head
        inspector = inspect(engine)
        assert inspector.get_pk_constraint("events")["constrained_columns"] == ["tenant", "doc_id"]
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("events")}
        assert indexes == {
            "ix_events_tenant_timestamp": ["tenant", "timestamp"],
            "ix_events_stream_sequence": ["stream", "sequence"],
            "ix_events_tenant_user_hash": ["tenant", "user_hash"],
            "ix_events_tenant_trace_id": ["tenant", "trace_id"],
        }
        columns = {c["name"]: c for c in inspector.get_columns("events")}
        assert getattr(columns["timestamp"]["type"], "timezone", None) is True
    finally:
        engine.dispose()


async def test_sql_store_on_migrated_postgres(postgres_url: str, tenant: str) -> None:
    store = make_event_store(AuditSettings(database_url=postgres_url))
    assert isinstance(store, SqlEventStore)
    try:
        event = make_event(tenant, 1, extra={"ffaudit.metadata": ODD_METADATA})
        assert (await store.write([event])).written == 1
        assert await store.get(tenant, event.doc_id) == event
        engine = create_engine(postgres_url)
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT action, outcome, user_hash, session_hash, trace_id, record"
                " FROM events WHERE doc_id = %(d)s AND tenant = %(t)s",
                {"d": event.doc_id, "t": tenant},
            ).one()
        engine.dispose()
        assert row[:5] == ("face.swapped", "success", "a" * 64, "b" * 64, "job-0")
        assert row[5].encode() == canonicalize(event.record)
    finally:
        await store.close()


def test_factory_picks_elasticsearch_when_configured() -> None:
    settings = AuditSettings(elasticsearch_url="http://127.0.0.1:9", elasticsearch_index_prefix="p")
    store = make_event_store(settings)
    assert isinstance(store, ElasticEventStore)
    assert store.prefix == "p"
