"""The query contract (search, stats, by_job) on every backend: SQLite, PostgreSQL and
Elasticsearch, all real. Expectations are computed in Python from the records written."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from alembic import command
from elasticsearch import AsyncElasticsearch
from sqlalchemy import create_engine, inspect, text

from audit.db.session import alembic_config, upgrade
from audit.errors import InvalidInputError
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import record_hash
from audit.store.elastic import INGEST, MAPPINGS, ElasticEventStore, to_document
from audit.store.protocol import EventStore, StoredEvent
from audit.store.query import STATS_BY, EventQuery, file_hashes_of, searchable_words
from audit.store.sql import SqlEventStore
from tests.conftest import postgres_database
from tests.store.conftest import RECEIVED, StoreFactory, make_record

START = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
STREAMS = ("cam-1", "cam-2")
PER_STREAM = 150
ACTORS = ("1f" * 32, "2e" * 32, "3d" * 32)
SESSIONS = ("4c" * 32, "5b" * 32)
CLIENT_IPS = ("a1" * 32, "b2" * 32, "c3" * 32)
TARGETS = ("6a" * 32, "79" * 32, "88" * 32)
PATH_HASH = "97" * 32  # a pseudonym in metadata, under a `_hash` key
INPUTS = ("0f" * 32, "1e" * 32, "2d" * 32)  # SHA-256 of files, as the engine names them
SOURCE = "3c" * 32
OUTPUTS = ("4b" * 32, "5a" * 32)
JOBS = ("job-alpha", "job-beta")
ACTIONS = (
    "face.detected",
    "face.swapped",
    "job.started",
    "face.anonymized",
    "job.failed",
    "frame.failed",
    "job.completed",
)
ERRORS = {
    "job.failed": ("TimeoutError", "inswapper timed out after 30 s on frame 12"),
    # The scrubber leaves a 16-hex pseudonym token in place of a raw user id.
    "frame.failed": ("CudaOutOfMemory", "CUDA out of memory for [user:0123456789abcdef]"),
}


# -- the data set ------------------------------------------------------------------------------


def _stored(
    tenant: str,
    stream: str,
    sequence: int,
    timestamp: datetime,
    fields: dict[str, Any],
    *,
    omit: Iterable[str] = (),
    doc_id: str | None = None,
    verdict: str = "ok",
    failure: str | None = None,
) -> StoredEvent:
    record = make_record(tenant, stream, sequence, timestamp, **fields)
    for key in omit:
        record.pop(key, None)
    record["event.hash"] = record_hash(record)
    return StoredEvent(
        doc_id=doc_id or f"{stream}:{sequence}",
        tenant=tenant,
        stream=stream,
        sequence=sequence,
        event_hash=record["event.hash"],
        timestamp=timestamp,
        record=record,
        verdict=verdict,
        failure=failure,
        received_at=RECEIVED,
    )


def _timestamp(stream: str, sequence: int) -> datetime:
    # About 70 hours over four UTC dates, with sub-millisecond parts, exact ties between the
    # streams (broken by stream), records a microsecond apart in one millisecond, and
    # producer clocks that go back now and then (record time need not follow the sequence).
    base = START + timedelta(minutes=28 * sequence, microseconds=(sequence * 7919) % 1000)
    if sequence % 17 == 0:
        base -= timedelta(hours=2)
    if stream == "cam-1" or sequence % 5 == 0:
        return base
    if sequence % 5 == 1:
        # Same millisecond, a microsecond earlier: cam-2 first, though "cam-1" < "cam-2".
        return base - timedelta(microseconds=1)
    return base + timedelta(minutes=9, microseconds=123)


def dataset(tenant: str) -> list[StoredEvent]:
    """300 records in two streams plus a rival (fork) record, every field varied."""
    events: list[StoredEvent] = []
    for n, stream in enumerate(STREAMS):
        for seq in range(1, PER_STREAM + 1):
            action = ACTIONS[(seq + n) % len(ACTIONS)]
            outcome = "failure" if action.endswith("failed") else "success"
            if seq % 11 == 0:
                outcome = "unknown"
            metadata: dict[str, Any] = {
                "model": "inswapper_128",
                "blend_ratio": 0.75,
                "source_path_hash": PATH_HASH,
                "frames": [seq, {"label": "Straße"}],
            }
            if seq % 13 == 0:
                metadata["note"] = "Operator review REQUESTED"
            fields: dict[str, Any] = {
                "event.action": action,
                "event.outcome": outcome,
                "user.hash": ACTORS[seq % 3],
                "ffaudit.session.hash": SESSIONS[(seq // 40) % 2],
                "ffaudit.client.ip_hash": CLIENT_IPS[(seq // 7) % 3],
                "ffaudit.target.hash": TARGETS[seq % 3],
                "trace.id": JOBS[(seq // 25) % 2],
                "ffaudit.metadata": metadata,
            }
            if action in ERRORS:
                fields["error.type"], fields["error.message"] = ERRORS[action]
            # Files as the engine names them: a job's input as file.hash.sha256 (and in the
            # metadata of its start, beside the source face), its output when it completes.
            job_input = INPUTS[(seq // 25) % 3]
            if seq % 6 != 5:
                fields["file.hash.sha256"] = job_input
            if action == "job.started":
                metadata["input_sha256"] = job_input
                metadata["source_sha256"] = SOURCE if seq % 2 else None
            if action == "job.completed":
                metadata["output_sha256"] = OUTPUTS[seq % 2]
            omit = [
                key
                for key, gone in (
                    ("user.hash", seq % 10 == 9),
                    ("ffaudit.target.hash", seq % 4 == 0),
                    ("trace.id", seq % 25 == 0),
                )
                if gone
            ]
            verdict, failure = "ok", None
            if seq % 23 == 0:
                verdict, failure = "broken", "modified"
            elif seq % 31 == 0:
                verdict = "pending"
            events.append(
                _stored(
                    tenant,
                    stream,
                    seq,
                    _timestamp(stream, seq),
                    fields,
                    omit=omit,
                    verdict=verdict,
                    failure=failure,
                )
            )
    # A rival of cam-1:40: same stream, sequence and time; only the doc id tells them apart.
    main = events[39]
    rival = _stored(
        tenant,
        "cam-1",
        40,
        main.timestamp,
        {"event.action": "face.anonymized", "user.hash": ACTORS[0], "trace.id": JOBS[0]},
        verdict="broken",
        failure="fork",
    )
    events.append(replace(rival, doc_id=f"cam-1:40:{rival.event_hash[:16]}"))
    return events


async def write_dataset(store: EventStore, tenant: str) -> list[StoredEvent]:
    """The tenant's data set, plus the same data set under the neighbour `<tenant>-eu`
    (whose index names start with the tenant's): any leak shows up in every expectation."""
    mine, theirs = dataset(tenant), dataset(f"{tenant}-eu")
    assert (await store.write(mine + theirs)).written == len(mine) + len(theirs)
    return mine


# -- expectations ----------------------------------------------------------------------------


def key(event: StoredEvent) -> tuple[datetime, str, int, str]:
    return (event.timestamp, event.stream, event.sequence, event.doc_id)


def matches(query: EventQuery, event: StoredEvent) -> bool:
    record = event.record
    for values, value in (
        (query.actor_hashes, record.get("user.hash")),
        (query.actions, record.get("event.action")),
        (query.outcomes, record.get("event.outcome")),
        (query.session_hashes, record.get("ffaudit.session.hash")),
        (query.target_hashes, record.get("ffaudit.target.hash")),
        (query.job_ids, record.get("trace.id")),
        (query.streams, event.stream),
        (query.verdicts, event.verdict),
        (query.client_ip_hashes, record.get("ffaudit.client.ip_hash")),
    ):
        if values and value not in values:
            return False
    if query.excluded_actions and record.get("event.action") in query.excluded_actions:
        return False
    if query.since is not None and event.timestamp < query.since:
        return False
    if query.until is not None and event.timestamp >= query.until:
        return False
    if query.file_hashes:
        metadata = record.get("ffaudit.metadata") or {}
        named = {record.get("file.hash.sha256")}
        named |= {metadata.get(k) for k in ("input_sha256", "source_sha256", "output_sha256")}
        if not named & set(query.file_hashes):
            return False
    words = searchable_words(record)
    return all(any(w.startswith(q) for w in words) for q in query.words())


def expected(events: Iterable[StoredEvent], query: EventQuery) -> list[StoredEvent]:
    chosen = [e for e in events if e.tenant == query.tenant and matches(query, e)]
    return sorted(chosen, key=key, reverse=query.order == "desc")


def group(event: StoredEvent, by: str) -> str:
    value = {
        "action": event.record.get("event.action"),
        "outcome": event.record.get("event.outcome"),
        "actor": event.record.get("user.hash"),
        "verdict": event.verdict,
        "day": event.timestamp.astimezone(UTC).date().isoformat(),
        "client_ip": event.record.get("ffaudit.client.ip_hash"),
        "session": event.record.get("ffaudit.session.hash"),
        "stream": event.stream,
    }[by]
    return value or ""


async def read_all(
    store: EventStore, query: EventQuery, limit: int, cursor: str | None = None
) -> list[StoredEvent]:
    found: list[StoredEvent] = []
    for _page in range(10_000):
        page = await store.search(query, limit=limit, cursor=cursor)
        assert len(page.events) <= limit
        found += page.events
        if page.next_cursor is None:
            return found
        assert len(page.events) == limit  # only the last page is short
        cursor = page.next_cursor
    raise AssertionError("paging never ended")


def ids(events: Iterable[StoredEvent]) -> list[str]:
    return [e.doc_id for e in events]


def queries(tenant: str) -> list[EventQuery]:
    day2 = datetime(2026, 11, 22, tzinfo=UTC)
    edge = _timestamp("cam-1", 60)  # exact record times as bounds: since in, until out
    return [
        EventQuery(tenant),
        EventQuery(tenant, actor_hashes=(ACTORS[0],)),
        EventQuery(tenant, actor_hashes=(ACTORS[1], ACTORS[2], "ff" * 32)),
        EventQuery(tenant, actions=("job.failed",)),
        EventQuery(tenant, actions=("face.swapped", "face.detected")),
        EventQuery(tenant, outcomes=("unknown",)),
        EventQuery(tenant, outcomes=("failure", "success")),
        EventQuery(tenant, session_hashes=(SESSIONS[1],)),
        EventQuery(tenant, client_ip_hashes=(CLIENT_IPS[2],)),
        EventQuery(tenant, client_ip_hashes=(CLIENT_IPS[0], CLIENT_IPS[1]), streams=("cam-2",)),
        EventQuery(tenant, target_hashes=(TARGETS[2],)),
        EventQuery(tenant, job_ids=(JOBS[1],)),
        EventQuery(tenant, job_ids=("job-none",)),
        EventQuery(tenant, streams=("cam-2",)),
        EventQuery(tenant, verdicts=("broken",)),
        EventQuery(tenant, verdicts=("pending", "broken")),
        EventQuery(tenant, since=day2),
        EventQuery(tenant, until=day2),
        EventQuery(tenant, since=edge, until=edge + timedelta(hours=5)),
        EventQuery(tenant, since=edge + timedelta(microseconds=1)),
        EventQuery(tenant, until=edge + timedelta(microseconds=1)),
        EventQuery(tenant, text="timed OUT"),
        EventQuery(tenant, text="straß"),  # metadata value in a nested list, a prefix
        EventQuery(tenant, file_hashes=(INPUTS[1],)),
        EventQuery(tenant, file_hashes=(SOURCE,)),
        EventQuery(tenant, file_hashes=(OUTPUTS[0], INPUTS[2], "ee" * 32)),
        EventQuery(tenant, file_hashes=(OUTPUTS[1],), streams=("cam-2",), order="asc"),
        EventQuery(tenant, file_hashes=("ee" * 32,)),
        EventQuery(
            tenant,
            actor_hashes=(ACTORS[0], ACTORS[1]),
            actions=("job.failed", "frame.failed", "face.swapped"),
            outcomes=("failure",),
            streams=("cam-1",),
            since=START + timedelta(hours=10),
            until=START + timedelta(hours=60),
        ),
        EventQuery(
            tenant,
            session_hashes=(SESSIONS[0],),
            target_hashes=(TARGETS[0], TARGETS[1]),
            job_ids=(JOBS[0],),
            verdicts=("ok",),
            text="inswapper",
        ),
        EventQuery(tenant, actions=("job.failed",), verdicts=("pending",), streams=("cam-9",)),
        # The console's hidden reads of the trail: an exclusion, alone and with filters.
        EventQuery(tenant, excluded_actions=("job.failed", "frame.failed")),
        EventQuery(tenant, excluded_actions=("face.anonymized",), streams=("cam-1",)),
        EventQuery(
            tenant,
            actions=("job.failed", "face.swapped"),
            excluded_actions=("job.failed",),
            since=START + timedelta(hours=10),
        ),
    ]


# -- search ----------------------------------------------------------------------------------


async def test_each_filter_alone_and_combined(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)
    for query in queries(tenant):
        for order in ("asc", "desc"):
            q = replace(query, order=order)
            want = expected(events, q)
            got = await read_all(store, q, limit=1000)
            assert ids(got) == ids(want), q
            assert got == want
    # The data set exercises what it should.
    assert any(expected(events, q) == [] for q in queries(tenant))
    assert all(len(expected(events, q)) < len(events) for q in queries(tenant)[1:])


async def test_small_pages_give_the_exact_sequence(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)
    for order in ("asc", "desc"):
        query = EventQuery(tenant, order=order)
        want = expected(events, query)
        assert len(want) == 2 * PER_STREAM + 1
        for limit in (1, 7, 50, len(want) - 1, len(want), len(want) + 1):
            got = await read_all(store, query, limit=limit)
            assert ids(got) == ids(want), limit
            assert len(set(ids(got))) == len(got)
    # A page that ends exactly on the last record says so (no empty page after it).
    query = EventQuery(tenant, streams=("cam-1",), actions=("job.failed",))
    total = len(expected(events, query))
    page = await store.search(query, limit=total)
    assert (len(page.events), page.next_cursor) == (total, None)


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_pages_are_stable_under_concurrent_ingest(
    store: EventStore, tenant: str, order: str
) -> None:
    events = await write_dataset(store, tenant)
    query = EventQuery(tenant, order=order)  # type: ignore[arg-type]
    first = await store.search(query, limit=40)
    second = await store.search(query, limit=40, cursor=first.next_cursor)
    read = first.events + second.events
    assert ids(read) == ids(expected(events, query)[:80])
    last = read[-1]
    # New records on every side of the cursor: earlier and later times, and the cursor's
    # own time, where the stream decides (one before "cam-…" sorts, one after).
    step = timedelta(hours=3)
    new = [
        _stored(tenant, "cam-0", 1, last.timestamp, {}),
        _stored(tenant, "cam-z", 1, last.timestamp, {}),
        _stored(tenant, "cam-0", 2, last.timestamp - step, {}),
        _stored(tenant, "cam-0", 3, last.timestamp + step, {}),
        _stored(tenant, "cam-0", 4, last.timestamp + timedelta(microseconds=1), {}),
        _stored(tenant, "cam-0", 5, last.timestamp - timedelta(microseconds=1), {}),
        _stored(tenant, "cam-0", 6, START - step, {}),
        _stored(tenant, "cam-0", 7, START + timedelta(days=9), {}),
    ]
    await store.write(new)
    rest = await read_all(store, query, limit=40, cursor=second.next_cursor)
    final = expected(events + new, query)
    position = ids(final).index(last.doc_id)
    # The unread part is exactly what now follows the cursor: nothing read repeats,
    # nothing unread is skipped, and new records appear only there.
    assert ids(rest) == ids(final[position + 1 :])
    assert len(set(ids(read + rest))) == len(read) + len(rest)
    appeared = {e.doc_id for e in rest} & {e.doc_id for e in new}
    after = {e.doc_id for e in new if (key(e) > key(last)) == (order == "asc")}
    assert appeared == after
    assert 0 < len(after) < len(new)


async def test_cursor_is_bound_to_its_query(store: EventStore, tenant: str) -> None:
    await write_dataset(store, tenant)
    query = EventQuery(tenant, actions=("face.swapped", "job.failed"), streams=("cam-1",))
    cursor = (await store.search(query, limit=3)).next_cursor
    assert cursor is not None
    # The same query, its values in another order, continues.
    same = replace(query, actions=("job.failed", "face.swapped", "job.failed"))
    assert len((await store.search(same, limit=3, cursor=cursor)).events) == 3
    others = [
        replace(query, actions=("face.swapped",)),
        replace(query, streams=()),
        replace(query, order="asc"),
        replace(query, text="swapped"),
        replace(query, since=START),
        replace(query, file_hashes=(INPUTS[0],)),
        replace(query, tenant=f"{tenant}-eu"),
        replace(query, tenant=f"{tenant}x"),
        EventQuery(tenant),
    ]
    for other in others:
        with pytest.raises(InvalidInputError):
            await store.search(other, limit=3, cursor=cursor)
    body = cursor[3:]
    payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))

    def forged(value: Any) -> str:
        raw = base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()
        return "v1." + raw

    garbage = [
        "",
        "v1.",
        "v1.!!!!",
        "v2." + body,
        body,
        cursor[:-4],
        cursor + "A",
        "v1." + "A" * 5000,
        forged({"not": "a list"}),
        forged(payload[:-1]),
        forged([*payload[:2], True, *payload[3:]]),  # a bool is no time
        forged([*payload[:2], str(payload[2]), *payload[3:]]),
        forged([*payload[:4], 1.5, payload[5]]),
        forged(["0" * 32, *payload[1:]]),  # another query's digest
    ]
    # Numbers wider than a 64-bit sort value (orjson reads the first as a float).
    for wide in (b"1" + b"0" * 30, b"18446744073709551615"):
        raw = orjson.dumps([*payload[:2], 0, *payload[3:]]).replace(b",0,", b"," + wide + b",", 1)
        garbage.append("v1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
    for bad in garbage:
        with pytest.raises(InvalidInputError):
            await store.search(query, limit=3, cursor=bad)


# -- stats and by_job ------------------------------------------------------------------------


async def test_stats_by_every_dimension(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)
    for query in queries(tenant):
        for by in STATS_BY:
            want = Counter(group(e, by) for e in expected(events, query))
            assert await store.stats(query, by=by) == dict(want), (query, by)  # type: ignore[arg-type]
    everything = EventQuery(tenant)
    days = await store.stats(everything, by="day")
    assert sorted(days) == ["2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24"]
    actors = await store.stats(everything, by="actor")
    assert actors[""] == sum(1 for e in events if "user.hash" not in e.record) > 0
    with pytest.raises(InvalidInputError):
        await store.stats(everything, by="tenant")  # type: ignore[arg-type]


async def test_stats_count_every_group_exactly(store: EventStore, tenant: str) -> None:
    # More groups than one aggregation page holds (Elasticsearch pages a composite
    # aggregation by 1000): every count exact, none left out.
    events = [
        _stored(tenant, "cam-1", n, START + timedelta(seconds=n), {"user.hash": f"{n % 1500:064x}"})
        for n in range(1, 3001)
    ]
    await store.write(events)
    got = await store.stats(EventQuery(tenant), by="actor")
    assert got == dict(Counter(e.record["user.hash"] for e in events))
    assert len(got) == 1500


async def test_by_job_in_chain_order(make_store: StoreFactory, tenant: str) -> None:
    store = make_store(page_size=7)  # by_job pages through the backend
    events = await write_dataset(store, tenant)
    for job in JOBS:
        want = sorted(
            (e for e in events if e.record.get("trace.id") == job),
            key=lambda e: (e.stream, e.sequence, e.doc_id),
        )
        assert len(want) > 100
        got = await store.by_job(tenant, job)
        assert got == want
        assert ids(await store.by_job(tenant, job, limit=9)) == ids(want[:9])
    assert "cam-1:40:" in " ".join(ids(await store.by_job(tenant, JOBS[0])))
    assert await store.by_job(tenant, "job-none") == []
    for bad_limit in (0, -1):
        with pytest.raises(InvalidInputError):
            await store.by_job(tenant, JOBS[0], limit=bad_limit)


# -- isolation -------------------------------------------------------------------------------


async def test_tenant_isolation(store: EventStore, tenant: str) -> None:
    # Only the neighbours hold data: "<t>-eu" (whose index names start with "<t>-") and "<t>x".
    await store.write(dataset(f"{tenant}-eu") + dataset(f"{tenant}x"))
    query = EventQuery(tenant)
    assert await read_all(store, query, limit=100) == []
    assert await store.stats(query, by="action") == {}
    assert await store.stats(query, by="day") == {}
    assert await store.by_job(tenant, JOBS[0]) == []
    # Their own data is all theirs.
    neighbour = await read_all(store, EventQuery(f"{tenant}-eu"), limit=500)
    assert len(neighbour) == 2 * PER_STREAM + 1
    assert {e.tenant for e in neighbour} == {f"{tenant}-eu"}
    for bogus in ("*", f"{tenant}*", f"{tenant}-*", "../x", tenant.upper(), f"{tenant}-eu,x"):
        bogus_query = EventQuery(bogus)
        assert (await store.search(bogus_query, limit=10)).events == []
        assert await store.stats(bogus_query, by="verdict") == {}
        assert await store.by_job(bogus, JOBS[0]) == []
    with pytest.raises(InvalidInputError):
        EventQuery("")
    with pytest.raises(InvalidInputError):
        await store.by_job("", JOBS[0])


# -- free text -------------------------------------------------------------------------------


async def test_text_search_covers_non_pii_text_only(store: EventStore, tenant: str) -> None:
    events = await write_dataset(store, tenant)

    async def hits(words: str, **filters: Any) -> set[str]:
        found = await read_all(store, EventQuery(tenant, text=words, **filters), limit=500)
        return set(ids(found))

    def where(test: Any) -> set[str]:
        return {e.doc_id for e in events if test(e.record)}

    timed_out = where(lambda r: "timed out" in r.get("error.message", ""))
    assert timed_out
    # Words of error.message, any case, whole or as a word prefix, all words required.
    assert await hits("timed") == timed_out
    assert await hits("TIMED Out") == timed_out
    assert await hits("tim") == timed_out
    assert await hits("inswapper timed") == timed_out
    assert await hits("timed nowhere") == set()
    assert await hits("imed") == set()  # a word prefix, not any substring
    # error.type, event.action and metadata values (nested, and numbers as words).
    assert await hits("cudaoutofmemory") == where(
        lambda r: r.get("error.type") == "CudaOutOfMemory"
    )
    assert await hits("swapped") == where(lambda r: r["event.action"] == "face.swapped")
    assert await hits("REVIEW") == where(lambda r: "note" in r["ffaudit.metadata"])
    assert (
        await hits("strasse")
        == await hits("STRASSE")
        == where(lambda r: "frames" in r.get("ffaudit.metadata", {}))
    )
    assert await hits("137") == where(
        lambda r: 137 in r.get("ffaudit.metadata", {}).get("frames", [])
    )
    assert await hits("failed", streams=("cam-2",)) == where(
        lambda r: r["event.action"].endswith("failed") and r["ffaudit.stream"] == "cam-2"
    )
    # Pseudonyms are never searchable: user.hash, session, target, a `_hash` metadata value,
    # nor the scrubber's pseudonym token in an error message.
    for pseudonym in (ACTORS[0], SESSIONS[0], TARGETS[0], PATH_HASH, PATH_HASH[:20]):
        assert await hits(pseudonym) == set(), pseudonym
    assert await hits("0123456789abcdef") == set()
    assert await hits("out of memory for user") == where(
        lambda r: r.get("error.type") == "CudaOutOfMemory"
    )
    # Nor is another tenant's text.
    assert await hits(f"{tenant}") == set()
    for empty in ("", "   ", "!?", "__"):
        with pytest.raises(InvalidInputError):
            EventQuery(tenant, text=empty)


def test_searchable_words_rule() -> None:
    record: dict[str, Any] = {
        "event.action": "frame.failed",
        "user.hash": ACTORS[0],
        "error.type": "Model_Load_Error",
        "error.message": "CUDA: Out-of-memory at 3.5 GiB for [user:0123456789abcdef]",
        "ffaudit.metadata": {
            "source_path_hash": PATH_HASH,
            "nested": {"ip_hash": "ab" * 32, "label": "Ünïcode", "n": 2.0, "flag": True},
            "odd_hash": "under a pseudonym key, whatever it looks like",
            "sha": "ab" * 32,
            "list": ["Déjà", 7, None, {"deep": "vu"}],
        },
    }
    # Fields in a fixed order, metadata keys sorted ("list" before "nested").
    assert searchable_words(record) == [
        *("frame", "failed", "model", "load", "error", "cuda", "out", "of", "memory", "at"),
        *("3", "5", "gib", "for", "user", "déjà", "7", "vu", "ünïcode", "2"),
    ]
    shuffled = {**record, "ffaudit.metadata": dict(reversed(record["ffaudit.metadata"].items()))}
    assert searchable_words(shuffled) == searchable_words(record)
    assert searchable_words({"event.action": "x" * 100}) == ["x" * 64]
    assert (
        len(searchable_words({"ffaudit.metadata": {str(i): f"w{i}" for i in range(5000)}})) == 1000
    )


# -- file hashes -----------------------------------------------------------------------------


async def test_file_hash_filter_finds_every_record_naming_the_file(
    store: EventStore, tenant: str
) -> None:
    # A source face used by two jobs, each job's target input and output, a model weight.
    src, in1, in2, out1, out2, model = (f"{n:x}" * 64 for n in range(10, 16))
    at = START + timedelta(days=1)

    def stored(seq: int, tenant: str = tenant, **fields: Any) -> StoredEvent:
        return _stored(tenant, "cam-7", seq, at + timedelta(seconds=seq), fields)

    def meta(**values: Any) -> dict[str, Any]:
        return {"ffaudit.metadata": values}

    named = {
        # job 1, as the engine records it: the input on every record, the rest in metadata.
        "cam-7:1": stored(
            1,
            **{"file.hash.sha256": in1},
            **meta(input_sha256=in1, source_sha256=src, models=[{"sha256": model}]),
        ),
        "cam-7:2": stored(2, **{"file.hash.sha256": in1}, **meta(output_sha256=out1)),
        # input.erased names its file in metadata only.
        "cam-7:3": stored(3, **meta(input_sha256=in2)),
        # job 2: the same source, no source_sha256 on a plain job, another output.
        "cam-7:4": stored(4, **{"file.hash.sha256": in2}, **meta(source_sha256=src)),
        "cam-7:5": stored(5, **meta(source_sha256=None, output_sha256=out2)),
        # Not a file digest as records write one: named nowhere a filter looks.
        "cam-7:6": stored(
            6,
            **{"file.hash.sha256": out1.upper()},
            **meta(
                output_sha256=out2[:63],
                input_sha256=[in1],
                other_sha256=in2,
                nested={"input_sha256": in1},
            ),
        ),
        "cam-7:7": stored(7, **meta(source_sha256=12345, output_sha256={"v": out1})),
    }
    # A record no index can take (a sequence that is no number): its files still count.
    broken = stored(8, **{"file.hash.sha256": out2, "event.sequence": "eight"})
    named["cam-7:8"] = replace(broken, verdict="broken", failure="modified")
    # The neighbour tenant names the same files: never ours.
    theirs = [stored(n, tenant=f"{tenant}-eu", **{"file.hash.sha256": in1}) for n in (1, 2)]
    await store.write([*named.values(), *theirs])

    async def hits(*digests: str, **filters: Any) -> list[str]:
        query = EventQuery(tenant, file_hashes=digests, order="asc", **filters)
        return ids(await read_all(store, query, limit=2))

    assert await hits(in1) == ["cam-7:1", "cam-7:2"]
    assert await hits(in2) == ["cam-7:3", "cam-7:4"]
    assert await hits(src) == ["cam-7:1", "cam-7:4"]
    assert await hits(out1) == ["cam-7:2"]
    assert await hits(out2) == ["cam-7:5", "cam-7:8"]
    assert await hits(model) == []  # a model's hash is no input or output file
    assert await hits("99" * 32) == []
    # Values are alternatives; a record naming two of them comes once.
    assert await hits(in1, src, out1) == ["cam-7:1", "cam-7:2", "cam-7:4"]
    assert await hits(in2, out2, in2) == ["cam-7:3", "cam-7:4", "cam-7:5", "cam-7:8"]
    # As many values as a query takes.
    many = (*(f"{n:064x}" for n in range(999)), out1)
    assert await hits(*many) == ["cam-7:2"]
    # With the other filters: all must hold.
    assert await hits(src, in2, verdicts=("ok",), since=at + timedelta(seconds=4)) == ["cam-7:4"]
    assert await hits(out2, verdicts=("broken",)) == ["cam-7:8"]
    assert await hits(in1, text="nothing") == []
    # Counted as listed.
    query = EventQuery(tenant, file_hashes=(in2, src))
    assert await store.stats(query, by="stream") == {"cam-7": 3}
    assert await store.count_by(query, field="stream") == {"cam-7": 3}
    # The records read back exactly as written (the stores' derived values stay theirs).
    found = await read_all(store, EventQuery(tenant, file_hashes=(in1, out2)), limit=10)
    assert sorted(found, key=lambda e: e.doc_id) == [
        named[i] for i in ("cam-7:1", "cam-7:2", "cam-7:5", "cam-7:8")
    ]


def test_file_hashes_of_a_record() -> None:
    a, b, c = "ab" * 32, "cd" * 32, "ef" * 32
    record: dict[str, Any] = {
        "file.hash.sha256": b,
        "ffaudit.metadata": {"output_sha256": c, "input_sha256": b, "source_sha256": a},
    }
    assert file_hashes_of(record) == [a, b, c]  # distinct, sorted
    assert file_hashes_of({}) == []
    assert file_hashes_of({"file.hash.sha256": 7, "ffaudit.metadata": [a]}) == []
    assert file_hashes_of({"file.hash.sha256": [a], "ffaudit.metadata": {"input_sha256": {}}}) == []
    assert file_hashes_of({"ffaudit.metadata": {"source_sha256": a.upper()}}) == []


# -- validation ------------------------------------------------------------------------------


async def test_invalid_queries_are_refused(store: EventStore, tenant: str) -> None:
    for bad in (0, -5):
        with pytest.raises(InvalidInputError):
            await store.search(EventQuery(tenant), limit=bad)
    invalid: list[dict[str, Any]] = [
        {"actions": "job.failed"},  # a string, not a tuple
        {"actor_hashes": [ACTORS[0]]},
        {"streams": (1,)},
        {"since": datetime(2026, 11, 21)},  # naive
        {"until": "2026-11-21"},
        {"order": "sideways"},
        {"job_ids": tuple(f"j{i}" for i in range(1001))},
        {"text": " ".join(f"w{i}" for i in range(33))},
        {"file_hashes": INPUTS[0]},  # a string, not a tuple
        {"file_hashes": (INPUTS[0].upper(),)},
        {"file_hashes": (INPUTS[0][:63],)},
        {"file_hashes": (INPUTS[0] + "0",)},
        {"file_hashes": ("g" * 64,)},
        {"file_hashes": (f"{INPUTS[0]}\n",)},
        {"file_hashes": tuple(f"{i:064x}" for i in range(1001))},
    ]
    for fields in invalid:
        with pytest.raises(InvalidInputError):
            EventQuery(tenant, **fields)
    # An empty range is no error, just nothing.
    empty = EventQuery(tenant, since=START, until=START)
    assert (await store.search(empty, limit=5)).events == []


# -- Elasticsearch: documents stored before the query fields --------------------------------


async def test_es_backfill_of_documents_from_before_the_query_fields(
    elasticsearch_url: str, fresh_es_prefix: str, tenant: str
) -> None:
    client = AsyncElasticsearch(elasticsearch_url)
    store = ElasticEventStore(elasticsearch_url, prefix=fresh_es_prefix)
    try:
        # An index as the first release made it: none of the query fields in mapping or
        # documents. One of its records is an unindexed one.
        events = dataset(tenant)[:40]
        events[5] = replace(
            events[5], record={**events[5].record, "event.sequence": "six"}, verdict="broken"
        )
        old_mappings = orjson.loads(orjson.dumps(MAPPINGS))
        ingest_fields = old_mappings["properties"]["ffaudit"]["properties"]["ingest"]
        releases = {
            1: ("time_us", "search_words"),  # the second release's fields
            2: ("file_hashes", "query_fields"),  # the third's
        }
        current = MAPPINGS["properties"]["ffaudit"]["properties"]["ingest"]["properties"]
        for field in (*releases[1], *releases[2]):
            del ingest_fields["properties"][field]
        index = store.index_for(tenant, events[0].timestamp)
        await client.indices.create(index=index, mappings=old_mappings)
        for n, event in enumerate(events):
            if n == 30:
                # The second release mapped its fields, and wrote them from then on.
                second = {field: current[field] for field in releases[1]}
                properties = {"ffaudit": {"properties": {"ingest": {"properties": second}}}}
                await client.indices.put_mapping(index=index, properties=properties)
            doc = to_document(event, indexed=event is not events[5])
            # The first release wrote none of the fields nor, beside an unindexed record, the
            # copies of its query fields; the second wrote no file hashes.
            new = {INGEST + f for f in (*releases[1], *releases[2])}
            if n >= 30:
                new -= {INGEST + f for f in releases[1]}
            legacy = {
                k: v
                for k, v in doc.items()
                if k not in new and (k.startswith(INGEST) or event is not events[5])
            }
            await client.index(index=index, id=event.doc_id, document=legacy)
        # Written after the upgrade, into the same old index: it gets the new fields mapped.
        fresh = _stored(
            tenant,
            "cam-9",
            1,
            events[0].timestamp + timedelta(seconds=1),
            {"file.hash.sha256": INPUTS[1]},
        )
        await store.write([fresh])
        mapping = await client.indices.get_mapping(index=index)
        ingest = mapping[index]["mappings"]["properties"]["ffaudit"]["properties"]["ingest"]
        assert ingest["properties"]["time_us"]["type"] == "long"
        assert ingest["properties"]["file_hashes"]["type"] == "keyword"
        everything = [*events, fresh]
        query = EventQuery(tenant, order="asc")
        before = await read_all(store, query, limit=10)
        assert ids(before)[0] == fresh.doc_id  # the first release's wait for the backfill, last
        assert sorted(ids(before)) == sorted(ids(everything))
        # Until the backfill, only records written since the upgrade are found by file.
        by_file = EventQuery(tenant, file_hashes=(INPUTS[1],))
        assert ids(await read_all(store, by_file, limit=10)) == [fresh.doc_id]
        assert len(expected(everything, by_file)) > 10

        assert await store.backfill(batch=7) == len(events)
        assert await store.backfill() == 0
        for q in (
            query,
            EventQuery(tenant, since=events[10].timestamp),
            EventQuery(tenant, text="timed"),
            EventQuery(tenant, actions=(events[5].record["event.action"],)),
            by_file,
            EventQuery(tenant, file_hashes=(SOURCE, OUTPUTS[0])),
        ):
            assert ids(await read_all(store, q, limit=10)) == ids(expected(everything, q))
        assert await store.get(tenant, events[5].doc_id) == events[5]
        assert await store.get(tenant, events[6].doc_id) == events[6]
        assert await store.get(tenant, events[35].doc_id) == events[35]
    finally:
        await client.close()
        await store.close()


# -- SQL: migrations 0003 and 0014 ----------------------------------------------------------


def _migrate_with_rows(url: str, tenant: str) -> list[StoredEvent]:
    """Rows stored at revision 0002 (no search_text, no file_hashes), then the upgrade to head."""
    command.downgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    events = dataset(tenant)[:60]
    try:
        assert "search_text" not in {c["name"] for c in inspect(engine).get_columns("events")}
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO events (tenant, doc_id, stream, sequence, event_hash, timestamp,"
                    " action, outcome, user_hash, trace_id, verdict, failure, received_at, record)"
                    " VALUES (:tenant, :doc_id, :stream, :sequence, :event_hash, :timestamp,"
                    " :action, :outcome, :user_hash, :trace_id, :verdict, :failure,"
                    " :received_at, :record)"
                ),
                [
                    {
                        "tenant": e.tenant,
                        "doc_id": e.doc_id,
                        "stream": e.stream,
                        "sequence": e.sequence,
                        "event_hash": e.event_hash,
                        # As the UTC column type writes it on either database.
                        "timestamp": e.timestamp.replace(tzinfo=None)
                        if url.startswith("sqlite")
                        else e.timestamp,
                        "action": e.record["event.action"],
                        "outcome": e.record["event.outcome"],
                        "user_hash": e.record.get("user.hash"),
                        "trace_id": e.record.get("trace.id"),
                        "verdict": e.verdict,
                        "failure": e.failure,
                        "received_at": e.received_at.replace(tzinfo=None)
                        if url.startswith("sqlite")
                        else e.received_at,
                        "record": canonicalize(e.record).decode(),
                    }
                    for e in events
                ],
            )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT doc_id, search_text, file_hashes FROM events WHERE tenant = :t"),
                {"t": tenant},
            ).all()
        assert {doc_id: words for doc_id, words, _ in rows} == {
            e.doc_id: "".join(" " + w for w in searchable_words(e.record)) for e in events
        }
        assert {doc_id: digests for doc_id, _, digests in rows} == {
            e.doc_id: " ".join(file_hashes_of(e.record)) or None for e in events
        }
        assert any(" " in digests for _, _, digests in rows if digests)
    finally:
        engine.dispose()
    return events


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_migrations_0003_and_0014_backfill_search_text_and_file_hashes(
    database: str, tmp_path: Any, postgres_server: str, tenant: str
) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
        upgrade(url)
        await _check_backfill(url, tenant)
    else:
        with postgres_database(postgres_server) as url:
            await _check_backfill(url, tenant)


async def _check_backfill(url: str, tenant: str) -> None:
    events = _migrate_with_rows(url, tenant)
    store = SqlEventStore(url)
    try:
        for q in (
            EventQuery(tenant, text="timed"),
            EventQuery(tenant, text="inswapper", order="asc"),
            EventQuery(tenant, actions=("job.failed",)),
            EventQuery(tenant, file_hashes=(INPUTS[0],)),
            EventQuery(tenant, file_hashes=(SOURCE, OUTPUTS[1]), order="asc"),
        ):
            assert await read_all(store, q, limit=7) == expected(events, q)
            assert expected(events, q)
    finally:
        await store.close()
