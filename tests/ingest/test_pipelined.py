"""Pipelined ingest: a connection's next message is verified while the last one is stored,
with the guarantees of one-at-a-time ingest (order, acks only after the head commit)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest

from audit.ingest.forward import ForwardEntry, ForwardServer, Peer
from audit.ingest.turns import Turns

from .conftest import Factory, make_records
from .forward_client import ForwardClient, event_time


async def test_turns_are_taken_in_call_order_whatever_each_awaits_first() -> None:
    turns = Turns()
    order: list[str] = []

    async def call(name: str, delay: float) -> None:
        turn = turns.take("stream")  # before the first await, as ingest does
        await asyncio.sleep(delay)  # the caller's own work before it needs the stream
        async with turn:
            order.append(f"in {name}")
            await asyncio.sleep(0.01)
            order.append(f"out {name}")

    await asyncio.gather(call("first", 0.05), call("second", 0.0), call("third", 0.02))
    assert order == ["in first", "out first", "in second", "out second", "in third", "out third"]
    assert turns._tails == {}  # nothing kept once the line is empty


async def test_a_cancelled_waiter_does_not_let_the_next_overtake_a_turn_at_work() -> None:
    turns = Turns()
    busy = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def worker() -> None:
        async with turns.take("s"):
            busy.set()
            await release.wait()
            order.append("worker done")

    first = asyncio.create_task(worker())
    await busy.wait()
    waiting = turns.take("s")
    third = turns.take("s")

    async def wait_then_work(turn: Any, name: str) -> None:
        async with turn:
            order.append(name)

    cancelled = asyncio.create_task(wait_then_work(waiting, "cancelled"))
    last = asyncio.create_task(wait_then_work(third, "third"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    assert order == []  # the worker still holds the stream: "third" must wait for it
    release.set()
    await asyncio.gather(first, last, return_exceptions=True)
    assert order == ["worker done", "third"]
    assert cancelled.cancelled()


async def test_a_later_call_does_not_overtake_an_earlier_one_that_awaits_longer(
    env_factory: Factory,
) -> None:
    """The first call carries a malformed record: quarantining it is an await of its own
    before the call reaches the stream. With a plain lock the second call got the stream
    first and its records waited as pending behind a gap; in turn order they are placed."""
    env = env_factory()
    env.register()
    records = make_records(env.signer, 12)
    first = env.service.ingest([*records[:6], {"not": "a record"}], source="test")
    second = env.service.ingest(records[6:], source="test")
    one, two = await asyncio.gather(first, second)
    assert one.counts() == {"ok": 6, "quarantined": 1}
    assert two.counts() == {"ok": len(records) - 6}
    assert env.streams.read("cam-1").head_sequence == len(records)


@pytest.mark.parametrize("depth", [1, 4])
async def test_a_pipelining_sender_gets_every_record_placed_once_and_acks_in_order(
    env_factory: Factory, depth: int
) -> None:
    env = env_factory(forward_port=0, forward_pipeline_depth=depth)
    env.register("cam-1")
    env.register("cam-2")
    ones = make_records(env.signer, 300, stream="cam-1", every=50)
    twos = make_records(env.signer, 300, stream="cam-2", every=50)

    async def handler(tag: str, entries: list[ForwardEntry], peer: Peer) -> None:
        report = await env.service.ingest([e.record for e in entries], source="forward")
        assert set(report.counts()) == {"ok"}

    server = ForwardServer(handler, env.settings)
    await server.start()
    client = await ForwardClient.connect(server.port)
    acked: list[str] = []
    starts = range(0, max(len(ones), len(twos)), 20)
    try:
        outstanding: deque[str] = deque()
        for i in starts:
            # Each message holds both streams: they progress side by side within a call.
            chunk = [*ones[i : i + 20], *twos[i : i + 20]]
            if len(outstanding) >= 8:
                acked.append(await client.read_ack(timeout=60))
                assert acked[-1] == outstanding.popleft()
            entries = [(event_time(1), r) for r in chunk]
            await client.send_packed("ffaudit", entries, chunk=f"c{i}")
            outstanding.append(f"c{i}")
        while outstanding:
            acked.append(await client.read_ack(timeout=60))
            assert acked[-1] == outstanding.popleft()
    finally:
        await client.close()
        await server.stop()
    assert acked == [f"c{i}" for i in starts]
    for stream, sent in (("cam-1", ones), ("cam-2", twos)):
        head = env.streams.read(stream)
        assert head.head_sequence == len(sent)
        assert head.head_hash == sent[-1]["event.hash"]
        stored = [e async for e in env.store.scan("acme", stream)]
        assert [e.sequence for e in stored] == list(range(1, len(sent) + 1))
        assert {e.verdict for e in stored} == {"ok"}
