"""The engine's audit transport (spool, forward client, emitter) against the real audit
service ingest: ForwardServer → IngestService → SqlEventStore on SQLite, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from audit.db.session import make_engine, session_factory, upgrade
from audit.ingest.forward import ForwardEntry, ForwardServer, Peer
from audit.ingest.service import IngestService
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy, SealedRecord
from audit.integrity.events import EventAction
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.settings import AuditSettings
from audit.store.protocol import StoredEvent
from audit.store.sql import SqlEventStore
from audit.streams.schemas import StreamRead, StreamRegistration
from audit.streams.service import StreamService
from engine.errors import AuditUnavailableError, UsageError
from engine.transport import (
    AuditEmitter,
    DeliveryError,
    ForwardDelivery,
    HandshakeError,
    Spool,
    SpoolAlarm,
    SpoolFullError,
    SpoolPosition,
)
from engine.transport.forward import client_tls_context, event_time_ns
from engine.transport.spool import FRAME
from tests.ingest.forward_client import credentials_lookup

T = TypeVar("T")
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TENANT = "acme"
STREAM = "engine-1"
KEY = "shared-s3cret"
ROOT = Path(__file__).resolve().parents[2]


# -- the audit service, on an event loop of its own ---------------------------------------


class Service:
    """The service's forward ingest in a background thread; the engine side is threads."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{tmp}/audit.db"
        upgrade(self.url)
        self.overrides: dict[str, Any] = {
            "forward_host": "127.0.0.1",
            "forward_hostname": "ffaudit-test",
        }
        users: dict[str, str] = overrides.pop("forward_users", {})
        self.credentials = credentials_lookup(users, TENANT) if users else None
        self.overrides.update(overrides)
        settings = AuditSettings(database_url=self.url, forward_port=0, **self.overrides)
        sessions = session_factory(make_engine(self.url))
        self.store = SqlEventStore(self.url)
        self.ingest = IngestService(settings, sessions, self.store)
        self.streams = StreamService(sessions)
        self.server: ForwardServer | None = None
        self.port = 0
        self.lose_acks = 0  # acks to withhold after storing (the engine must resend)
        self.hold = threading.Event()  # while set, the handler does not return (no ack)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _handler(self, tag: str, entries: list[ForwardEntry], peer: Peer) -> None:
        while self.hold.is_set():
            await asyncio.sleep(0.01)
        await self.ingest.ingest(
            [e.record for e in entries], source="forward", peer=peer.address, producer=peer.producer
        )
        if self.lose_acks:
            self.lose_acks -= 1
            raise RuntimeError("stored, but the ack is lost")

    def start(self, port: int | None = None) -> int:
        settings = AuditSettings(
            database_url=self.url,
            forward_port=self.port if port is None else port,
            **self.overrides,
        )
        server = ForwardServer(self._handler, settings, credentials=self.credentials)
        self.run(server.start())
        self.server, self.port = server, server.port
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.hold.clear()
            self.run(self.server.stop())
            self.server = None

    def register(self, signer: Signer, stream: str = STREAM) -> None:
        pem = signer.verifier.pem().decode()
        self.streams.register(StreamRegistration(stream=stream, tenant=TENANT, public_key_pem=pem))

    def stored(self, stream: str = STREAM) -> list[StoredEvent]:
        async def scan() -> list[StoredEvent]:
            return [e async for e in self.store.scan(TENANT, stream)]

        return self.run(scan())

    def head(self, stream: str = STREAM) -> StreamRead:
        return self.streams.read(stream)

    def ingested(self, outcome: str) -> float:
        sample = self.ingest.metrics.registry.get_sample_value(
            "ffaudit_records_ingested_total", {"outcome": outcome, "source": "forward"}
        )
        return sample or 0.0

    def close(self) -> None:
        self.stop()
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


MakeService = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    made: list[Service] = []

    def make(*, start: bool = True, **overrides: Any) -> Service:
        svc = Service(tmp_path / f"svc{len(made)}", **overrides)
        made.append(svc)
        if start:
            svc.start()
        return svc

    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the engine side ----------------------------------------------------------------------


def make_sealer(signer: Signer, stream: str = STREAM, every: int = 100) -> Sealer:
    return Sealer(
        ChainWriter(stream, TENANT, signer, policy=CheckpointPolicy(every, None)),
        Pseudonymizer(Keyring.generate(), TENANT),
    )


def event(i: int, action: EventAction = EventAction.FACE_SWAPPED) -> AuditEvent:
    return AuditEvent(
        action=action,
        timestamp=T0 + timedelta(milliseconds=i),
        actor=f"user-{i % 4}",
        client_ip=f"198.51.100.{i % 7}",
        target=f"/srv/uploads/clip-{i}.mp4",
        job_id=f"job-{i // 10}",
        metadata={"i": i, "blend_ratio": 0.75},
    )


class RecordingSpool(Spool):
    """A real spool that also remembers every line appended (the test's ground truth)."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.appended: list[bytes] = []
        super().__init__(directory, **kwargs)

    def append(self, lines: Sequence[bytes]) -> None:
        super().append(lines)
        self.appended += lines


def emitter_for(
    sealer: Sealer,
    spool: Spool,
    port: int | None,
    *,
    file_sink: Path | None = None,
    **delivery: Any,
) -> AuditEmitter:
    link = None
    if port is not None:
        link = ForwardDelivery(
            "127.0.0.1", port, timeout_s=delivery.pop("timeout_s", 5.0), **delivery
        )
    emitter = AuditEmitter(
        sealer, spool, delivery=link, file_sink=file_sink, ship_interval_s=0.05, retry_max_s=0.3
    )
    emitter.start()
    return emitter


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def assert_complete(svc: Service, stream: str, lines: Sequence[bytes], *, closed: bool) -> None:
    """The store holds exactly `lines`, each once, in sequence order, all verified ok."""
    stored = svc.stored(stream)
    assert [e.sequence for e in stored] == list(range(1, len(lines) + 1))
    assert [canonicalize(e.record) for e in stored] == list(lines)
    assert {e.verdict for e in stored} == {"ok"}
    head = svc.head(stream)
    assert head.head_sequence == len(lines)
    assert head.closed is closed
    if closed:
        assert head.signed_through == len(lines)


# -- happy path ---------------------------------------------------------------------------


def test_500_events_stored_verified_and_file_sink_matches(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service()
    svc.register(signer)
    spool = RecordingSpool(tmp_path / "spool", max_bytes=8 << 20)
    sink = tmp_path / "out" / "records.ndjson"
    emitter = emitter_for(make_sealer(signer), spool, svc.port, file_sink=sink)
    for i in range(500):
        emitter.emit(event(i))
    assert emitter.close(60)

    lines = spool.appended
    assert len(lines) == 500 + 5 + 1  # 5 checkpoints (every 100) and the closing one
    assert sink.read_bytes() == b"".join(line + b"\n" for line in lines)
    assert_complete(svc, STREAM, lines, closed=True)
    stats = emitter.stats()
    assert (stats.spooled, stats.shipped, stats.dropped_noncritical) == (506, 506, 0)
    assert stats.delivery_up
    assert stats.spool.records_pending == 0
    assert svc.ingested("ok") == 506
    assert emitter.health()["status"] == "unavailable"  # closed: takes no more events

    pub = tmp_path / "signing.pub"
    pub.write_bytes(signer.verifier.pem())
    verify = subprocess.run(
        [sys.executable, "-m", "audit", "verify", "--pubkey", str(pub), "--strict", str(sink)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    spool.close()


def test_emit_stamps_the_time_and_the_wire_carries_it_in_nanoseconds(
    signer: Signer, tmp_path: Path
) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        emitter = AuditEmitter(make_sealer(signer), spool, delivery=None, file_sink=None)
        unstamped = AuditEvent(action=EventAction.JOB_STARTED)
        before = datetime.now(UTC)
        emitter.emit(unstamped)  # not started: only queued
        assert unstamped.timestamp is not None
        assert before <= unstamped.timestamp <= datetime.now(UTC)
    assert event_time_ns("2026-11-21T10:00:00.123456Z") == 1_795_255_200_123_456_000
    assert event_time_ns("1960-01-01T00:00:00.000000Z") == 0  # EventTime is unsigned
    now = time.time_ns()
    assert event_time_ns(None) >= now


# -- outages --------------------------------------------------------------------------------


def test_service_down_at_start_and_during_emission(
    make_service: MakeService, signer: Signer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engine.transport")
    svc = make_service(start=False)
    svc.register(signer)
    port = free_port()
    spool = RecordingSpool(tmp_path / "spool", max_bytes=8 << 20)
    emitter = emitter_for(make_sealer(signer), spool, port)
    for i in range(100):
        emitter.emit(event(i))
    assert not emitter.flush(0.5)  # spooled, not acknowledged
    stats = emitter.stats()
    assert not stats.delivery_up
    assert stats.spool.records_pending == stats.spooled == len(spool.appended) >= 100
    assert stats.last_error is not None
    assert emitter.health()["status"] == "degraded"

    svc.start(port)
    assert emitter.flush(30)
    assert emitter.delivery_up
    svc.stop()
    for i in range(100, 250):
        emitter.emit(event(i))
    assert not emitter.flush(0.5)
    assert emitter.stats().spool.records_pending > 0
    svc.start(port)
    assert emitter.close(30)

    assert_complete(svc, STREAM, spool.appended, closed=True)
    assert svc.ingested("duplicate") == 0
    outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outages) == 2, [r.getMessage() for r in outages]  # once per outage
    spool.close()


def test_batches_shrink_to_what_the_service_accepts(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service(forward_max_events_per_message=16)
    svc.register(signer)
    spool = RecordingSpool(tmp_path / "spool", max_bytes=8 << 20)
    emitter = AuditEmitter(
        make_sealer(signer),
        spool,
        delivery=ForwardDelivery("127.0.0.1", svc.port, timeout_s=5),
        file_sink=None,
        ship_interval_s=0.02,
        retry_max_s=0.05,
    )
    for i in range(300):  # queued before start: spooled in one go, shipped as one batch
        emitter.emit(event(i))
    emitter.start()
    assert emitter.close(30)
    assert_complete(svc, STREAM, spool.appended, closed=True)
    assert svc.server is not None
    assert svc.server.stats.rejected_frames["too_many_entries"] > 0  # until it shrank
    spool.close()


class PausingSpool(RecordingSpool):
    """Holds the appending thread right after an append, while `pause` is set."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.pause = threading.Event()
        self.paused = threading.Event()
        self.resume = threading.Event()
        super().__init__(directory, **kwargs)

    def append(self, lines: Sequence[bytes]) -> None:
        super().append(lines)
        if self.pause.is_set():
            self.paused.set()
            self.resume.wait(30)


def test_acks_during_an_append_do_not_make_emit_refuse(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    """The ship thread acks while the seal thread is inside an append (records spooled,
    its bookkeeping not yet done): the spool has room, so emit must keep accepting."""
    svc = make_service()
    svc.register(signer)
    spool = PausingSpool(tmp_path / "spool", max_bytes=8 << 20)
    emitter = emitter_for(make_sealer(signer), spool, svc.port)
    emitter.emit(event(0))
    assert emitter.flush(30)
    spool.pause.set()
    emitter.emit(event(1))
    assert spool.paused.wait(10)
    wait_for(lambda: emitter.stats().shipped == 2)  # acked while the append is held
    assert emitter.stats().accepting
    emitter.emit(event(2))
    spool.pause.clear()
    spool.resume.set()
    assert emitter.close(30)
    assert emitter.stats().dropped_noncritical == 0
    assert_complete(svc, STREAM, spool.appended, closed=True)
    spool.close()


def test_lost_ack_is_resent_and_stored_once(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service()
    svc.register(signer)
    svc.lose_acks = 2
    spool = RecordingSpool(tmp_path / "spool", max_bytes=8 << 20)
    emitter = emitter_for(make_sealer(signer), spool, svc.port)
    for i in range(60):
        emitter.emit(event(i))
    assert emitter.close(30)
    assert_complete(svc, STREAM, spool.appended, closed=True)
    assert svc.ingested("duplicate") > 0  # resent, recognised, not stored twice
    spool.close()


PRODUCER = """
import sys, time
from pathlib import Path
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from engine.transport import AuditEmitter, ForwardDelivery, Spool

key, spool_dir, port, stream, count = sys.argv[1:6]
signer = Signer.load(Path(key))
sealer = Sealer(
    ChainWriter(stream, "acme", signer, policy=CheckpointPolicy(50, None)),
    Pseudonymizer(Keyring.generate(), "acme"),
)
spool = Spool(Path(spool_dir), max_bytes=64 << 20)
delivery = ForwardDelivery("127.0.0.1", int(port), timeout_s=5)
emitter = AuditEmitter(
    sealer, spool, delivery=delivery, file_sink=None, batch_max=20, ship_interval_s=0.05,
    retry_max_s=0.3,
)
emitter.start()
i = 0
while int(count) < 0 or i < int(count):
    emitter.emit(AuditEvent(action=EventAction.FACE_SWAPPED, actor=f"u{i}", job_id=str(i)))
    i += 1
    if i % 10 == 0:
        s = emitter.stats()
        print(f"emitted={i} spooled={s.spooled} shipped={s.shipped}", flush=True)
        time.sleep(0.005)
if int(count) >= 0:
    print("closed", emitter.close(60), flush=True)
    spool.close()
"""


def _progress(proc: subprocess.Popen[str], until: Callable[[dict[str, int]], bool]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        fields = dict(item.split("=") for item in line.split())
        if until({k: int(v) for k, v in fields.items()}):
            return
        assert time.monotonic() < deadline, "producer made no progress"
    raise AssertionError(f"producer ended early ({proc.wait()})")


def test_kill_9_mid_stream_then_replay_delivers_every_record_once(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service()
    svc.register(signer, "run-1")
    svc.register(signer, "run-2")
    key = tmp_path / "signing.key"
    key.write_bytes(signer.pem())
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    spool_dir = tmp_path / "spool"

    def producer(stream: str, count: int) -> list[str]:
        return [
            sys.executable,
            str(script),
            str(key),
            str(spool_dir),
            str(svc.port),
            stream,
            str(count),
        ]

    marks: dict[str, int] = {}

    def spooled_more(p: dict[str, int]) -> bool:
        marks.setdefault("start", p["spooled"])
        return p["spooled"] >= marks["start"] + 200

    with subprocess.Popen(
        producer("run-1", -1), stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as first:
        try:
            _progress(first, lambda p: p["shipped"] >= 100)
            svc.stop()  # the service goes away: the producer keeps spooling
            _progress(first, spooled_more)
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.kill()
            first.wait(10)
    assert first.returncode == -signal.SIGKILL

    with Spool(spool_dir, max_bytes=64 << 20) as spool:
        left = [line for _, line in spool.unacked(1_000_000)]
    assert len(left) >= 200
    svc.start()
    before = {e.sequence for e in svc.stored("run-1")}
    second = subprocess.run(
        producer("run-2", 40), capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert second.returncode == 0, second.stderr
    assert "closed True" in second.stdout

    run1 = svc.stored("run-1")
    last = max(e.sequence for e in run1)
    assert [e.sequence for e in run1] == list(range(1, last + 1))  # no gap, nothing twice
    assert {e.verdict for e in run1} == {"ok"}
    by_seq = {e.sequence: canonicalize(e.record) for e in run1}
    # The replayed records are exactly those the killed producer left unacknowledged.
    assert [by_seq[orjson.loads(line)["event.sequence"]] for line in left] == left
    assert max(before) < last
    run2 = svc.stored("run-2")
    assert [e.sequence for e in run2] == list(range(1, len(run2) + 1))
    assert svc.head("run-2").closed
    with Spool(spool_dir, max_bytes=64 << 20) as spool:
        assert spool.usage().records_pending == 0


# -- the spool ----------------------------------------------------------------------------


def lines_(n: int, start: int = 0) -> list[bytes]:
    return [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50)) for i in range(start, start + n)]


@pytest.mark.parametrize("damage", ["truncated", "garbage_tail", "flipped_byte", "header_only"])
def test_torn_last_record_is_detected_and_truncated_on_open(tmp_path: Path, damage: str) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(lines_(5))
    spool.append(lines_(5, 5))
    spool.close()
    (seg,) = tmp_path.glob("seg-*.log")
    good = seg.stat().st_size - FRAME.size - len(lines_(1, 9)[0])
    data = seg.read_bytes()
    if damage == "truncated":
        seg.write_bytes(data[:-7])
    elif damage == "garbage_tail":
        seg.write_bytes(data + b"\x00\x00\x00\x09\xde\xad")
        good = len(data)
    elif damage == "flipped_byte":
        seg.write_bytes(data[:-3] + bytes([data[-3] ^ 0x20]) + data[-2:])
    else:
        seg.write_bytes(data[:good] + data[good : good + FRAME.size])

    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        got = [line for _, line in spool.unacked(100)]
        expected = lines_(10) if damage == "garbage_tail" else lines_(9)
        assert got == expected
        assert seg.stat().st_size == good
        spool.append([b"after-repair"])
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert [line for _, line in spool.unacked(100)] == [*expected, b"after-repair"]


def test_spool_ack_persists_deletes_segments_and_bounds(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=1024)
    for k in range(10):
        spool.append(lines_(10, 10 * k))
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    usage = spool.usage()
    assert usage.records_pending == 100
    assert usage.oldest_pending_age_s is not None
    batch = spool.unacked(35)
    assert [line for _, line in batch] == lines_(35)
    with pytest.raises(ValueError, match="not the end of a spooled record"):
        spool.ack(SpoolPosition(batch[3][0].segment, batch[3][0].offset - 1))
    spool.ack(batch[-1][0])
    spool.ack(batch[0][0])  # older: ignored
    spool.close()

    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=1024)
    assert spool.usage().records_pending == 65
    assert [line for _, line in spool.unacked(1000)] == lines_(65, 35)
    two = sum(FRAME.size + len(line) for line in lines_(2, 35))
    assert len(spool.unacked(1000, max_bytes=two)) == 2  # within the byte budget
    assert len(spool.unacked(1000, max_bytes=two - 1)) == 1
    assert len(spool.unacked(1000, max_bytes=1)) == 1  # never nothing
    spool.ack(spool.unacked(1000)[-1][0])
    assert spool.usage().records_pending == spool.usage().bytes_used == 0
    assert len(list(tmp_path.glob("seg-*.log"))) == 1  # only the one still written to
    assert spool.unacked(10) == []

    total = sum(len(line) + FRAME.size for line in lines_(10))
    while spool.free_bytes() >= total:
        spool.append(lines_(10))
    with pytest.raises(SpoolFullError):
        spool.append(lines_(10))
    assert spool.usage().bytes_used <= 64 * 1024
    spool.close()


def test_spool_is_exclusive_to_one_process(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=4096), pytest.raises(UsageError, match="in use"):
        Spool(tmp_path, max_bytes=4096)
    Spool(tmp_path, max_bytes=4096).close()  # released on close (and by the kernel on death)
    (tmp_path / "seg-000000000009.log").write_bytes(b"NOTASPOOL" + b"\0" * 20)
    with pytest.raises(UsageError, match="not a spool segment"):
        Spool(tmp_path, max_bytes=4096)


def test_spool_alarm_fires_once_per_crossing(tmp_path: Path) -> None:
    alarms: list[SpoolAlarm] = []
    spool = Spool(tmp_path, max_bytes=10_000, alarm_ratio=0.5, on_alarm=alarms.append)
    while spool.free_bytes() > 6000:
        spool.append([b"x" * 500])
    assert alarms == []
    spool.append([b"x" * 500])
    spool.append([b"x" * 500])
    assert len(alarms) == 1
    assert 0.5 <= alarms[0].usage.ratio < 1
    spool.ack(spool.end_position())
    spool.append([b"x" * 4000])
    spool.append([b"x" * 1000])
    assert len(alarms) == 2  # re-armed below the threshold
    spool.close()


# -- full spool ----------------------------------------------------------------------------


def test_full_spool_alarms_first_then_drops_counted_and_refuses_critical(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service(start=False)
    svc.register(signer)
    port = free_port()
    alarms: list[tuple[SpoolAlarm, bool]] = []
    emitter: AuditEmitter | None = None

    def on_alarm(alarm: SpoolAlarm) -> None:
        assert emitter is not None
        alarms.append((alarm, emitter.stats().accepting))

    spool = RecordingSpool(
        tmp_path / "spool", max_bytes=24 * 1024, alarm_ratio=0.8, on_alarm=on_alarm
    )
    emitter = emitter_for(make_sealer(signer, every=1000), spool, port)
    emitted = 0
    for i in range(200):
        emitter.emit(event(i))
        emitted += 1
        time.sleep(0.001)
    # Every event is accounted for: spooled, or dropped and counted.
    wait_for(lambda: emitter.stats().spooled + emitter.stats().dropped_noncritical == emitted)
    stats = emitter.stats()
    assert not stats.accepting
    assert emitter.health()["status"] == "unavailable"
    assert len(alarms) == 1
    alarm, accepting_then = alarms[0]
    assert accepting_then  # the alarm came before the spool refused anything
    assert 0.8 <= alarm.usage.ratio < 1
    assert stats.dropped_noncritical > 0
    assert stats.spooled == len(spool.appended)

    emitter.emit(event(500, EventAction.FACE_DETECTED))  # non-critical: counted, no raise
    with pytest.raises(AuditUnavailableError, match="spool is full"):
        emitter.emit(event(501, EventAction.JOB_COMPLETED))
    stats = emitter.stats()
    assert stats.refused_critical == 1
    assert stats.dropped_noncritical + stats.spooled == emitted + 1

    svc.start(port)
    wait_for(lambda: emitter.stats().accepting)
    emitter.emit(event(502, EventAction.JOB_COMPLETED))  # critical: taken again
    assert emitter.close(30)
    # Dropped events never got a sequence number: the chain has no hole.
    assert_complete(svc, STREAM, spool.appended, closed=True)
    spool.close()


def test_queue_full_refuses_like_a_full_spool(signer: Signer, tmp_path: Path) -> None:
    gate = threading.Event()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    emitter = AuditEmitter(
        StalledSealer(signer, gate), spool, delivery=None, file_sink=None, queue_max=10
    )
    emitter.start()
    emitter.emit(event(0))
    wait_for(lambda: emitter.stats().queued == 0)  # the worker took it and is stuck
    for i in range(1, 11):
        emitter.emit(event(i))
    assert emitter.stats().queued == 10
    emitter.emit(event(11))  # non-critical: dropped and counted
    with pytest.raises(AuditUnavailableError, match="queue is full"):
        emitter.emit(event(12, EventAction.ACCESS_DENIED))
    stats = emitter.stats()
    assert (stats.dropped_noncritical, stats.refused_critical) == (1, 1)
    gate.set()
    assert emitter.close(10)
    assert emitter.stats().spooled == 11 + 1  # and the closing checkpoint
    spool.close()


# -- TLS and the handshake -----------------------------------------------------------------


def test_tls_with_shared_key_and_user_auth(
    make_service: MakeService, signer: Signer, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    svc = make_service(
        forward_tls_cert=cert,
        forward_tls_key=key,
        forward_shared_key=KEY,
        forward_users={"engine": "pa55word"},
    )
    svc.register(signer)
    spool = RecordingSpool(tmp_path / "spool", max_bytes=1 << 20)
    emitter = emitter_for(
        make_sealer(signer),
        spool,
        svc.port,
        tls=client_tls_context(cert),
        tls_server_hostname="localhost",
        shared_key=KEY,
        username="engine",
        password="pa55word",
    )
    for i in range(30):
        emitter.emit(event(i))
    assert emitter.close(30)
    assert_complete(svc, STREAM, spool.appended, closed=True)
    spool.close()

    # Without the CA the service's certificate is refused; without a key, the handshake.
    untrusted = ForwardDelivery("127.0.0.1", svc.port, tls=client_tls_context(), timeout_s=5)
    with pytest.raises(DeliveryError, match="certificate"):
        untrusted.send([{"a": 1}])
    no_key = ForwardDelivery("localhost", svc.port, tls=client_tls_context(cert), timeout_s=5)
    with pytest.raises(HandshakeError, match="requires the shared-key handshake"):
        no_key.send([{"a": 1}])
    wrong_user = ForwardDelivery(
        "localhost",
        svc.port,
        tls=client_tls_context(cert),
        shared_key=KEY,
        username="engine",
        password="nope",
        timeout_s=5,
    )
    with pytest.raises(HandshakeError, match="username/password mismatch"):
        wrong_user.send([{"a": 1}])


def test_wrong_shared_key_keeps_records_spooled_until_the_right_one(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service(forward_shared_key=KEY)
    svc.register(signer, "run-1")
    svc.register(signer, "run-2")
    spool = RecordingSpool(tmp_path / "spool", max_bytes=1 << 20)
    emitter = emitter_for(make_sealer(signer, "run-1"), spool, svc.port, shared_key="wrong")
    for i in range(20):
        emitter.emit(event(i))
    assert not emitter.close(1.0)
    stats = emitter.stats()
    assert not stats.delivery_up
    assert stats.last_error is not None
    assert "shared_key mismatch" in stats.last_error
    assert stats.spool.records_pending == stats.spooled == 21
    assert svc.stored("run-1") == []
    first_run = list(spool.appended)

    # The next run, with the right key, replays run-1 first, then ships its own stream.
    spool.appended.clear()
    again = emitter_for(make_sealer(signer, "run-2"), spool, svc.port, shared_key=KEY)
    for i in range(10):
        again.emit(event(i))
    assert again.close(30)
    assert_complete(svc, "run-1", first_run, closed=True)
    assert_complete(svc, "run-2", spool.appended, closed=True)
    spool.close()


# -- the forward client on its own --------------------------------------------------------


def sealed_records(signer: Signer, n: int) -> list[dict[str, Any]]:
    sealer = make_sealer(signer, every=10)
    out: list[SealedRecord] = [r for i in range(n) for r in sealer.seal(event(i))]
    return [r.record for r in out]


@pytest.mark.parametrize(("packed", "compress"), [(False, False), (True, False), (True, True)])
def test_every_mode_is_acknowledged(
    make_service: MakeService, signer: Signer, packed: bool, compress: bool
) -> None:
    svc = make_service()
    svc.register(signer)
    records = sealed_records(signer, 25)
    delivery = ForwardDelivery("127.0.0.1", svc.port, packed=packed, compress=compress)
    delivery.send(records[:10])
    delivery.send(records[10:])
    delivery.send(records[:5])  # resent: harmless
    delivery.close()
    stored = svc.stored()
    assert [e.record for e in stored] == records
    assert svc.ingested("duplicate") == 5


def test_ack_timeout_then_resend_on_a_new_connection(
    make_service: MakeService, signer: Signer
) -> None:
    svc = make_service()
    svc.register(signer)
    records = sealed_records(signer, 5)
    delivery = ForwardDelivery("127.0.0.1", svc.port, timeout_s=0.5)
    svc.hold.set()
    with pytest.raises(DeliveryError, match="no answer"):
        delivery.send(records)
    assert delivery.socket is None  # closed: the next send connects afresh
    svc.hold.clear()
    delivery.send(records)
    delivery.close()
    wait_for(lambda: len(svc.stored()) == 5)
    assert [e.record for e in svc.stored()] == records


def test_idle_connection_closed_by_the_service_is_reopened(
    make_service: MakeService, signer: Signer
) -> None:
    svc = make_service(forward_idle_timeout_s=0.2)
    svc.register(signer)
    records = sealed_records(signer, 6)
    delivery = ForwardDelivery("127.0.0.1", svc.port, timeout_s=5)
    delivery.send(records[:3])
    time.sleep(0.6)  # the service closes the idle connection meanwhile
    delivery.send(records[3:])
    delivery.close()
    assert [e.record for e in svc.stored()] == records


def test_service_refused_connection_is_a_delivery_error() -> None:
    delivery = ForwardDelivery("127.0.0.1", free_port(), timeout_s=1)
    with pytest.raises(DeliveryError, match="connection"):
        delivery.send([{"a": 1}])
    with pytest.raises(DeliveryError):
        delivery.connect()


# -- the hot path ---------------------------------------------------------------------------


class StalledSealer(Sealer):
    """A real sealer whose worker thread stalls until `gate` opens."""

    def __init__(self, signer: Signer, gate: threading.Event) -> None:
        writer = ChainWriter(STREAM, TENANT, signer, policy=CheckpointPolicy(100, None))
        super().__init__(writer, Pseudonymizer(Keyring.generate(), TENANT))
        self.gate = gate

    def seal(self, event: AuditEvent) -> list[SealedRecord]:
        self.gate.wait()
        return super().seal(event)


def test_emit_never_blocks_with_the_service_down_and_the_worker_stalled(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service(start=False)
    svc.register(signer)
    port = free_port()
    gate = threading.Event()
    spool = RecordingSpool(tmp_path / "spool", max_bytes=16 << 20)
    emitter = emitter_for(StalledSealer(signer, gate), spool, port)
    n = 5000
    for i in range(n):
        emitter.emit(AuditEvent(action=EventAction.FACE_SWAPPED, actor=f"u{i}"))
    # Every call returned while nothing could be sealed or sent (the worker waits on a gate
    # opened only below): emit only enqueues. A blocking emit would hang here. How long a
    # call takes is measured by tests/benchmarks/bench_engine.py, not asserted.
    assert emitter.stats().queued >= n - 500  # the stalled worker holds one batch at most
    assert spool.appended == []
    gate.set()
    svc.start(port)
    assert emitter.close(60)
    assert_complete(svc, STREAM, spool.appended, closed=True)
    assert len(spool.appended) == n + n // 99 + 1  # checkpoints close 99 events each
    spool.close()


def test_close_not_final_signs_everything_and_leaves_the_chain_open(
    make_service: MakeService, signer: Signer, tmp_path: Path
) -> None:
    svc = make_service()
    svc.register(signer)
    spool = RecordingSpool(tmp_path / "spool", max_bytes=1 << 20)
    sealer = make_sealer(signer)
    emitter = emitter_for(sealer, spool, svc.port)
    for i in range(10):
        emitter.emit(event(i))
    assert emitter.close(30, final=False)
    last = orjson.loads(spool.appended[-1])
    assert last["event.action"] == "audit.checkpoint"
    assert last["ffaudit.checkpoint.closing"] is False
    assert not sealer.writer.closed  # a later emitter may continue this chain
    assert_complete(svc, STREAM, spool.appended, closed=False)
    assert svc.head().signed_through == len(spool.appended)
    spool.close()


def test_without_delivery_the_file_sink_is_the_destination(signer: Signer, tmp_path: Path) -> None:
    spool = RecordingSpool(tmp_path / "spool", max_bytes=1 << 20)
    sink = tmp_path / "records.ndjson"
    sink.write_bytes(b'{"torn":')  # a crash mid-line in an earlier run
    emitter = AuditEmitter(make_sealer(signer), spool, delivery=None, file_sink=sink)
    emitter.start()
    for i in range(20):
        emitter.emit(event(i))
    assert emitter.flush(10)
    assert emitter.close(10)
    assert sink.read_bytes() == b"".join(line + b"\n" for line in spool.appended)
    assert spool.usage().records_pending == 0  # acknowledged once in the file
    with pytest.raises(AuditUnavailableError, match="closed"):
        emitter.emit(event(99, EventAction.INPUT_ERASED))
    spool.close()
