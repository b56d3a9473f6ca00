"""`QueryService.verify_stream` on worker processes (audit.query.parallel_verify) returns
what the sequential pass returns: the same failures in the same order naming the same
stored records, the same evidence, verdicts, counts and head, over generated stored
streams with tampering (edits, re-hashes, forgeries, deletions, forks, duplicates, records
filed under another sequence, another stream or tenant, records kept aside at ingest,
damaged signatures, records after the close), from the start and incrementally."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from audit.db.session import make_engine, session_factory, upgrade
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from audit.integrity.verify import ChainVerifier, PurgedRange
from audit.query.keyrings import TenantKeyrings
from audit.query.parallel_verify import continue_from, verify_parallel
from audit.query.service import QueryService, StreamVerification
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore, StoredEvent
from audit.store.sql import SqlEventStore
from audit.streams.repository import StreamRepository
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from tests.integrity.conftest import T0, load, rehash, sample_event
from tests.integrity.test_parallel_verify import KEYRING, LINE_OPS, OPS, SIGNER, tamper

TENANT = "acme"
RECEIVED = datetime(2026, 12, 1, tzinfo=UTC)
# Operations of the store's own: a record filed under another sequence than its own, one
# kept aside at ingest (verdict rejected), one claiming another stream.
STORE_OPS = ("misfile", "reject", "restream")
RECORD_OPS = tuple(op for op in OPS if op not in LINE_OPS) + STORE_OPS
VERDICTS = ("ok", "ok", "ok", "broken", "pending")


@dataclass(slots=True)
class Env:
    store: EventStore
    streams: StreamService
    sessions: sessionmaker[Session]
    keyrings: Path

    def service(self) -> QueryService:
        service = QueryService(self.store, TenantKeyrings(self.keyrings), self.streams)
        service.verify_parallel_from = 1  # every stream of these tests on workers
        return service


@pytest.fixture(scope="module")
def control_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('pverify') / 'ffaudit.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="module")
def keyrings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keyrings")


@pytest.fixture
async def sql_env(control_url: str, keyrings: Path) -> AsyncIterator[Env]:
    store = SqlEventStore(control_url, page_size=97)
    sessions = session_factory(make_engine(control_url))
    yield Env(store, StreamService(sessions), sessions, keyrings)
    await store.close()


def seal(stream: str, events: int, every: int) -> list[bytes]:
    sealer = Sealer(
        ChainWriter(stream, TENANT, SIGNER, policy=CheckpointPolicy(every, None)),
        Pseudonymizer(KEYRING, TENANT),
    )
    records = []
    for i in range(events):
        records += sealer.seal(sample_event(i))
    records += sealer.close(T0 + timedelta(hours=1))
    return [r.line for r in records]


def stored_events(
    stream: str, lines: list[bytes], ops: list[tuple[str, int, int]], seed: int
) -> list[StoredEvent]:
    """The tampered lines as the store would hold them, with the store's own tampering."""
    records: list[dict[str, Any]] = [load(line) for line in lines]
    if not records:
        return []
    sequences = [r["event.sequence"] for r in records]
    rejected: set[int] = set()
    for op, pos, amount in ops:
        i = pos % len(records)
        if op == "misfile":
            sequences[i] = max(1, sequences[i] + (amount % 5) - 2)
        elif op == "reject":
            rejected.add(i)
        elif op == "restream":
            records[i] = rehash({**records[i], "ffaudit.stream": f"{stream}-other"})
    rng = random.Random(seed)
    taken: set[str] = set()
    events = []
    for i, (record, sequence) in enumerate(zip(records, sequences, strict=True)):
        doc_id = f"{stream}:{sequence}"
        n = 0
        while doc_id in taken:  # a fork or a copy: stored beside the record it rivals
            n += 1
            doc_id = f"{stream}:{sequence}:{str(record.get('event.hash'))[:16]}{n}"
        taken.add(doc_id)
        event_hash = record.get("event.hash")
        events.append(
            StoredEvent(
                doc_id=doc_id,
                tenant=TENANT,
                stream=stream,
                sequence=sequence,
                event_hash=event_hash if isinstance(event_hash, str) else "0" * 64,
                timestamp=T0 + timedelta(seconds=i),
                record=record,
                verdict="rejected" if i in rejected else rng.choice(VERDICTS),
                failure="modified" if i in rejected else None,
                received_at=RECEIVED,
            )
        )
    return events


async def put_stream(env: Env, stream: str, last_line: bytes, events: list[StoredEvent]) -> None:
    """Register the stream, its accepted head the sealed stream's last record, and store
    `events`."""
    env.streams.register(
        StreamRegistration(
            stream=stream, tenant=TENANT, public_key_pem=SIGNER.verifier.pem().decode()
        )
    )
    last = load(last_line)
    with env.sessions.begin() as session:
        repo = StreamRepository(session)
        head = repo.get_head(TENANT, stream)
        assert head is not None
        assert repo.advance_head(
            TENANT,
            stream,
            expected_sequence=head.sequence,
            expected_hash=head.hash,
            sequence=last["event.sequence"],
            hash_=last["event.hash"],
            signed_through=0,
            last_checkpoint=0,
            closed=False,
        )
    if events:
        await env.store.write(events)
    await env.store.refresh()


async def both(
    service: QueryService,
    stream: str,
    after: tuple[int, str] | None = None,
    through_head: bool = False,
) -> tuple[StreamVerification, StreamVerification]:
    sequential = await service.verify_stream(
        TENANT, stream, jobs=1, after=after, through_head=through_head
    )
    parallel = await service.verify_stream(
        TENANT, stream, jobs=2, after=after, through_head=through_head
    )
    return sequential, parallel


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(RECORD_OPS), st.integers(0, 10_000), st.integers(0, 40), st.booleans()
    ),
    max_size=8,
)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=ops_strategy,
    events=st.integers(1, 700),
    every=st.integers(3, 90),
    seed=st.integers(0, 2**16),
    incremental=st.one_of(st.none(), st.integers(0, 10_000)),
    through_head=st.booleans(),
)
async def test_workers_find_what_the_sequential_pass_finds(
    sql_env: Env,
    ops: list[tuple[str, int, int, bool]],
    events: int,
    every: int,
    seed: int,
    incremental: int | None,
    through_head: bool,
) -> None:
    stream = f"cam-{uuid.uuid4().hex[:8]}"
    lines = seal(stream, events, every)
    head = lines[-1]
    for op, pos, amount, _ in ops:
        if op not in STORE_OPS:
            tamper(lines, op, pos, amount)
    store_ops = [(op, pos, amount) for op, pos, amount, _ in ops if op in STORE_OPS]
    stored = stored_events(stream, lines, store_ops, seed)
    await put_stream(sql_env, stream, head, stored)
    after = None
    if incremental is not None and stored:
        mark = stored[incremental % len(stored)]
        after = (mark.sequence, mark.event_hash)
    sequential, parallel = await both(sql_env.service(), stream, after, through_head)
    assert parallel == sequential
    if after is None and not through_head and any(e.verdict != "rejected" for e in stored):
        # The workers did read it (no fallback to the sequential pass).
        key = sql_env.streams.verifier(TENANT, stream)
        run = await verify_parallel(
            sql_env.store, key, TENANT, stream, start=1, end=None, seed=None, jobs=2, min_records=1
        )
        assert run is not None
        assert run.records == sequential.records


@pytest.fixture
async def pg_env(postgres_url: str, control_url: str, keyrings: Path) -> AsyncIterator[Env]:
    store = SqlEventStore(postgres_url, page_size=97)
    sessions = session_factory(make_engine(control_url))
    yield Env(store, StreamService(sessions), sessions, keyrings)
    await store.close()


async def test_an_intact_stream_and_a_tampered_one_on_every_range(sql_env: Env) -> None:
    await intact_and_tampered(sql_env)


async def test_ranges_of_postgresql(pg_env: Env) -> None:
    await intact_and_tampered(pg_env)


async def intact_and_tampered(sql_env: Env) -> None:
    """Worker ranges are used (not the sequential fallback), and a failure near each range
    boundary comes back where the sequential pass puts it."""
    stream = f"cam-{uuid.uuid4().hex[:8]}"
    lines = seal(stream, 3000, 50)
    stored = stored_events(stream, lines, [], 1)
    await put_stream(sql_env, stream, lines[-1], stored)
    service = sql_env.service()
    key = sql_env.streams.verifier(TENANT, stream)
    run = await verify_parallel(
        sql_env.store, key, TENANT, stream, start=1, end=None, seed=None, jobs=2, min_records=1
    )
    assert run is not None
    assert run.records == len(lines)
    assert not run.failures
    sequential, parallel = await both(service, stream)
    assert parallel == sequential
    assert sequential.matches_head
    assert not sequential.failures
    # Progress comes as each range is joined: rising, ending at the whole stream.
    seen: list[int] = []

    async def progress(records: int) -> None:
        seen.append(records)

    await service.verify_stream(TENANT, stream, jobs=2, on_progress=progress)
    assert len(seen) > 1
    assert seen == sorted(set(seen))
    assert seen[-1] == len(lines)

    tampered = f"cam-{uuid.uuid4().hex[:8]}"
    lines = seal(tampered, 3000, 50)
    # Ranges are about 3060 / 8 sequences wide: damage around each boundary.
    for at in range(370, len(lines) - 10, 383):
        tamper(lines, "relink", at, 0)
        tamper(lines, "delete", at + 3, 0)
        tamper(lines, "insert", at + 6, 1)
    stored = stored_events(tampered, lines, [("reject", 5, 0), ("misfile", 1000, 4)], 2)
    await put_stream(sql_env, tampered, lines[-1], stored)
    sequential, parallel = await both(service, tampered)
    assert parallel == sequential
    key = sql_env.streams.verifier(TENANT, tampered)
    run = await verify_parallel(
        sql_env.store, key, TENANT, tampered, start=1, end=None, seed=None, jobs=2, min_records=1
    )
    assert run is not None
    # A deletion leaves the chain waiting (records pending, the gap still open) across a
    # range boundary: the join re-reads the range, and still agrees.
    assert run.joined["reparsed"] > 0
    kinds = {f.kind.value for f in sequential.failures}
    assert {"modified", "gap", "inserted"} <= kinds
    assert all(f.record_id for f in sequential.failures if f.line is not None)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(RECORD_OPS[:-3]), st.integers(0, 1000), st.integers(0, 20)),
        max_size=5,
    ),
    mark=st.integers(0, 1000),
)
def test_continuing_from_a_verified_point_is_jumping_it(
    ops: list[tuple[str, int, int]], mark: int
) -> None:
    """`continue_from` (incremental verification, both paths) leaves the verifier where
    jumping the verified prefix as a purged range did."""
    lines = BASE_LINES[:]
    for op, pos, amount in ops:
        tamper(lines, op, pos, amount)
    records = [load(line) for line in lines]
    at = records[mark % len(records)]
    after = (at["event.sequence"], at["event.hash"])
    rest = sorted(
        (r for r in records if r["event.sequence"] > after[0]),
        key=lambda r: r["event.sequence"],
    )
    jumped = ChainVerifier(SIGNER.verifier)
    jumped.skip_purged(TENANT, "base", [PurgedRange(1, after[0], "0" * 64, after[1])])
    seeded = ChainVerifier(SIGNER.verifier)
    continue_from(seeded, TENANT, "base", after)
    found = []
    for verifier in (jumped, seeded):
        failures = [f for n, r in enumerate(rest, 1) for f in verifier.feed_record(n, r)]
        found.append(failures + verifier.finish())
    assert found[0] == found[1]
    a, b = jumped.streams[TENANT, "base"], seeded.streams[TENANT, "base"]
    assert (a.expected, a.head_hash, a.signed_through, a.records, a.closed) == (
        b.expected,
        b.head_hash,
        b.signed_through,
        b.records,
        b.closed,
    )


BASE_LINES = seal("base", 60, 7)


# -- Elasticsearch ---------------------------------------------------------------------------


@pytest.fixture
async def es_env(elasticsearch_url: str, control_url: str, keyrings: Path) -> AsyncIterator[Env]:
    prefix = f"ffaudit-pverify-{uuid.uuid4().hex[:8]}"
    store = ElasticEventStore(elasticsearch_url, prefix=prefix, page_size=113)
    sessions = session_factory(make_engine(control_url))
    try:
        yield Env(store, StreamService(sessions), sessions, keyrings)
    finally:
        names = await store.client.options(ignore_status=404).indices.get(index=f"{prefix}-*")
        for name in names.body if isinstance(names.body, dict) else {}:
            await store.client.indices.delete(index=name)
        await store.close()


async def test_elasticsearch_point_in_time_ranges_verify_as_the_scan_does(es_env: Env) -> None:
    stream = f"cam-{uuid.uuid4().hex[:8]}"
    lines = seal(stream, 2500, 40)
    for op, pos, amount in (
        ("relink", 400, 0),
        ("delete", 900, 9),
        ("insert", 1500, 1),
        ("duplicate", 1900, 2),
        ("damage", 7, 3),
        ("append", 0, 2),
    ):
        tamper(lines, op, pos, amount)
    stored = stored_events(stream, lines, [("reject", 321, 0), ("misfile", 2222, 4)], 3)
    await put_stream(es_env, stream, lines[-1], stored)
    service = es_env.service()
    sequential, parallel = await both(service, stream)
    assert parallel == sequential
    key = es_env.streams.verifier(TENANT, stream)
    run = await verify_parallel(
        es_env.store, key, TENANT, stream, start=1, end=None, seed=None, jobs=2, min_records=1
    )
    assert run is not None  # read by workers, not the sequential fallback
    chain = sequential.failures[: len(sequential.failures) - len(sequential.evidence)]
    assert (run.records, run.failures) == (sequential.records, chain)
    assert {"modified", "gap", "inserted", "duplicate"} <= {
        f.kind.value for f in sequential.failures
    }
    # Every range read the one point in time; it is closed when the verification ends.
    snapshot = await es_env.store.snapshot(TENANT, stream, parts=8)
    assert sum(r.chained for r in snapshot.ranges) == sequential.records
    await es_env.store.release(snapshot)
    await es_env.store.release(snapshot)  # an expired or closed one is no error


def test_the_records_read_back_as_written() -> None:
    """The generator's own sanity: a stored stream without tampering is its sealed lines."""
    lines = seal("plain", 5, 2)
    stored = stored_events("plain", lines, [], 0)
    assert [orjson.loads(line) for line in lines] == [e.record for e in stored]
    assert [e.sequence for e in stored] == list(range(1, len(lines) + 1))


async def test_a_sqlite_snapshot(sql_env: Env) -> None:
    await snapshot_covers_the_range_and_counts_the_chain(sql_env)


async def test_a_postgresql_snapshot(pg_env: Env) -> None:
    await snapshot_covers_the_range_and_counts_the_chain(pg_env)


async def test_an_elasticsearch_snapshot(es_env: Env) -> None:
    await snapshot_covers_the_range_and_counts_the_chain(es_env)


async def snapshot_covers_the_range_and_counts_the_chain(env: Env) -> None:
    stream = f"cam-{uuid.uuid4().hex[:8]}"
    lines = seal(stream, 40, 10)
    stored = stored_events(stream, lines, [("reject", 3, 0), ("reject", 30, 0)], 4)
    await put_stream(env, stream, lines[-1], stored)
    snapshot = await env.store.snapshot(TENANT, stream, 2, 40, parts=3)
    try:
        assert snapshot.reader is not None
        assert [(r.first, r.last) for r in snapshot.ranges] == [(2, 14), (15, 27), (28, 40)]
        assert [r.chained for r in snapshot.ranges] == [12, 13, 12]  # 3 and 30 kept aside
        read = [e.sequence async for e in snapshot.reader.scan(15, 27)]
        assert read == list(range(15, 28))
    finally:
        await env.store.release(snapshot)
    empty = await env.store.snapshot(TENANT, "no-such-stream", parts=4)
    assert empty.ranges == ()
    await env.store.release(empty)


async def test_concurrent_verifications_share_one_pool(
    sql_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller repeating POST /v1/verify must not make a replica start a pool of workers
    per call: while one verification has workers, the others run in the service's process,
    with the same result."""
    stream = f"cam-{uuid.uuid4().hex[:8]}"
    lines = seal(stream, 1500, 50)
    await put_stream(sql_env, stream, lines[-1], stored_events(stream, lines, [], 1))
    pools = 0

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal pools
        pools += 1
        return await verify_parallel(*args, **kwargs)

    monkeypatch.setattr("audit.query.service.verify_parallel", counting)
    service = sql_env.service()
    results = await asyncio.gather(
        *(service.verify_stream(TENANT, stream, jobs=2) for _ in range(4))
    )
    assert pools == 1
    assert all(r == results[0] for r in results)
    assert results[0].matches_head
    assert not results[0].failures
    await service.verify_stream(TENANT, stream, jobs=2)
    assert pools == 2  # free again once the first is done
