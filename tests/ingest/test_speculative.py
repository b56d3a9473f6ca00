"""A stream's next call plans on the head the call before planned, and writes while that one
commits. Its commit still waits for that commit, and any commit that does not go as planned
makes the calls that built on it plan again from the database."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from audit.errors import StoreUnavailableError
from audit.ingest.planner import Plan
from audit.ingest.service import IngestReport, IngestService
from audit.store.protocol import StoredEvent, WriteResult

from .conftest import Env, Factory, make_records

GATE_S = 20.0  # far longer than any step here takes: reaching it means the overlap is gone


def gate_first_commit(env: Env, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the service's first head commit (a worker thread) until the returned event."""
    opened = threading.Event()
    original = IngestService._commit
    calls = {"n": 0}

    def commit(self: IngestService, stream: str, tenant: str, plan: Plan) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            opened.wait(GATE_S)
        return original(self, stream, tenant, plan)

    monkeypatch.setattr(env.service, "_commit", commit.__get__(env.service))
    return opened


def watch_writes(env: Env, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The sequences of every store write, in the order the writes finished (writes of
    consecutive calls run side by side: either may finish first)."""
    writes: list[list[int]] = []
    original = env.store.write

    async def write(events: Any) -> WriteResult:
        result = await original(events)
        writes.append([e.sequence for e in events])
        return result

    monkeypatch.setattr(env.store, "write", write)
    return writes


async def two_calls_written(
    env: Env, records: list[dict[str, Any]], writes: list[list[int]]
) -> tuple[asyncio.Task[IngestReport], asyncio.Task[IngestReport]]:
    """Two calls of 20 records each under way, back from once both writes finished (or
    GATE_S passed: the caller's assertions then say what is missing)."""
    first = asyncio.create_task(env.service.ingest(records[:20], source="test"))
    second = asyncio.create_task(env.service.ingest(records[20:], source="test"))
    for _ in range(int(GATE_S / 0.01)):
        if len(writes) == 2:
            break
        await asyncio.sleep(0.01)
    return first, second


async def test_the_next_call_writes_while_the_one_before_commits(
    env_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 40, every=1000, close=False)
    opened = gate_first_commit(env, monkeypatch)
    writes = watch_writes(env, monkeypatch)
    # The first commit is held: the second call's records get written all the same.
    first, second = await two_calls_written(env, records, writes)
    assert sorted(w[0] for w in writes) == [1, 21]
    assert not first.done()  # neither acknowledged yet
    assert not second.done()
    assert env.streams.read("cam-1").head_sequence == 0  # nor any head committed
    opened.set()
    one, two = await asyncio.gather(first, second)
    assert one.counts() == {"ok": 20}
    assert two.counts() == {"ok": 20}
    head = env.streams.read("cam-1")
    assert (head.head_sequence, head.head_hash) == (40, records[-1]["event.hash"])


async def test_a_commit_lost_to_another_replica_makes_the_next_call_plan_again(
    env_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica A plans two calls, the second on the first's planned head, and holds the
    first's commit while replica B stores and commits the same first records. A's first
    commit then loses the compare-and-set, so the second call's plan was made on a head that
    never came from A: both plan again, and every record is stored and placed once."""
    a = env_factory()
    b = env_factory()
    a.register()
    records = make_records(a.signer, 40, every=1000, close=False)
    opened = gate_first_commit(a, monkeypatch)
    writes = watch_writes(a, monkeypatch)
    first, second = await two_calls_written(a, records, writes)
    assert len(writes) == 2
    other = await b.service.ingest(records[:20], source="test")
    assert set(other.counts()) == {"ok"} or set(other.counts()) == {"duplicate"}
    opened.set()
    one, two = await asyncio.gather(first, second)
    # A's copies of the first records were already the stored ones (B found them there).
    assert set(one.counts()) <= {"ok", "duplicate"}
    assert two.counts() == {"ok": 20}
    head = a.streams.read("cam-1")
    assert (head.head_sequence, head.head_hash) == (40, records[-1]["event.hash"])
    stored = [e async for e in a.store.scan("acme", "cam-1")]
    assert [e.sequence for e in stored] == list(range(1, 41))
    assert {e.verdict for e in stored} == {"ok"}


async def test_a_failed_write_leaves_the_next_calls_records_waiting_not_placed(
    env_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call's write fails (the store refuses it): nothing of it is acknowledged.
    The second call had planned its records right after the first's: they must not be
    placed after records that were never stored. They wait for their predecessors, which
    the sender then sends again."""
    env = env_factory()
    env.register()
    records = make_records(env.signer, 40, every=1000, close=False)
    original = env.store.write
    calls = {"n": 0}
    second_planned = asyncio.Event()

    async def write(events: list[StoredEvent]) -> WriteResult:
        calls["n"] += 1
        if calls["n"] == 1:
            await second_planned.wait()  # fail only once the next call has built on us
            raise StoreUnavailableError("elasticsearch refused the bulk write")
        second_planned.set()
        return await original(events)

    monkeypatch.setattr(env.store, "write", write)
    # The second call's first write signals; it is the second call's speculative write.
    first = env.service.ingest(records[:20], source="test")
    second = env.service.ingest(records[20:], source="test")
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(one, StoreUnavailableError)
    assert not isinstance(two, BaseException)
    assert two.counts() == {"pending": 20}
    assert env.streams.read("cam-1").head_sequence == 0
    again = await env.service.ingest(records[:20], source="test")
    assert again.counts() == {"ok": 20}
    head = env.streams.read("cam-1")
    assert (head.head_sequence, head.head_hash) == (40, records[-1]["event.hash"])
    stored = [e async for e in env.store.scan("acme", "cam-1")]
    assert [e.sequence for e in stored] == list(range(1, 41))
    assert {e.verdict for e in stored} == {"ok"}
