"""Replicas of the real service for bench_replicas and soak: separate `ffaudit serve`
processes sharing one PostgreSQL database and one Elasticsearch index prefix, and the
producers that load them over the forward port.

Each replica is `ffaudit serve --no-migrate` in its own UTS namespace (`unshare --uts`) with
its own host name, as a container would have: the service's own stream is named after the
host (`ffaudit-service.<tenant>.<host>`), so two replicas on one host name would fork each
other's log of the logs. Without `unshare` (not root, no user namespaces) the replicas keep
the machine's name and every audited HTTP call goes to replica 0 (`Deployment.api`).

Producers log in as one producer of the tenant (shared key + username/password, the
production shape of the forward port), one connection per stream, and ask for an ack per
chunk: an ack means stored. Chunks not acknowledged when a connection fails are sent again
on a new one, as Fluent Bit does, so exactly-once storage is the service's job and is
checked afterwards by (stream, sequence) in Elasticsearch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psycopg
from elasticsearch import AsyncElasticsearch

from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from tests.apptools import AUD, ISS, SECRET, bearer
from tests.benchmarks.bench_forward_flood import ffaudit_command, free_port, proc_status
from tests.benchmarks.bench_ingest import dev_server_url, elasticsearch_url
from tests.conftest import drop_prefix, postgres_database
from tests.ingest.forward_client import (
    Credentials,
    ForwardClient,
    HandshakeRefused,
    ProtocolViolation,
    event_time,
    pack_entries,
)
from tests.integrity.conftest import sample_event

TENANT = "acme"
SHARED_KEY = "bench-shared-key-" + "k" * 16
TAG = "ffaudit.bench"
START_TIMEOUT_S = 90.0
STATE_TIMEOUT_S = 60.0  # a stats or verification call of the HTTP API


class Bearer(httpx.Auth):
    """A token of `role` in tenant TENANT (tests.apptools' claims, with a second factor),
    signed afresh for every request: those tokens live ten minutes, a soak runs longer."""

    def __init__(self, role: str) -> None:
        self.role = role

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(bearer(roles=[self.role], tenant=TENANT))
        yield request


def postgres_server_url() -> str:
    return dev_server_url("postgres")


def _own_host_names() -> bool:
    """Whether this machine lets us give each replica its own host name."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "sh", "-c", "hostname ffaudit-probe"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


# -- the replicas ------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (parents from /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children.get(child, [])
    return out


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    forward_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        # unshare without --fork execs its command: the pid is the service's own.
        return self.proc.pid

    def rss_mib(self) -> float:
        return proc_status(self.pid).get("VmRSS", 0) / 1024

    def children_rss_mib(self) -> float:
        """Its descendants' RSS: worker processes (verification jobs, a forkserver)."""
        total = 0
        for pid in descendants(self.pid):
            with contextlib.suppress(OSError):  # ended meanwhile
                total += proc_status(pid).get("VmRSS", 0)
        return total / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@dataclass
class Deployment:
    replicas: list[Replica]
    database_url: str
    es_url: str
    prefix: str
    own_host_names: bool

    def api(self, i: int) -> str:
        """The base URL for an audited HTTP call spread over replica `i`."""
        return self.replicas[i % len(self.replicas) if self.own_host_names else 0].base_url


def _replica_env(
    workdir: Path, database_url: str, es_url: str, prefix: str, extra: dict[str, str]
) -> dict[str, str]:
    shared = {
        "FFAUDIT_DATABASE_URL": database_url,
        "FFAUDIT_ELASTICSEARCH_URL": es_url,
        "FFAUDIT_ELASTICSEARCH_INDEX_PREFIX": prefix,
        # One key directory, as replicas share their secret: webhook secrets and producer
        # passwords are encrypted under it by whichever replica took the request.
        "FFAUDIT_SERVICE_KEYS_DIR": str(workdir / "service-keys"),
        "FFAUDIT_KEYRINGS_DIR": str(workdir / "keyrings"),
        "FFAUDIT_EXPORTS_DIR": str(workdir / "exports"),
        "FFAUDIT_RETENTION_ARCHIVE_DIR": str(workdir / "archives"),
        "FFAUDIT_RETENTION_INTERVAL_S": "0",  # nothing here is old enough to expire
        "FFAUDIT_CONSOLE_ENABLED": "false",
        "FFAUDIT_HTTP_HOST": "127.0.0.1",
        "FFAUDIT_FORWARD_ENABLED": "true",
        "FFAUDIT_FORWARD_HOST": "127.0.0.1",
        "FFAUDIT_FORWARD_SHARED_KEY": SHARED_KEY,
        "FFAUDIT_JWT_HS256_SECRET": SECRET,
        "FFAUDIT_JWT_ISSUER": ISS,
        "FFAUDIT_JWT_AUDIENCE": AUD,
        **extra,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFAUDIT_")}
    env.update(shared)
    return env


def _start_replica(workdir: Path, index: int, env: dict[str, str], own_host_names: bool) -> Replica:
    name = f"ffaudit-r{index}"
    http_port, forward_port = free_port(), free_port()
    env = {**env, "FFAUDIT_HTTP_PORT": str(http_port), "FFAUDIT_FORWARD_PORT": str(forward_port)}
    serve = [*ffaudit_command(), "serve", "--no-migrate"]
    if own_host_names:
        serve = ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *serve]
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            serve, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    replica = Replica(name, proc, f"http://127.0.0.1:{http_port}", forward_port, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{replica.base_url}/readyz").status_code == 200:
                    return replica
            if time.monotonic() > deadline:
                replica.stop()
                raise RuntimeError(f"{name} was not ready in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)


@contextlib.contextmanager
def deployment(count: int, extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """`count` replicas on a fresh PostgreSQL database (built by the migrations) and a fresh
    index prefix, both removed on exit with the replicas' working directory."""
    es_url = elasticsearch_url()
    prefix = f"ffaudit-bench-{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="ffaudit-replicas-"))
    own = _own_host_names()
    replicas: list[Replica] = []
    try:
        with postgres_database(postgres_server_url()) as database_url:
            env = _replica_env(workdir, database_url, es_url, prefix, extra_env or {})
            try:
                # One after the other: the first creates the service keys the others load.
                for i in range(count):
                    replicas.append(_start_replica(workdir, i, env, own))
                yield Deployment(replicas, database_url, es_url, prefix, own)
            finally:
                for replica in replicas:
                    replica.stop()
    finally:
        drop_prefix(es_url, prefix)
        shutil.rmtree(workdir, ignore_errors=True)


# -- setting up a tenant through the API ---------------------------------------------------


@dataclass
class Producer:
    """The streams of one load run, their signers, and the forward login they use."""

    streams: list[str]
    signers: dict[str, Signer]
    credentials: Credentials


def register(dep: Deployment, streams: int) -> Producer:
    """A producer bound to `cam-*` and `streams` registered streams, over the HTTP API."""
    names = [f"cam-{i:03d}" for i in range(streams)]
    signers = {name: Signer.generate() for name in names}
    with httpx.Client(timeout=STATE_TIMEOUT_S, auth=Bearer("admin")) as http:
        made = http.post(
            f"{dep.api(0)}/v1/producers", json={"label": "loadgen", "streams": ["cam-*"]}
        )
        made.raise_for_status()
        login = made.json()
        for i, name in enumerate(names):
            pem = signers[name].verifier.pem().decode()
            http.post(
                f"{dep.api(i)}/v1/streams",
                json={"stream": name, "tenant": TENANT, "public_key_pem": pem},
            ).raise_for_status()
    credentials = Credentials(
        shared_key=SHARED_KEY,
        hostname="loadgen",
        username=login["name"],
        password=login["password"],
    )
    return Producer(names, signers, credentials)


# -- producing records -------------------------------------------------------------------


class LiveStream:
    """One stream's sealer: records of the engine's kind, stamped with the current time."""

    def __init__(self, stream: str, signer: Signer, *, checkpoint_every: int = 1000) -> None:
        writer = ChainWriter(
            stream, TENANT, signer, policy=CheckpointPolicy(checkpoint_every, 60.0)
        )
        self._sealer = Sealer(writer, Pseudonymizer(Keyring.generate(), TENANT))
        self._events = 0
        self.last_sequence = 0

    def seal(self, n: int) -> list[dict[str, Any]]:
        """`n` events sealed now (a checkpoint may come with them)."""
        out: list[dict[str, Any]] = []
        for _ in range(n):
            event = dataclasses.replace(sample_event(self._events), timestamp=None)
            self._events += 1
            out += [r.record for r in self._sealer.seal(event)]
        if out:
            self.last_sequence = out[-1]["event.sequence"]
        return out


def packed_frame(records: list[dict[str, Any]], chunk: str) -> bytes:
    """A PackedForward message asking for an ack (what ForwardClient.send_packed writes),
    built ahead of time so that a timed run spends no client CPU on packing."""
    now = event_time(int(time.time()))
    option = {"size": len(records), "compressed": "text", "chunk": chunk}
    payload = pack_entries([(now, r) for r in records])
    return b"\x93" + msgpack.packb(TAG) + msgpack.packb(payload) + msgpack.packb(option)


# -- sending, with acks ------------------------------------------------------------------


@dataclass
class LoadStats:
    """What every sender of a run adds to: acknowledged records, ack latencies (seconds,
    kept whole for the run and per sampling interval), and errors by kind."""

    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    interval: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def ack(self, records: int, latency: float) -> None:
        self.acked += records
        self.latencies.append(latency)
        self.interval.append(latency)

    def take_interval(self) -> list[float]:
        out, self.interval = self.interval, []
        return out


@dataclass
class _Chunk:
    frame: bytes
    records: int
    sent: float
    written: bool = False  # by its sender, or already again by a reconnect


class StreamSender:
    """One stream's forward connection: up to `window` chunks unacknowledged at a time;
    after a failure (connection lost, no ack in `ack_timeout_s`) a new connection, and every
    unacknowledged chunk sent again, in order."""

    def __init__(
        self,
        port: int,
        credentials: Credentials,
        stats: LoadStats,
        *,
        window: int = 1,
        ack_timeout_s: float = 60.0,
    ) -> None:
        self._port = port
        self._credentials = credentials
        self.stats = stats
        self._ack_timeout_s = ack_timeout_s
        self._slots = asyncio.Semaphore(window)
        self._unacked: dict[str, _Chunk] = {}  # insertion order is sending order
        self._idle = asyncio.Event()
        self._idle.set()
        self._io = asyncio.Lock()  # writes and reconnects do not interleave
        self._client: ForwardClient | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = await self._connect()
        self._reader = asyncio.create_task(self._read_acks())

    async def send(self, frame: bytes, chunk: str, records: int) -> None:
        await self._slots.acquire()
        pending = self._unacked[chunk] = _Chunk(frame, records, time.perf_counter())
        self._idle.clear()
        async with self._io:
            if pending.written:
                return  # a reconnect that ran while this waited for the lock sent it
            pending.written = True
            assert self._client is not None
            try:
                await self._client.send_raw(frame)
            except (ConnectionError, OSError):
                # The reader sees the same failure and sends this chunk again.
                self.stats.errors["send failed"] += 1

    async def drain(self, timeout_s: float) -> bool:
        """Whether every chunk sent so far was acknowledged within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._client is not None:
            await self._client.close()

    async def _connect(self) -> ForwardClient:
        return await ForwardClient.connect(self._port, credentials=self._credentials)

    async def _read_acks(self) -> None:
        while True:
            assert self._client is not None
            try:
                ack = await self._client.read_ack(timeout=1.0)
            except TimeoutError:
                oldest = next(iter(self._unacked.values()), None)
                if oldest is None or time.perf_counter() - oldest.sent < self._ack_timeout_s:
                    continue
                await self._recover("no ack in time")
                continue
            except (EOFError, ConnectionError, OSError, ProtocolViolation) as exc:
                await self._recover(type(exc).__name__)
                continue
            chunk = self._unacked.pop(ack, None)
            if chunk is None:
                self.stats.errors["unknown ack"] += 1
                continue
            self.stats.ack(chunk.records, time.perf_counter() - chunk.sent)
            self._slots.release()
            if not self._unacked:
                self._idle.set()

    async def _recover(self, reason: str) -> None:
        """A new connection, and every unacknowledged chunk on it again, in order."""
        self.stats.errors[reason] += 1
        async with self._io:
            while True:
                assert self._client is not None
                await self._client.close()
                try:
                    self._client = await self._connect()
                    for chunk in list(self._unacked.values()):
                        chunk.sent, chunk.written = time.perf_counter(), True
                        await self._client.send_raw(chunk.frame)
                    return
                except (ConnectionError, OSError, EOFError, TimeoutError, HandshakeRefused):
                    self.stats.errors["reconnect failed"] += 1
                    await asyncio.sleep(1.0)


# -- checking what was stored --------------------------------------------------------------


@dataclass
class StoredCheck:
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0  # (stream, sequence) stored that was never sent
    stored: int = 0
    head_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.head_mismatches)


async def check_stored(dep: Deployment, last_sent: dict[str, int]) -> StoredCheck:
    """Every sequence 1..last_sent[stream] stored exactly once (a composite aggregation over
    (stream, sequence) in Elasticsearch: exact, unlike a cardinality), nothing else stored
    under those streams, and each accepted chain head (GET /v1/streams/{stream}) at the last
    sequence sent."""
    es = AsyncElasticsearch(dep.es_url, request_timeout=120)
    seen: dict[str, set[int]] = {s: set() for s in last_sent}
    out = StoredCheck()
    try:
        index = f"{dep.prefix}-{TENANT}-*"
        await es.indices.refresh(index=index)
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {
                "size": 10_000,
                "sources": [
                    {"stream": {"terms": {"field": "ffaudit.ingest.stream"}}},
                    {"sequence": {"terms": {"field": "ffaudit.ingest.sequence"}}},
                ],
            }
            if after is not None:
                composite["after"] = after
            page = await es.search(
                index=index,
                size=0,
                query={"terms": {"ffaudit.ingest.stream": list(last_sent)}},
                aggs={"pairs": {"composite": composite}},
            )
            agg = page["aggregations"]["pairs"]
            for bucket in agg["buckets"]:
                stream, sequence = bucket["key"]["stream"], int(bucket["key"]["sequence"])
                out.stored += bucket["doc_count"]
                out.duplicated += bucket["doc_count"] - 1
                if sequence > last_sent[stream]:
                    out.unexpected += 1
                seen[stream].add(sequence)
            after = agg.get("after_key")
            if not agg["buckets"] or after is None:
                break
    finally:
        await es.close()
    for stream, last in last_sent.items():
        out.lost += sum(1 for s in range(1, last + 1) if s not in seen[stream])
    async with httpx.AsyncClient(timeout=STATE_TIMEOUT_S, auth=Bearer("auditor")) as http:
        for i, (stream, last) in enumerate(last_sent.items()):
            read = await http.get(f"{dep.api(i)}/v1/streams/{stream}")
            read.raise_for_status()
            head = read.json()["head_sequence"]
            if head != last:
                out.head_mismatches.append(f"{stream}: head {head}, last sent {last}")
    return out


# -- what the machine did ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (/proc/<pid>/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pids() -> dict[str, list[int]]:
    """The local Elasticsearch JVM and every PostgreSQL process, when they run here."""
    found: dict[str, list[int]] = {"elasticsearch": [], "postgresql": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"org.elasticsearch.bootstrap.Elasticsearch" in cmdline:
            found["elasticsearch"].append(int(entry.name))
        elif comm == "postgres":
            found["postgresql"].append(int(entry.name))
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat):
    whoever else runs here shows up in the difference of two readings too."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that ended meanwhile
            out[pid] = cpu_seconds(pid)
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `cpu_by_pid` readings: a process born in between counts
    whole; one that ended in between is lost (an undercount, not a negative)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def es_counters(dep: Deployment) -> dict[str, int]:
    """The deployment's indices' primaries: documents indexed and time spent indexing,
    refreshing and merging (ms), bytes on disk (Elasticsearch's _stats)."""
    es = AsyncElasticsearch(dep.es_url)
    try:
        stats = await es.options(ignore_status=404).indices.stats(
            index=f"{dep.prefix}-*", metric=["indexing", "refresh", "merge", "store"]
        )
    finally:
        await es.close()
    primaries = stats.body.get("_all", {}).get("primaries", {})
    if not primaries:
        return {}
    return {
        "indexed": primaries["indexing"]["index_total"],
        "indexing_ms": primaries["indexing"]["index_time_in_millis"],
        "refresh_ms": primaries["refresh"]["total_time_in_millis"],
        "merge_ms": primaries["merges"]["total_time_in_millis"],
        "store_bytes": primaries["store"]["size_in_bytes"],
    }


def pg_counters(database_url: str) -> dict[str, int]:
    """The database's transaction and row counters (pg_stat_database), rows written per
    table (pg_stat_user_tables, as `rows:<table>`) and each table's size with its indexes
    and TOAST (`bytes:<table>`). The statistics reach these views up to
    a second after a transaction ends: read them after a pause."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        out = dict(
            zip(("commits", "rollbacks", "inserted", "updated", "deleted"), row, strict=True)
        )
        for name, ins, upd, dele, size in conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, pg_total_relation_size(relid) "
            "FROM pg_stat_user_tables"
        ):
            out[f"rows:{name}"] = int(ins + upd + dele)
            out[f"bytes:{name}"] = int(size)
    return {k: int(v) for k, v in out.items()}
