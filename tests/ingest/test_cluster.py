"""A real three-node Elasticsearch under the real IngestService (PostgreSQL control database):
a producer streams records and counts acknowledgements while nodes crash (SIGKILL) and
come back: the node holding the events' primary, then the elected master, then all three.

After each: every acknowledged record is stored exactly once (by doc id and by (stream,
sequence)) and reads back as sent, the chain verifies against the head the service
committed, both copies of the index hold every record, and the cluster is green again. A
single node lost refuses no write (the replica takes over); the whole cluster lost
refuses every write (StoreUnavailableError, the head does not move) until it is back. What
`/readyz` reports for the store (`store.ping()`) and the cluster status are sampled
meanwhile and printed (`pytest -s`).

The cluster comes from `ffaudit dev elasticsearch up --nodes 3` on free ports of its own,
once for the module (green in 20-40 s on two cores), and goes at the end; the module takes
about 2.5 minutes (docs/capacity.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import ApiError
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch import ConnectionTimeout as ESConnectionTimeout

from audit.db.session import make_engine, session_factory
from audit.devtools import elasticsearch as es
from audit.errors import StoreUnavailableError
from audit.ingest.service import IngestService
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from audit.query.keyrings import TenantKeyrings
from audit.query.service import QueryService
from audit.settings import AuditSettings
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import Verdict
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from tests.integrity.conftest import T0, sample_event

pytestmark = pytest.mark.slow

TENANT = "acme"
BATCH = 10
# Between batches: the stream keeps flowing through every phase without piling up records.
PACE_S = 0.05
PHASE_TIMEOUT_S = 90.0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> tuple[int, int]:
    """A first http port and a first transport port with `count` free ports from each."""
    for base in range(21000, 60000, 157):
        ports = [*range(base, base + count), *range(base + 100, base + 100 + count)]
        if all(_free(p) for p in ports):
            return base, base + 100
    raise AssertionError("no free block of ports for the cluster")


def dev_es(config: es.ElasticsearchConfig, *args: str) -> subprocess.CompletedProcess[str]:
    """`ffaudit dev elasticsearch --runtime-dir ... <args>` as a developer runs it."""
    argv = [sys.executable, "-m", "audit", "dev", "elasticsearch"]
    argv += ["--runtime-dir", str(config.runtime_dir), "--port", str(config.port)]
    argv += ["--transport-port", str(config.transport_port), "--timeout", "240", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[es.ElasticsearchConfig]:
    port, transport = free_ports(3)
    runtime = Path(f"/tmp/ffaudit-es-cluster-{uuid.uuid4().hex[:8]}")
    config = es.ElasticsearchConfig(
        port=port, transport_port=transport, runtime_dir=runtime, nodes=3, timeout_s=240
    )
    started = time.monotonic()
    result = dev_es(config, "up", "--nodes", "3")
    try:
        assert result.returncode == 0, result.stderr[-6000:]
        # One URL a line, the first node's first (scripts that take one line get a node).
        assert result.stdout.split() == config.urls
        print(f"\ncluster of 3 green in {time.monotonic() - started:.1f} s at {config.urls}")
        yield config
    finally:
        down = dev_es(config, "down")  # the layout `up` recorded: all three nodes
        shutil.rmtree(runtime, ignore_errors=True)
        (runtime.parent / f".{runtime.name}.lock").unlink(missing_ok=True)  # `exclusive`'s
        assert down.returncode == 0, down.stderr[-3000:]


@dataclass
class Producer:
    """One stream, sealed as it goes, sent in batches through the real ingest; a batch is
    delivered only once `ingest` returned (the ack). Refusals are retried, as the forward
    protocol's producers do."""

    service: IngestService
    stream: str
    signer: Signer
    sent: list[dict[str, Any]] = field(default_factory=list)
    acked: int = 0  # records acknowledged (always a prefix of `sent`)
    batches: int = 0
    acked_at: list[float] = field(default_factory=list)
    refusals: list[tuple[float, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    failed: BaseException | None = None

    def __post_init__(self) -> None:
        self.sealer = Sealer(
            ChainWriter(self.stream, TENANT, self.signer, policy=CheckpointPolicy(50, None)),
            Pseudonymizer(Keyring.generate(), TENANT),
        )

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        while True:
            try:
                report = await self.service.ingest(batch, source="test")
            except StoreUnavailableError as exc:
                self.refusals.append((time.monotonic(), str(exc)[:160]))
                await asyncio.sleep(0.2)
                continue
            assert [r.outcome for r in report.results] == [Verdict.OK] * len(batch), report
            self.acked += len(batch)
            self.batches += 1
            self.acked_at.append(time.monotonic())
            return

    async def run(self) -> None:
        try:
            await self._run()
        except BaseException as exc:
            self.failed = exc  # for `until`, which would otherwise just time out
            raise

    async def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            batch: list[dict[str, Any]] = []
            while len(batch) < BATCH:
                batch += [r.record for r in self.sealer.seal(sample_event(i))]
                i += 1
            self.sent += batch
            await self.deliver(batch)
            await asyncio.sleep(PACE_S)
        closing = [r.record for r in self.sealer.close(sample_event(i).timestamp)]
        self.sent += closing
        await self.deliver(closing)

    async def until(self, records: int, what: str) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while self.acked < records:
            if self.failed is not None:
                raise AssertionError(f"{what}: the producer failed") from self.failed
            assert time.monotonic() < deadline, f"{what}: {self.acked} of {records} acked"
            await asyncio.sleep(0.02)


@dataclass
class Health:
    """What `/readyz` reports for the store (`store.ping()`) and the cluster's status, as
    they change."""

    store: ElasticEventStore
    started: float = field(default_factory=time.monotonic)
    changes: list[tuple[float, str, bool]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            try:
                health = await self.store.client.cluster.health(timeout="1s")
                status = str(health["status"])
            except (ApiError, ESConnectionError, ESConnectionTimeout):
                status = "unreachable"
            ready = await self.store.ping()
            if not self.changes or self.changes[-1][1:] != (status, ready):
                self.changes.append((round(time.monotonic() - self.started, 1), status, ready))
            await asyncio.sleep(0.25)

    def summary(self) -> str:
        return ", ".join(f"{t}s {s} ready={r}" for t, s, r in self.changes)


@dataclass
class Env:
    config: es.ElasticsearchConfig
    service: IngestService
    store: ElasticEventStore
    streams: StreamService
    prefix: str
    tmp: Path

    @property
    def index(self) -> str:
        return self.store.index_for(TENANT, T0)  # every sample event's day


@contextlib.asynccontextmanager
async def ingest_env(
    config: es.ElasticsearchConfig,
    database_url: str,
    tmp: Path,
    url: str,
    prefix: str,
    **store: Any,
) -> AsyncIterator[Env]:
    """The real IngestService on PostgreSQL and the cluster, talking to the nodes at `url`
    (comma-separated, as FFAUDIT_ELASTICSEARCH_URL takes them)."""
    settings = AuditSettings(database_url=database_url, forward_enabled=False)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    events = ElasticEventStore(url, prefix=prefix, **store)
    try:
        yield Env(
            config,
            IngestService(settings, sessions, events),
            events,
            StreamService(sessions),
            prefix,
            tmp,
        )
    finally:
        await events.close()
        engine.dispose()


async def prepare_index(env: Env) -> dict[str, str]:
    """The day's events index made up front (its template from the store), green; which
    node holds which copy."""
    await env.store.ensure_templates()
    await env.store.client.indices.create(index=env.index)
    await env.store.client.cluster.health(index=env.index, wait_for_status="green", timeout="60s")
    return await copies(env)


async def shards(env: Env) -> list[dict[str, Any]]:
    """The events index's shard copies (`_cat/shards`: node, prirep, state, docs)."""
    response = await env.store.client.cat.shards(index=env.index, format="json")
    rows: Any = response.body
    return [dict(row) for row in rows]


async def copies(env: Env) -> dict[str, str]:
    """Node name -> "p" or "r" for the events index's started copies."""
    return {str(r["node"]): str(r["prirep"]) for r in await shards(env) if r["state"] == "STARTED"}


def number(node_name: str) -> int:
    return int(node_name.rsplit("-", 1)[1])


async def master(env: Env) -> int:
    response = await env.store.client.cat.master(format="json")
    rows: Any = response.body
    return number(str(rows[0]["node"]))


async def assert_all_there(env: Env, producer: Producer, stream: str) -> None:
    """Every acknowledged record stored exactly once, reading back as sent; the chain
    verifies and ends at the committed head; both copies hold everything; green."""
    health = await asyncio.to_thread(es.wait_for_status, env.config, "green", 120.0)
    assert health["status"] == "green"
    assert producer.acked == len(producer.sent)
    stored = [e async for e in env.store.scan(TENANT, stream)]
    assert [e.sequence for e in stored] == list(range(1, len(producer.sent) + 1))
    assert [e.record for e in stored] == producer.sent
    assert {e.verdict for e in stored} == {Verdict.OK}
    # Raw: no second document under any id or (stream, sequence), in any index.
    await env.store.client.indices.refresh(index=f"{env.prefix}-*")
    raw = await env.store.client.search(
        index=f"{env.prefix}-*", size=10_000, query={"match_all": {}}, track_total_hits=True
    )
    hits = raw["hits"]["hits"]
    assert raw["hits"]["total"]["value"] == len(producer.sent)
    ids = [h["_id"] for h in hits]
    keys = [
        (h["_source"]["ffaudit.ingest.stream"], h["_source"]["ffaudit.ingest.sequence"])
        for h in hits
    ]
    assert len(set(ids)) == len(ids) == len(set(keys)) == len(producer.sent)
    assert await env.store.count(TENANT, stream) == len(producer.sent)
    # Each copy (the restarted node's included) holds every record.
    rows = await shards(env)
    assert sorted(r["prirep"] for r in rows) == ["p", "r"], rows
    assert {int(r["docs"]) for r in rows} == {len(producer.sent)}, rows
    # The chain as an auditor re-verifies it, against the head the service committed.
    queries = QueryService(env.store, TenantKeyrings(env.tmp / "keyrings"), env.streams)
    verified = await queries.verify_stream(TENANT, stream)
    assert verified.failures == []
    assert verified.matches_head
    assert verified.records == verified.head_sequence == len(producer.sent)
    assert verified.signed_through == len(producer.sent)


async def one_node_crash(env: Env, victim: int, stream: str) -> None:
    """SIGKILL `victim` mid-stream, keep ingesting, restart it, keep ingesting."""
    before = await copies(env), await master(env)
    signer = Signer.generate()
    env.streams.register(
        StreamRegistration(
            stream=stream, tenant=TENANT, public_key_pem=signer.verifier.pem().decode()
        )
    )
    producer = Producer(env.service, stream, signer)
    health = Health(env.store)
    tasks = [asyncio.create_task(producer.run()), asyncio.create_task(health.run())]
    t0 = time.monotonic()
    try:
        await producer.until(10 * BATCH, "before the crash")
        await asyncio.to_thread(es.kill_node, env.config, victim)
        killed, acked_at_kill = time.monotonic(), producer.acked
        # The replica takes over: ingest goes on with the node gone.
        await producer.until(acked_at_kill + 20 * BATCH, "with a node down")
        down_acks = producer.acked - acked_at_kill
        # Everything acknowledged so far reads back from the copies left, before any restart.
        acked = producer.acked
        readable = [e.record async for e in env.store.scan(TENANT, stream)]
        assert readable[:acked] == producer.sent[:acked]
        await asyncio.to_thread(es.start_node, env.config, victim)
        rejoined = time.monotonic()
        await producer.until(producer.acked + 10 * BATCH, "after the restart")
        producer.stop.set()
        await asyncio.wait_for(tasks[0], PHASE_TIMEOUT_S)
        await assert_all_there(env, producer, stream)
        green = time.monotonic()
        after = await copies(env), await master(env)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(
        f"\n{stream}: copies and master {before}, after {after}; "
        f"killed node {victim} after {killed - t0:.1f} s; {down_acks} records "
        f"acked while it was down; rejoined {rejoined - killed:.1f} s after the kill; green "
        f"and verified {green - rejoined:.1f} s later; {producer.acked} records in "
        f"{producer.batches} acks, {len(producer.refusals)} refusals "
        f"{[r[1] for r in producer.refusals[:3]]}; health: {health.summary()}"
    )
    # One node lost with a replica in place: the service never refused a write.
    assert producer.refusals == []
    assert all(ready for _, _, ready in health.changes), health.summary()


def victim_first(cluster: es.ElasticsearchConfig, victim: int) -> str:
    """Every node's URL for the store, the one about to be killed first: the store is the
    client of the node it was talking to when that node dies."""
    victim_url = cluster.node(victim).url
    return ",".join([victim_url, *(u for u in cluster.urls if u != victim_url)])


def new_prefix() -> str:
    return f"ffaudit-cluster-{uuid.uuid4().hex[:8]}"


async def test_killing_the_node_with_the_primary_loses_no_acknowledged_record(
    cluster: es.ElasticsearchConfig, fresh_postgres_url: str, tmp_path: Path
) -> None:
    prefix = new_prefix()
    async with ingest_env(cluster, fresh_postgres_url, tmp_path, cluster.url, prefix) as probe:
        placed = await prepare_index(probe)
    victim = number(next(name for name, kind in placed.items() if kind == "p"))
    async with ingest_env(
        cluster, fresh_postgres_url, tmp_path, victim_first(cluster, victim), prefix
    ) as env:
        await one_node_crash(env, victim, "cam-primary")
        # The replica was promoted and a replica is back (on the restarted node, unless it
        # took longer than the delayed allocation's minute: then on the third).
        assert sorted((await copies(env)).values()) == ["p", "r"]


async def test_killing_the_elected_master_loses_no_acknowledged_record(
    cluster: es.ElasticsearchConfig, fresh_postgres_url: str, tmp_path: Path
) -> None:
    prefix = new_prefix()
    async with ingest_env(cluster, fresh_postgres_url, tmp_path, cluster.url, prefix) as probe:
        await prepare_index(probe)
        victim = await master(probe)
    async with ingest_env(
        cluster, fresh_postgres_url, tmp_path, victim_first(cluster, victim), prefix
    ) as env:
        await one_node_crash(env, victim, "cam-master")
        # Another node was elected; the old master came back as a follower.
        assert await master(env) != victim


async def test_whole_cluster_down_refuses_then_resumes_losing_nothing(
    cluster: es.ElasticsearchConfig, fresh_postgres_url: str, tmp_path: Path
) -> None:
    # A short retry budget: refusals come within seconds of the cluster going.
    async with ingest_env(
        cluster,
        fresh_postgres_url,
        tmp_path,
        cluster.url,
        new_prefix(),
        retry_budget_s=3.0,
        request_timeout_s=5.0,
    ) as env:
        await prepare_index(env)
        stream = "cam-all"
        signer = Signer.generate()
        env.streams.register(
            StreamRegistration(
                stream=stream, tenant=TENANT, public_key_pem=signer.verifier.pem().decode()
            )
        )
        producer = Producer(env.service, stream, signer)
        health = Health(env.store)
        tasks = [asyncio.create_task(producer.run()), asyncio.create_task(health.run())]
        t0 = time.monotonic()
        try:
            await producer.until(10 * BATCH, "before the crash")
            for n in (1, 2, 3):
                await asyncio.to_thread(es.kill_node, cluster, n)
            killed = time.monotonic()
            deadline = killed + PHASE_TIMEOUT_S
            while not producer.refusals:
                assert time.monotonic() < deadline, "ingest never refused with the cluster down"
                await asyncio.sleep(0.05)
            # The batch in flight at the crash may have been acked; nothing after it is.
            frozen = producer.acked
            while len(producer.refusals) < 3:
                assert time.monotonic() < deadline, "ingest stopped retrying"
                await asyncio.sleep(0.05)
            assert producer.acked == frozen
            # Nothing acknowledged, nothing committed: the head is the last ack.
            assert env.streams.read(stream, tenant_id=TENANT).head_sequence == frozen
            assert not await env.store.ping()
            refused_down = len(producer.refusals)
            await asyncio.to_thread(es.up, cluster)  # all three again, until green
            back = time.monotonic()
            await producer.until(frozen + 10 * BATCH, "after the cluster came back")
            resumed = min(t for t in producer.acked_at if t > killed)
            producer.stop.set()
            await asyncio.wait_for(tasks[0], PHASE_TIMEOUT_S)
            await assert_all_there(env, producer, stream)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        print(
            f"\n{stream}: all nodes killed after {killed - t0:.1f} s; {refused_down} "
            f"refusals while down, 0 acks; green again {back - killed:.1f} s after the kill; "
            f"first ack again {resumed - killed:.1f} s after the kill; {producer.acked} records, "
            f"{len(producer.refusals)} refusals in all; health: {health.summary()}"
        )
        assert any(not ready for _, _, ready in health.changes)
