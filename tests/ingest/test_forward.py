"""The Forward protocol server over real sockets: real clients, every mode, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fluent.sender import EventTime, FluentSender

from audit.errors import UsageError
from audit.ingest.forward import (
    CredentialLookup,
    ForwardEntry,
    ForwardRejected,
    ForwardServer,
    Peer,
    _charge,
    build_ssl_context,
)
from audit.settings import AuditSettings
from tests.ingest.forward_client import (
    Credentials,
    ForwardClient,
    HandshakeRefused,
    credentials_lookup,
    event_time,
    gzip_members,
    pack_entries,
    str32,
)

LOGGER = "audit.ingest.forward"
MAX_FRAME = 64 * 1024
MAX_EVENTS = 100
T = 1_700_000_000
SECRET = "PSEUDONYM-7f3a"  # stands for record contents that must never reach the logs


@dataclass
class Sink:
    """A handler that records every call; `gate` (when set) holds calls until released."""

    calls: list[tuple[str, list[ForwardEntry], Peer]] = field(default_factory=list)
    gate: Callable[[str], Awaitable[None]] | None = None

    async def __call__(self, tag: str, entries: list[ForwardEntry], peer: Peer) -> None:
        if self.gate is not None:
            await self.gate(tag)
        self.calls.append((tag, entries, peer))

    @property
    def entries(self) -> list[ForwardEntry]:
        return [e for _, es, _ in self.calls for e in es]

    async def wait_entries(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.entries) < n:
                await asyncio.sleep(0.01)


@dataclass
class HeldGate:
    """A Sink gate that holds every call until released, counting the most held at once."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    inside: int = 0
    peak: int = 0

    async def __call__(self, tag: str) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        await self.release.wait()
        self.inside -= 1


MakeServer = Callable[..., Awaitable[ForwardServer]]
Connect = Callable[..., Awaitable[ForwardClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """ForwardClient.connect, closing every client at teardown."""
    clients: list[ForwardClient] = []

    async def make(*args: Any, **kwargs: Any) -> ForwardClient:
        client = await ForwardClient.connect(*args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    servers: list[ForwardServer] = []

    async def make(
        handler: Any,
        *,
        ssl_context: ssl.SSLContext | None = None,
        credentials: CredentialLookup | None = None,
        **overrides: Any,
    ) -> ForwardServer:
        values: dict[str, Any] = {
            "forward_host": "127.0.0.1",
            "forward_port": 0,
            "forward_max_frame_bytes": MAX_FRAME,
            "forward_max_events_per_message": MAX_EVENTS,
            "forward_hostname": "ffaudit-test",
        }
        values.update(overrides)
        server = ForwardServer(
            handler, AuditSettings(**values), ssl_context=ssl_context, credentials=credentials
        )
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def rec(i: int, **extra: Any) -> dict[str, Any]:
    return {"action": "face_swapped", "seq": i, "actor": f"user-{i % 3}", **extra}


# -- real client ------------------------------------------------------------------------


async def test_fluent_logger_sender_delivers_records(make_server: MakeServer) -> None:
    sink = Sink()
    server = await make_server(sink)
    exact_ns = T * 1_000_000_000 + 123_456_789

    def send() -> None:
        plain = FluentSender("engine", host="127.0.0.1", port=server.port)
        assert plain.emit_with_time("swap", T, rec(0))
        assert plain.emit_with_time("swap", T + 1, rec(1, note="ünïcode"))
        plain.close()
        precise = FluentSender(
            "engine", host="127.0.0.1", port=server.port, nanosecond_precision=True
        )
        assert precise.emit_with_time("detect", T + 0.25, rec(2))
        assert precise.emit_with_time("detect", EventTime.from_unix_nano(exact_ns), rec(3))
        precise.close()

    await asyncio.to_thread(send)
    await sink.wait_entries(4)
    by_tag: dict[str, list[ForwardEntry]] = {}
    for tag, entries, peer in sink.calls:
        by_tag.setdefault(tag, []).extend(entries)
        assert peer.address.startswith("127.0.0.1:")
        assert peer.username is None
        assert not peer.tls
    assert set(by_tag) == {"engine.swap", "engine.detect"}
    swap, detect = by_tag["engine.swap"], by_tag["engine.detect"]
    assert [e.record for e in swap] == [rec(0), rec(1, note="ünïcode")]
    assert [e.time_ns for e in swap] == [T * 10**9, (T + 1) * 10**9]
    assert [e.time for e in swap] == [float(T), float(T + 1)]
    assert [e.record for e in detect] == [rec(2), rec(3)]
    assert [e.time_ns for e in detect] == [T * 10**9 + 250_000_000, exact_ns]
    assert detect[1].time == exact_ns / 10**9
    assert server.stats.entries == 4
    assert server.stats.acks == 0


# -- modes ------------------------------------------------------------------------------

MODES = ["message", "forward", "forward_size", "packed", "packed_str32", "gzip", "gzip_members"]


@pytest.mark.parametrize("mode", MODES)
async def test_every_mode_with_event_time_and_ack(
    make_server: MakeServer, connect: Connect, mode: str
) -> None:
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    entries = [
        (event_time(T, 999_999_999), rec(0)),
        (T + 5, rec(1)),
        (event_time(T + 7, 1), rec(2, nested={"list": [1, 2.5, None, True], "b": "x"})),
    ]
    if mode == "message":
        for i, (t, r) in enumerate(entries):
            await client.send_message("engine.swap", t, r, chunk=f"c{i}")
            assert await client.read_ack() == f"c{i}"
    elif mode.startswith("forward"):
        await client.send_forward("engine.swap", entries, chunk="c0", size=mode == "forward_size")
        assert await client.read_ack() == "c0"
    else:
        parts = {"gzip": 1, "gzip_members": 3}.get(mode, 0)
        await client.send_packed(
            "engine.swap", entries, chunk="c0", gzip_parts=parts, as_str32=mode == "packed_str32"
        )
        assert await client.read_ack() == "c0"
    await client.close()
    got = sink.entries
    assert [e.record for e in got] == [r for _, r in entries]
    assert [e.time_ns for e in got] == [
        T * 10**9 + 999_999_999,
        (T + 5) * 10**9,
        (T + 7) * 10**9 + 1,
    ]
    assert got[0].time == (T * 10**9 + 999_999_999) / 10**9
    assert {tag for tag, _, _ in sink.calls} == {"engine.swap"}
    assert server.stats.entries == 3
    assert server.stats.acks == (3 if mode == "message" else 1)


async def test_event_time_in_ext8_encoding(make_server: MakeServer, connect: Connect) -> None:
    """EventTime may arrive as ext 8 (0xc7) instead of fixext 8 (0xd7)."""
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    ext8 = b"\xc7\x08\x00" + struct.pack(">II", T, 42)
    frame = (
        b"\x94" + msgpack.packb("t") + ext8 + msgpack.packb(rec(0)) + msgpack.packb({"chunk": "x"})
    )
    await client.send_raw(frame)
    assert await client.read_ack() == "x"
    assert sink.entries[0].time_ns == T * 10**9 + 42


async def test_out_forward_style_frame(make_server: MakeServer, connect: Connect) -> None:
    """out_forward v1: str32 entries, option {size, compressed: text|gzip, chunk (base64)}."""
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    entries = [(event_time(T + i, i), rec(i)) for i in range(10)]
    chunk = "XyZ0bGx0cmVhbQ==\n"  # Base64.encode64 keeps its trailing newline
    for compressed, payload in (
        ("text", pack_entries(entries)),
        ("gzip", gzip_members(pack_entries(entries), 4)),
    ):
        option = {"size": 10, "compressed": compressed, "chunk": chunk}
        frame = b"\x93" + msgpack.packb("app.audit") + str32(payload) + msgpack.packb(option)
        await client.send_raw(frame)
        assert await client.read_ack() == chunk
    assert [e.record for e in sink.entries] == [r for _, r in entries] * 2


async def test_pipelined_frames_are_acked_in_order(
    make_server: MakeServer, connect: Connect
) -> None:
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    data = b"".join(msgpack.packb(["t", T, rec(i), {"chunk": f"c{i}"}]) for i in range(50))
    await client.send_raw(data)
    assert [await client.read_ack() for _ in range(50)] == [f"c{i}" for i in range(50)]
    assert [e.record["seq"] for e in sink.entries] == list(range(50))


async def test_heartbeat_frames_are_ignored(make_server: MakeServer, connect: Connect) -> None:
    """nil (TCP heartbeat) and out_forward's ["", []] deliver nothing and keep the connection."""
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    await client.send_raw(msgpack.packb(None) + msgpack.packb(["", []]))
    await client.send_forward("t", [], chunk="empty")
    assert await client.read_ack() == "empty"
    await client.send_message("t", T, rec(0), chunk="c")
    assert await client.read_ack() == "c"
    assert len(sink.calls) == 1
    assert server.stats.rejected_frames == {}


# -- acknowledgement semantics ----------------------------------------------------------


async def test_ack_only_after_handler_returned(make_server: MakeServer, connect: Connect) -> None:
    release = asyncio.Event()

    async def gate(tag: str) -> None:
        await release.wait()

    sink = Sink(gate=gate)
    server = await make_server(sink)
    client = await connect(server.port)
    await client.send_message("t", T, rec(0), chunk="c0")
    with pytest.raises(TimeoutError):
        await client.read_ack(timeout=0.3)
    assert sink.calls == []
    release.set()
    assert await client.read_ack() == "c0"
    assert len(sink.entries) == 1


async def test_handler_failure_means_no_ack_and_resend_succeeds(
    make_server: MakeServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    failures = [RuntimeError(f"store down {SECRET}")]

    async def gate(tag: str) -> None:
        if failures:
            raise failures.pop()

    sink = Sink(gate=gate)
    server = await make_server(sink)
    first = await connect(server.port)
    await first.send_forward("t", [(T, rec(0, secret=SECRET))], chunk="c0")
    with pytest.raises(EOFError):
        await first.receive()  # closed without an ack
    assert sink.calls == []
    second = await connect(server.port)
    await second.send_forward("t", [(T, rec(0, secret=SECRET))], chunk="c0")
    assert await second.read_ack() == "c0"
    assert len(sink.entries) == 1
    assert "handler failed (RuntimeError)" in caplog.text
    assert SECRET not in caplog.text
    assert server.stats.handler_failures == 1
    assert server.stats.acks == 1


async def test_handler_rejection_closes_with_logged_reason(
    make_server: MakeServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    async def gate(tag: str) -> None:
        raise ForwardRejected("stream not registered")

    server = await make_server(Sink(gate=gate))
    client = await connect(server.port)
    await client.send_message("t", T, rec(0), chunk="c0")
    with pytest.raises(EOFError):
        await client.receive()
    assert "handler_rejected (stream not registered)" in caplog.text
    assert server.stats.rejected_frames["handler_rejected"] == 1
    assert server.stats.acks == 0


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (what the server does first), so that a negative check after it
    cannot pass or fail on a slow machine just because nothing had happened yet."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def slow_gate(order: list[str], release: asyncio.Event) -> Callable[[str], Awaitable[None]]:
    """A Sink gate noting when each call starts and ends; the "slow" tag waits for `release`."""

    async def gate(tag: str) -> None:
        order.append(f"start {tag}")
        if tag == "slow":
            await release.wait()
        order.append(f"end {tag}")

    return gate


async def test_calls_overlap_per_connection_and_acks_keep_frame_order(
    make_server: MakeServer,
    connect: Connect,
) -> None:
    """A pipelining sender: its next message is handled while a slow one is still in the
    handler, but acknowledged only after it; another connection is never held up."""
    release = asyncio.Event()
    order: list[str] = []
    gate = slow_gate(order, release)
    sink = Sink(gate=gate)
    server = await make_server(sink)
    a = await connect(server.port)
    b = await connect(server.port)
    await a.send_message("slow", T, rec(0), chunk="a0")
    await a.send_message("after-slow", T, rec(1), chunk="a1")
    await b.send_message("other", T, rec(2), chunk="b0")
    assert await b.read_ack() == "b0"  # B is not held up by A's slow handler
    await sink.wait_entries(2)  # b0's and a1's: a1 went through while a0 is still held
    assert order.index("start slow") < order.index("end after-slow")
    assert "end slow" not in order
    with pytest.raises(TimeoutError):
        await a.receive(timeout=0.2)  # a1 is handled, but its ack waits for a0's
    release.set()
    assert [await a.read_ack(), await a.read_ack()] == ["a0", "a1"]


async def test_pipeline_depth_one_handles_a_connection_one_message_at_a_time(
    make_server: MakeServer,
    connect: Connect,
) -> None:
    release = asyncio.Event()
    order: list[str] = []
    gate = slow_gate(order, release)
    server = await make_server(Sink(gate=gate), forward_pipeline_depth=1)
    a = await connect(server.port)
    await a.send_message("slow", T, rec(0), chunk="a0")
    await a.send_message("after-slow", T, rec(1), chunk="a1")
    await until(lambda: bool(order))
    await asyncio.sleep(0.1)  # time for a second call to start, were it allowed to
    assert order == ["start slow"]
    release.set()
    assert [await a.read_ack(), await a.read_ack()] == ["a0", "a1"]
    assert order == ["start slow", "end slow", "start after-slow", "end after-slow"]


@pytest.mark.parametrize(
    ("budget", "padding", "most"),
    [
        pytest.param(64 * 1024 * 1024, 0, 4, id="depth"),
        # Each frame holds ~300 KiB, charged 1.2 MB decoded (and reserved for before its
        # decoding, as a frame that large is decoded in a thread): at most three fit in
        # the 4 MiB budget; the depth alone would allow four.
        pytest.param(4 * 1024 * 1024, 300 * 1024, 3, id="memory-budget"),
    ],
)
async def test_a_connection_holds_no_more_messages_than_its_depth_and_the_budget_allow(
    make_server: MakeServer, connect: Connect, budget: int, padding: int, most: int
) -> None:
    """A sender that never waits for acks cannot make the server hold more of its messages
    than the pipeline depth, nor more bytes than the server's memory budget."""
    gate = HeldGate()
    server = await make_server(
        Sink(gate=gate),
        forward_pipeline_depth=4,
        forward_max_buffered_bytes=budget,
        forward_max_frame_bytes=512 * 1024,
    )
    client = await connect(server.port)
    try:
        for i in range(10):
            await client.send_message("t", T, rec(i, pad="x" * padding), chunk=f"c{i}")
        await until(lambda: gate.peak >= (most if padding == 0 else 1))
        await asyncio.sleep(0.3)  # time for more calls to start, were they allowed to
        assert 1 <= gate.peak <= most
        if padding == 0:
            assert gate.peak == most  # the depth is what held the rest back
        assert server._held <= budget
    finally:
        gate.release.set()
    assert [await client.read_ack() for _ in range(10)] == [f"c{i}" for i in range(10)]
    assert gate.peak <= most


async def test_many_connections_of_empty_records_hold_no_more_than_the_memory_budget(
    make_server: MakeServer, connect: Connect
) -> None:
    """An attacker's many connections each pipeline messages of empty records (7 bytes on
    the wire, about 190 decoded): however many connections, the records the server holds
    decoded stay within its memory budget, and once memory is released every message is
    delivered and acknowledged, none lost."""
    budget, clients_n, messages = 1024 * 1024, 30, 6
    release = asyncio.Event()
    inside = peak = 0

    async def handler(tag: str, entries: list[ForwardEntry], peer: Peer) -> None:
        nonlocal inside, peak
        inside += len(entries)
        peak = max(peak, inside)
        await release.wait()
        inside -= len(entries)

    server = await make_server(handler, forward_pipeline_depth=4, forward_max_buffered_bytes=budget)
    clients = [await connect(server.port) for _ in range(clients_n)]
    empty: list[tuple[int, dict[str, Any]]] = [(T, {}) for _ in range(MAX_EVENTS)]
    for n, client in enumerate(clients):
        for i in range(messages):
            await client.send_forward("t", empty, chunk=f"c{n}-{i}")
    charge = _charge(len(msgpack.packb(["t", [[T, {}]] * MAX_EVENTS, {"chunk": "c0-0"}])), 100)
    try:
        await until(lambda: server._held + charge > budget)  # the budget is taken
        await asyncio.sleep(0.3)  # time for more deliveries to start, were they allowed to
        # Charged by frame bytes these messages were 1/70 of their memory: the depth
        # alone let 30 x 4 x 100 = 12,000 records into the handler.
        # Messages decoded and waiting for their connection's depth are charged too.
        assert MAX_EVENTS <= peak <= (budget // charge + 1) * MAX_EVENTS
        assert server._held <= budget + charge
    finally:
        release.set()
    for n, client in enumerate(clients):
        acks = [await client.read_ack() for _ in range(messages)]
        assert acks == [f"c{n}-{i}" for i in range(messages)]
    assert server.stats.entries == clients_n * messages * MAX_EVENTS
    assert server._held == 0


async def test_large_frames_decoded_in_threads_at_once_stay_within_the_memory_budget(
    make_server: MakeServer, connect: Connect
) -> None:
    """Frames large enough to be decoded in worker threads, arriving on many connections at
    once: each reserves its worst case before its thread starts, so the threads together
    cannot decode more than the budget holds, however many start in the same instant.
    A connection closed for want of memory resends on a new one, as a client does; every
    message ends acknowledged."""
    budget, clients_n, padding = 6 * 1024 * 1024, 8, 300 * 1024
    gate, held = HeldGate(), 0
    server = await make_server(
        Sink(gate=gate),
        forward_pipeline_depth=4,
        forward_max_buffered_bytes=budget,
        forward_max_frame_bytes=512 * 1024,
    )

    async def watch() -> None:
        nonlocal held
        while True:
            held = max(held, server._held)
            await asyncio.sleep(0)

    async def deliver(n: int) -> None:
        while True:  # until acknowledged, resending on a fresh connection if closed
            client = await connect(server.port)
            with contextlib.suppress(ConnectionError):
                await client.send_message("t", T, rec(n, pad="x" * padding), chunk=f"c{n}")
            with contextlib.suppress(EOFError, ConnectionError):
                assert await client.read_ack() == f"c{n}"
                return

    frame = len(msgpack.packb(["t", T, rec(0, pad="x" * padding), {"chunk": "c0"}]))
    fits = budget // _charge(frame, 1)  # decoded messages the budget holds
    watcher = asyncio.create_task(watch())
    senders = [asyncio.create_task(deliver(n)) for n in range(clients_n)]
    try:
        await until(lambda: gate.peak >= 1)
        await asyncio.sleep(0.5)  # time for more threads to start, were they allowed to
        assert 1 <= gate.peak <= fits
        # Besides decoded messages, each connection may hold one read of a frame it has
        # begun: the budget bounds the rest.
        assert held <= budget + clients_n * 256 * 1024
    except BaseException:
        for task in (*senders, watcher):
            task.cancel()
        raise
    finally:
        gate.release.set()
    async with asyncio.timeout(10):
        await asyncio.gather(*senders)
    watcher.cancel()
    assert gate.peak <= fits
    await until(lambda: server._held == 0)


async def test_a_failed_delivery_leaves_later_messages_unacknowledged(
    make_server: MakeServer,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sender resends from its oldest unacknowledged chunk: no ack may follow a gap."""
    release = asyncio.Event()

    async def gate(tag: str) -> None:
        if tag == "fails":
            await release.wait()
            raise RuntimeError("store down")

    sink = Sink(gate=gate)
    server = await make_server(sink)
    a = await connect(server.port)
    await a.send_message("ok", T, rec(0), chunk="a0")
    assert await a.read_ack() == "a0"
    await a.send_message("fails", T, rec(1), chunk="a1")
    await a.send_message("later", T, rec(2), chunk="a2")  # handled, stored by the sink
    for _ in range(100):
        if len(sink.entries) == 2:
            break
        await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(EOFError):
        await a.receive()  # closed: neither a1 nor a2 acknowledged
    assert server.stats.acks == 1
    assert "handler failed (RuntimeError)" in caplog.text


# -- handshake --------------------------------------------------------------------------

KEY = "shared-s3cret"


async def test_handshake_right_key(make_server: MakeServer, connect: Connect) -> None:
    sink = Sink()
    server = await make_server(sink, forward_shared_key=KEY)
    client = await connect(server.port, credentials=Credentials(KEY), server_name="ffaudit-test")
    await client.send_message("t", T, rec(0), chunk="c0")
    assert await client.read_ack() == "c0"
    assert sink.calls[0][2].username is None


async def test_helo_format(make_server: MakeServer, connect: Connect) -> None:
    server = await make_server(Sink(), forward_shared_key=KEY)
    client = await connect(server.port)
    helo = await client.receive()
    assert helo[0] == "HELO"
    assert set(helo[1]) == {"nonce", "auth", "keepalive"}
    assert isinstance(helo[1]["nonce"], bytes)
    assert len(helo[1]["nonce"]) == 16
    assert helo[1]["auth"] == ""
    assert helo[1]["keepalive"] is True
    other = await connect(server.port)
    assert (await other.receive())[1]["nonce"] != helo[1]["nonce"]


async def test_handshake_wrong_key(
    make_server: MakeServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    server = await make_server(sink, forward_shared_key=KEY)
    client = await connect(server.port)
    with pytest.raises(HandshakeRefused, match="shared_key mismatch"):
        await client.handshake(Credentials("wrong-key"))
    assert await client.closed_by_server()
    assert server.stats.handshake_failures == 1
    assert "shared_key mismatch" in caplog.text
    assert KEY not in caplog.text


async def test_data_before_ping_is_refused(make_server: MakeServer, connect: Connect) -> None:
    sink = Sink()
    server = await make_server(sink, forward_shared_key=KEY)
    client = await connect(server.port)
    assert (await client.receive())[0] == "HELO"
    await client.send_message("t", T, rec(0), chunk="c0")
    pong = await client.receive()
    assert pong[:3] == ["PONG", False, "invalid ping message"]
    with pytest.raises(EOFError):
        await client.receive()
    assert sink.calls == []
    assert server.stats.handshake_failures == 1


USERS = {"engine": "pa55word", "other": "x"}


async def test_user_auth_right_password(make_server: MakeServer, connect: Connect) -> None:
    sink = Sink()
    server = await make_server(sink, forward_shared_key=KEY, credentials=credentials_lookup(USERS))
    cred = Credentials(KEY, username="engine", password="pa55word")
    client = await connect(server.port, credentials=cred)
    await client.send_message("t", T, rec(0), chunk="c0")
    assert await client.read_ack() == "c0"
    assert sink.calls[0][2].username == "engine"


@pytest.mark.parametrize(("user", "password"), [("engine", "wrong"), ("nobody", "pa55word")])
async def test_user_auth_wrong_password(
    make_server: MakeServer, connect: Connect, user: str, password: str
) -> None:
    sink = Sink()
    server = await make_server(sink, forward_shared_key=KEY, credentials=credentials_lookup(USERS))
    client = await connect(server.port)
    with pytest.raises(HandshakeRefused, match="username/password mismatch"):
        await client.handshake(Credentials(KEY, username=user, password=password))
    assert await client.closed_by_server()
    assert sink.calls == []


# -- TLS --------------------------------------------------------------------------------


async def test_tls_with_handshake_and_ack(
    make_server: MakeServer, connect: Connect, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    sink = Sink()
    server = await make_server(
        sink, forward_tls_cert=cert, forward_tls_key=key, forward_shared_key=KEY
    )
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client = await connect(
        server.port,
        ssl_context=client_ctx,
        server_hostname="localhost",
        credentials=Credentials(KEY),
    )
    await client.send_packed("t", [(event_time(T, 5), rec(0))], chunk="c0", gzip_parts=2)
    assert await client.read_ack() == "c0"
    assert sink.calls[0][2].tls
    assert sink.entries[0].time_ns == T * 10**9 + 5
    await client.close()


def test_build_ssl_context(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    assert build_ssl_context(AuditSettings()) is None
    assert isinstance(
        build_ssl_context(AuditSettings(forward_tls_cert=cert, forward_tls_key=key)),
        ssl.SSLContext,
    )
    with pytest.raises(UsageError):
        build_ssl_context(AuditSettings(forward_tls_cert=cert))


# -- hostile input ----------------------------------------------------------------------


def _frame(*items: Any) -> bytes:
    return msgpack.packb(list(items))


def _bomb() -> bytes:
    payload = gzip.compress(b"\x00" * (10 * 1024 * 1024))
    assert len(payload) < MAX_FRAME
    return _frame("t", payload, {"compressed": "gzip"})


_VALID = _frame("t", T, rec(0, secret=SECRET), {"chunk": "z"})

HOSTILE: dict[str, tuple[bytes, str | None]] = {
    "reserved_byte": (b"\xc1", "malformed_msgpack"),
    "random_garbage": (random.Random(7).randbytes(4096), None),
    "not_an_array": (msgpack.packb({"tag": SECRET}), "unknown_mode"),
    "one_element": (_frame("t"), "unknown_mode"),
    "five_elements": (_frame("t", T, {}, {}, {}), "unknown_mode"),
    "deep_nesting": (b"\x91" * 5000, "malformed_msgpack"),
    "oversized_string": (_frame("t", T, {"a": SECRET * 20_000}), "frame_too_large"),
    "oversized_many_keys": (
        _frame("t", T, {f"k{i}": SECRET for i in range(20_000)}),
        "frame_too_large",
    ),
    "huge_array_header": (b"\xdd\x7f\xff\xff\xff", "frame_too_large"),
    "too_many_entries": (_frame("t", [[T, {}]] * (MAX_EVENTS + 1)), "too_many_entries"),
    "too_many_packed": (
        _frame("t", pack_entries([(T, {})] * (MAX_EVENTS + 1))),
        "too_many_entries",
    ),
    "list_record": (_frame("t", T, [SECRET]), "bad_record"),
    "nil_record": (_frame("t", T, None), "bad_record"),
    "int_key": (_frame("t", T, {1: SECRET}), "bad_record"),
    "nested_int_key": (_frame("t", T, {"a": {2: SECRET}}), "bad_record"),
    "invalid_utf8": (b"\x93\xa1t" + msgpack.packb(T) + b"\x81\xa1a\xa2\xff\xfe", "bad_record"),
    "ext_in_record": (_frame("t", T, {"a": msgpack.ExtType(3, b"x")}), "bad_record"),
    "bad_entry": (_frame("t", [[T, {}, 3]]), "bad_entry"),
    "int_tag": (_frame(1, T, {"a": SECRET}), "bad_tag"),
    "bin_tag": (_frame(b"t", T, {}), "bad_tag"),
    "empty_tag": (_frame("", T, {}), "bad_tag"),
    "float_time": (_frame("t", 1.5, {}), "bad_time"),
    "negative_time": (_frame("t", -1, {}), "bad_time"),
    "nanoseconds_overflow": (_frame("t", event_time(T, 10**9), {}), "bad_time"),
    "other_ext_time": (_frame("t", msgpack.ExtType(5, b"12345678"), {}), "bad_time"),
    "chunk_int": (_frame("t", T, {}, {"chunk": 5}), "bad_option"),
    "size_str": (_frame("t", [[T, {}]], {"size": "1"}), "bad_option"),
    "compressed_lz4": (_frame("t", pack_entries([(T, {})]), {"compressed": "lz4"}), "bad_option"),
    "option_list": (_frame("t", T, {}, ["chunk"]), "bad_option"),
    "gzip_in_message": (_frame("t", T, {}, {"compressed": "gzip"}), "bad_option"),
    "size_mismatch": (_frame("t", [[T, {}]], {"size": 5}), "size_mismatch"),
    "gzip_bomb": (_bomb(), "decompressed_too_large"),
    "not_gzip": (_frame("t", b"plain bytes", {"compressed": "gzip"}), "bad_gzip"),
    "truncated_gzip": (
        _frame("t", gzip.compress(pack_entries([(T, {})] * 5))[:-12], {"compressed": "gzip"}),
        "bad_gzip",
    ),
    "trailing_bytes_in_packed": (_frame("t", pack_entries([(T, {})]) + b"\x92"), "bad_entry"),
    "truncated_frame": (_VALID[: len(_VALID) // 2], "truncated_frame"),
}
KNOWN_REASONS = {r for _, r in HOSTILE.values() if r is not None}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_frame_closes_only_its_connection(
    make_server: MakeServer, connect: Connect, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    data, reason = HOSTILE[case]
    sink = Sink()
    server = await make_server(sink)
    good = await connect(server.port)
    await good.send_message("good", T, rec(-1), chunk="warmup")
    assert await good.read_ack() == "warmup"

    async def behave() -> None:
        for i in range(20):
            await good.send_message("good", T, rec(i), chunk=f"g{i}")
            assert await good.read_ack() == f"g{i}"
            await asyncio.sleep(0.005)

    async def attack() -> bool:
        bad = await connect(server.port)
        try:
            await bad.send_raw(data)
            bad.writer.write_eof()
        except ConnectionError:
            return True
        return await bad.closed_by_server()

    _, closed = await asyncio.gather(behave(), attack())
    assert closed
    rejected = dict(server.stats.rejected_frames)
    assert sum(rejected.values()) == 1, rejected
    got = next(iter(rejected))
    if reason is None:
        assert got in KNOWN_REASONS
    else:
        assert got == reason
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(f"closing: {got}" in line for line in lines), lines
    assert SECRET not in caplog.text
    assert {tag for tag, _, _ in sink.calls} == {"good"}
    assert [e.record["seq"] for e in sink.entries] == list(range(-1, 20))
    # The good connection still works after the attack ended.
    await good.send_message("good", T, rec(99), chunk="after")
    assert await good.read_ack() == "after"


async def test_idle_connection_is_closed(
    make_server: MakeServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = await make_server(Sink(), forward_idle_timeout_s=0.2)
    client = await connect(server.port)
    assert await client.closed_by_server(timeout=3.0)
    assert "idle" in caplog.text


# -- heartbeat and lifecycle ------------------------------------------------------------


async def test_udp_heartbeat_is_answered(make_server: MakeServer) -> None:
    server = await make_server(Sink())
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        for probe in (b"\x00", b""):
            await loop.sock_sendto(sock, probe, ("127.0.0.1", server.port))
            async with asyncio.timeout(5):
                reply, addr = await loop.sock_recvfrom(sock, 16)
            assert reply == b"\x00"
            assert addr[1] == server.port


async def test_stop_waits_for_in_flight_handler(make_server: MakeServer, connect: Connect) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def gate(tag: str) -> None:
        entered.set()
        await release.wait()
        finished.append(tag)

    server = await make_server(Sink(gate=gate))
    busy = await connect(server.port)
    idle = await connect(server.port)
    await busy.send_message("t", T, rec(0), chunk="c0")
    await asyncio.wait_for(entered.wait(), 5)
    stopping = asyncio.create_task(server.stop())
    assert await idle.closed_by_server()
    await asyncio.sleep(0.2)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert finished == ["t"]
    assert await busy.read_ack() == "c0"  # stored before the stop, so acknowledged
    with pytest.raises(ConnectionRefusedError):
        await ForwardClient.connect(server.port)


# -- forward protocol v1.5: entries with metadata (Fluent Bit's default) ---------------------


@pytest.mark.parametrize("mode", ["message", "forward", "packed", "gzip"])
async def test_entries_with_v1_5_metadata_are_accepted(
    make_server: MakeServer, connect: Connect, mode: str
) -> None:
    """Fluent Bit (retain_metadata_in_forward_mode) sends each entry as
    [[EventTime, metadata], record]; Fluentd's in_forward accepts it, and so must we. The
    metadata is the shipper's and is dropped; the record is delivered as sent."""
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    entries = [
        ([event_time(T, 5), {"otlp": {"severity": 9}}], rec(0)),
        ([event_time(T + 1, 6), {}], rec(1)),
    ]
    if mode == "message":
        for i, (t, r) in enumerate(entries):
            await client.send_message("bit", t, r, chunk=f"c{i}")
            assert await client.read_ack() == f"c{i}"
    elif mode == "forward":
        await client.send_forward("bit", entries, chunk="c0")
        assert await client.read_ack() == "c0"
    else:
        await client.send_packed("bit", entries, chunk="c0", gzip_parts=int(mode == "gzip"))
        assert await client.read_ack() == "c0"
    assert [e.record for e in sink.entries] == [rec(0), rec(1)]
    assert [e.time_ns for e in sink.entries] == [T * 10**9 + 5, (T + 1) * 10**9 + 6]


async def test_metadata_must_be_a_map(make_server: MakeServer, connect: Connect) -> None:
    sink = Sink()
    server = await make_server(sink)
    client = await connect(server.port)
    await client.send_forward("bit", [([event_time(T), "not-a-map"], rec(0))], chunk="c0")
    assert await client.closed_by_server()
    assert sink.calls == []


# -- resource limits: what a hostile peer can cost ---------------------------------------------


async def test_connections_over_the_per_peer_cap_are_refused(
    make_server: MakeServer, connect: Connect
) -> None:
    sink = Sink()
    server = await make_server(sink, forward_max_connections_per_peer=3)
    clients = [await connect(server.port) for _ in range(5)]
    closed = [await c.closed_by_server(timeout=0.5) for c in clients]
    assert closed == [False, False, False, True, True]
    assert server.stats.rejected_frames["too_many_connections_from_peer"] == 2
    # The admitted ones work; once one leaves, a new one is admitted.
    await clients[0].send_message("t", T, rec(0), chunk="c0")
    assert await clients[0].read_ack() == "c0"
    await clients[1].close()
    await asyncio.sleep(0.05)
    again = await connect(server.port)
    await again.send_message("t", T, rec(1), chunk="c1")
    assert await again.read_ack() == "c1"


async def test_the_global_connection_cap(make_server: MakeServer, connect: Connect) -> None:
    server = await make_server(Sink(), forward_max_connections=2)
    clients = [await connect(server.port) for _ in range(3)]
    assert [await c.closed_by_server(timeout=0.5) for c in clients] == [False, False, True]
    assert server.stats.rejected_frames["too_many_connections"] == 1


async def test_a_frame_trickled_byte_by_byte_is_cut_at_its_deadline(
    make_server: MakeServer, connect: Connect
) -> None:
    """Slowloris: every byte arrives before the idle timeout, so only a deadline for the
    whole frame closes the connection; an idle connection between frames stays open."""
    sink = Sink()
    server = await make_server(sink, forward_frame_timeout_s=0.5, forward_idle_timeout_s=5)
    idle = await connect(server.port)
    slow = await connect(server.port)
    frame = msgpack.packb(["t", T, rec(0), {"chunk": "never"}])
    closed_after = None
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for byte in frame[:-1]:
            await slow.send_raw(bytes([byte]))
            await asyncio.sleep(0.05)
            if slow.reader.at_eof():
                closed_after = loop.time() - started
                break
    except ConnectionError:
        closed_after = loop.time() - started
    assert await slow.closed_by_server(timeout=2)
    assert closed_after is None or closed_after < 2.0
    assert server.stats.rejected_frames["frame_timeout"] == 1
    assert sink.calls == []
    await idle.send_message("t", T, rec(1), chunk="still-open")  # idle, not closed
    assert await idle.read_ack() == "still-open"


async def test_incomplete_frames_share_one_memory_budget(
    make_server: MakeServer, connect: Connect
) -> None:
    """Many connections each holding an unfinished large frame: past the budget, a
    connection asking for more room is closed; the server holds at most about the budget."""
    budget = 1024 * 1024
    server = await make_server(
        Sink(), forward_max_frame_bytes=600 * 1024, forward_max_buffered_bytes=budget
    )
    head = b"\x93" + msgpack.packb("t") + b"\xdb" + struct.pack(">I", 590 * 1024)  # str32
    clients = [await connect(server.port) for _ in range(4)]
    for client in clients:
        with contextlib.suppress(ConnectionError):
            await client.send_raw(head + b"x" * (400 * 1024))
    await asyncio.sleep(0.3)
    closed = [await c.closed_by_server(timeout=0.3) for c in clients]
    assert any(closed)
    assert not all(closed)
    assert server.stats.rejected_frames["memory_budget"] >= 1
    assert server._held <= budget + 256 * 1024  # one read's worth of slack


async def test_before_the_handshake_a_peer_holds_no_more_than_a_ping(
    make_server: MakeServer, connect: Connect
) -> None:
    """An unauthenticated peer cannot take the memory budget that producers' frames share:
    its first message may be no larger than a PING needs."""
    server = await make_server(Sink(), forward_shared_key=KEY)
    stranger = await connect(server.port)
    await stranger.receive()  # HELO
    head = b"\x93" + msgpack.packb("t") + b"\xdb" + struct.pack(">I", 4 * 1024 * 1024)
    with contextlib.suppress(ConnectionError):
        await stranger.send_raw(head + b"x" * (64 * 1024))
    assert await stranger.closed_by_server()
    assert server.stats.rejected_frames["frame_too_large"] == 1
    assert server._held == 0
    # A producer still logs in and delivers.
    client = await connect(server.port, credentials=Credentials(KEY), server_name="ffaudit-test")
    await client.send_message("t", T, rec(0), chunk="c0")
    assert await client.read_ack() == "c0"


async def test_a_client_that_streams_frames_back_to_back_is_not_cut(
    make_server: MakeServer, connect: Connect
) -> None:
    """The frame deadline is per frame: a busy client whose every write ends inside the next
    frame (so some frame is always incomplete) keeps its connection past the deadline."""
    sink = Sink()
    server = await make_server(sink, forward_frame_timeout_s=0.4)
    client = await connect(server.port)
    frames = [msgpack.packb(["t", T, rec(i), {"chunk": f"c{i}"}]) for i in range(12)]
    stream = b"".join(frames)
    cuts = [sum(len(f) for f in frames[: i + 1]) + len(frames[i + 1]) // 2 for i in range(11)]
    sent = 0
    for cut in [*cuts, len(stream)]:  # ~1.2 s in all, never at a frame boundary
        await client.send_raw(stream[sent:cut])
        sent = cut
        await asyncio.sleep(0.1)
    for i in range(12):
        assert await client.read_ack() == f"c{i}"
    assert server.stats.rejected_frames["frame_timeout"] == 0
    assert len(sink.entries) == 12
