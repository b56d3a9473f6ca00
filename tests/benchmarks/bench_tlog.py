"""Transparency-log benchmark (audit/tlog): ingest cost, ack-to-inclusion, proofs, verifying.

    .venv/bin/python -m tests.benchmarks.bench_tlog [--json] [--save FILE]
        [--parts throughput,latency,proofs,verify] [--backends sqlite,postgres] [sizes...]

About 6 minutes on a 2-core machine with both backends (the two 1M-leaf builds are more
than half of it); `--leaves 200000` or `--parts` make it shorter.

A script, not a test: nothing asserts on time. The machines are noisy, so every speed is
given as a ratio against a baseline run in the same process on the same backend, with the
absolute numbers beside it for context. Backends: SQLite (control database and the
embedded SQL event store in a temporary directory), and, when FFAUDIT_TEST_POSTGRES_URL and
FFAUDIT_TEST_ELASTICSEARCH_URL are both set, PostgreSQL (a fresh database, dropped after)
with Elasticsearch (a fresh index prefix, dropped after). `--backends sqlite` skips those.

The figures, per backend:

throughput  Ingest with the log on vs off: the same records (`--streams` streams of
            `--records` each, sent by one producer per stream concurrently in calls of
            `--batch`), a fresh database for every run, runs interleaved off,on,off,on...
            (`--pairs`). The checkpointer loop (audit.tlog.checkpointer) runs in every
            run, as in the service. `ratio` = on/off throughput (best run of each)
            [target >= 0.9]; `pair_ratios` are the per-pair figures (their spread is the
            noise). `cpu_ratio` = off/on CPU seconds of this process (best run of each):
            on SQLite that is nearly all the work and far less disturbed by other load on
            the machine than wall time; with PostgreSQL + Elasticsearch the servers' share
            is not in it. `commit_ms_per_call_*` is IngestService._commit's time per call
            in either mode, `append_ms_per_call` the time inside append_accepted (also as a
            share of the commit and per record). When the ratio misses (or with
            `--profile`), one more "on" run is profiled inside append_accepted only:
            time per SQL statement (`profile_statements`; autoflushed rows of the commit's
            own earlier work show up there too) and cProfile's functions by own and
            cumulative share (`profile`). Note: logs start empty here; what an append
            costs in a big log is measured under `proofs`.
latency     Ack to inclusion: `--latency-streams` producers ingest `--latency-batch`
            records per call at a steady total of `--latency-rate` records/s for
            `--latency-seconds`, while Checkpointer.run signs with the default policy
            (tlog_checkpoint_every=256, tlog_checkpoint_interval_s=1.0, tick 0.25 s). For
            each ingest call: the time from its return (the ack) to the commit of the first
            signed checkpoint whose size covers its last record. p50/p99 [p99 <= 2 s].
            The baseline for context is the configured interval plus one tick, the
            policy's worst case when signing itself is free (`p99_over_bound`).
proofs      Inclusion-proof latency in a log of `--leaves` leaves (built with
            TlogRepository.append in transactions of `--build-batch`, random entries,
            sequence = index + 1, then signed): TlogService.inclusion by sequence for
            `--proofs` random sequences, each interleaved with the baseline, a primary-key
            read of one leaf row (TlogRepository.leaf in its own session). p50/p99
            [p99 <= 10 ms] and `ratio_p50`/`ratio_p99` = proof / baseline, stopping after
            `--proof-budget-s` (a slow store still finishes). Every proof timed is
            verified afterwards against the signed checkpoint (untimed). Also: an append of
            `--batch` leaves (with its commit) at the start and at the end of the build
            (`append_small_growth`: end / start), the time per SQL statement of those
            appends and of ten proofs, and the plans of a proof's tlog_nodes and
            tlog_leaves queries (PostgreSQL: EXPLAIN ANALYZE, with planning and
            execution times).

And once, in memory (no backend):

verify      Offline verification: a MemoryTree of `--verify-entries` random entries, one
            signed checkpoint opened once (transparency.open_checkpoint), then every
            entry's inclusion proof checked with transparency.check_inclusion: records/s.
            Baseline: leaf_hash of the same entries alone; `cost_in_leaf_hashes` = verify
            time / that time. Second baseline, the hashing a verifier cannot avoid (one
            leaf hash and one node_hash per proof element, same counts):
            `verify_over_hash_bound` = verify time / that time, 1.0 meaning no overhead
            beyond SHA-256 calls. Best of `--repeat`, the three interleaved.

The garbage collector is disabled inside the verify timings only (the other parts time
the service as it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

import audit.ingest.service as ingest_module
from audit.db.session import make_engine, session_factory, upgrade
from audit.ingest.planner import Plan
from audit.ingest.service import IngestService
from audit.integrity.keys import Signer
from audit.integrity.merkle import MemoryTree, leaf_hash, node_hash
from audit.integrity.notes import (
    Checkpoint,
    NoteSigner,
    parse_policy,
    sign_checkpoint,
)
from audit.integrity.transparency import check_inclusion, open_checkpoint
from audit.models.tlog import TlogLog
from audit.settings import AuditSettings
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore
from audit.store.sql import SqlEventStore
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from audit.tlog.checkpointer import Checkpointer
from audit.tlog.repository import TlogRepository
from audit.tlog.service import TlogService
from audit.tlog.service import append_accepted as _append_accepted
from tests.conftest import drop_prefix
from tests.ingest.conftest import make_records

TENANT = "bench"
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_INCLUSION_P99_S = 2.0
TARGET_PROOF_P99_MS = 10.0
PARTS = ("throughput", "latency", "proofs", "verify")

Records = list[dict[str, Any]]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


# -- backends ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    postgres: str | None = None  # server URL (a fresh database is made per use)
    elasticsearch: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """One fresh control database (and event store) of a backend."""

    url: str
    es_url: str | None
    prefix: str

    def settings(self, **overrides: Any) -> AuditSettings:
        return AuditSettings(
            database_url=self.url,
            elasticsearch_url=self.es_url,
            elasticsearch_index_prefix=self.prefix or "ffaudit-events",
            forward_enabled=False,
            **overrides,
        )

    def store(self) -> EventStore:
        if self.es_url is None:
            return SqlEventStore(self.url)
        return ElasticEventStore(self.es_url, prefix=self.prefix)


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A throwaway database on `server` built by the migrations, dropped even on failure."""
    base = make_url(server)
    name = f"ffaudit_bench_{uuid.uuid4().hex[:12]}"
    params: dict[str, Any] = {
        "host": base.host,
        "port": base.port,
        "user": base.username,
        "password": base.password,
        "dbname": base.database,
        "autocommit": True,
    }
    with psycopg.connect(**params) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = base.set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(**params) as admin:
            for attempt in range(20):
                try:
                    admin.execute(drop)
                    break
                except psycopg.errors.InsufficientPrivilege:
                    # An autovacuum worker (a superuser's backend) FORCE cannot end.
                    if attempt == 19:
                        raise
                    time.sleep(0.5)


@contextlib.contextmanager
def fresh(backend: Backend) -> Iterator[Target]:
    if backend.postgres is None:
        with tempfile.TemporaryDirectory(prefix="ffaudit-bench-tlog-") as workdir:
            url = f"sqlite:///{workdir}/control.db"
            upgrade(url)
            yield Target(url, None, "")
        return
    assert backend.elasticsearch is not None
    prefix = f"ffaudit-bench-tlog-{uuid.uuid4().hex[:10]}"
    try:
        with postgres_database(backend.postgres) as url:
            yield Target(url, backend.elasticsearch, prefix)
    finally:
        drop_prefix(backend.elasticsearch, prefix)


def register(sessions: sessionmaker[Session], signer: Signer, streams: list[str]) -> None:
    service = StreamService(sessions)
    pem = signer.verifier.pem().decode()
    for stream in streams:
        service.register(StreamRegistration(stream=stream, tenant=TENANT, public_key_pem=pem))


# -- instrumentation --------------------------------------------------------------------------


class StatementTimer:
    """Per-statement seconds on one engine, for the statements a thread runs while
    `recording()`: which query of a call takes its time, and the statement to EXPLAIN."""

    def __init__(self, engine: Engine) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.calls: list[tuple[str, Any, float]] = []  # (statement, parameters, seconds)
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = False

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if getattr(self._local, "on", False):
            self._local.started = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if getattr(self._local, "on", False):
            took = time.perf_counter() - self._local.started
            with self._lock:
                self.calls.append((statement, parameters, took))

    def table(self, top: int = 8) -> list[dict[str, Any]]:
        """Time by statement (its first 110 characters), largest first, with shares."""
        by: dict[str, list[float]] = {}
        for statement, _, took in self.calls:
            by.setdefault(" ".join(statement.split())[:110], []).append(took)
        total = sum(sum(v) for v in by.values()) or 1.0
        rows: list[dict[str, Any]] = [
            {
                "statement": key,
                "calls": len(v),
                "ms_per_call": round(1000 * statistics.fmean(v), 3),
                "share": round(sum(v) / total, 3),
            }
            for key, v in by.items()
        ]
        return sorted(rows, key=lambda r: -r["share"])[:top]

    def slowest(self, needle: str) -> tuple[str, Any] | None:
        hits = [(took, st, params) for st, params, took in self.calls if needle in st]
        if not hits:
            return None
        _, statement, parameters = max(hits, key=lambda h: h[0])
        return statement, parameters


def explain(engine: Engine, statement: str, parameters: Any) -> list[str]:
    """The query plan of one statement as the database runs it (PostgreSQL: executed)."""
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    lines = [" | ".join(str(v) for v in row) for row in rows]
    # PostgreSQL's last lines say how long planning and execution took: keep them in view.
    timing = [line for line in lines if line.startswith(("Planning Time", "Execution Time"))]
    return [line for line in lines if line not in timing][:11] + timing


@dataclass(slots=True)
class Probe:
    """Seconds spent in IngestService._commit and in append_accepted, per call."""

    commits: list[float] = field(default_factory=list)
    appends: list[float] = field(default_factory=list)
    profile: cProfile.Profile | None = None
    timer: StatementTimer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


PROBE = Probe()


def _timed_append(*args: Any, **kwargs: Any) -> bool:
    started = time.perf_counter()
    profile = PROBE.profile
    try:
        if profile is None:
            return _append_accepted(*args, **kwargs)
        # One profiler for every worker thread: one append at a time while profiling.
        timer = PROBE.timer
        with PROBE.lock, timer.recording() if timer else contextlib.nullcontext():
            profile.enable()
            try:
                return _append_accepted(*args, **kwargs)
            finally:
                profile.disable()
    finally:
        PROBE.appends.append(time.perf_counter() - started)


# _commit looks the name up in its module at each call.
setattr(ingest_module, "append_accepted", _timed_append)  # noqa: B010


class TimedIngest(IngestService):
    def _commit(self, stream: str, tenant: str, plan: Plan) -> bool:
        started = time.perf_counter()
        try:
            return super()._commit(stream, tenant, plan)
        finally:
            PROBE.commits.append(time.perf_counter() - started)


class RecordingTlog(TlogService):
    """TlogService noting when each checkpoint's transaction committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signed: list[tuple[float, int, int]] = []  # (perf_counter, log id, size)

    def _sign(self, log_id: int) -> int | None:
        size = super()._sign(log_id)
        if size is not None:
            self.signed.append((time.perf_counter(), log_id, size))
        return size


def log_sizes(sessions: sessionmaker[Session]) -> dict[str, tuple[int, int]]:
    """stream -> (log id, size)."""
    with sessions() as session:
        return {row.stream_id: (row.id, row.size) for row in TlogRepository(session).logs(TENANT)}


# -- 1. ingest throughput, log on vs off ------------------------------------------------------


@dataclass(slots=True)
class Run:
    mode: str
    seconds: float
    cpu: float  # this process's CPU seconds (every thread): SQLite's work included
    records: int
    commits: list[float]
    appends: list[float]
    checkpoints: int
    statements: list[dict[str, Any]] = field(default_factory=list)


async def ingest_run(
    backend: Backend,
    workload: dict[str, Records],
    warm: Records,
    signer: Signer,
    batch: int,
    tlog_on: bool,
    profile: cProfile.Profile | None = None,
) -> Run:
    with fresh(backend) as target:
        settings = target.settings(tlog_enabled=tlog_on)
        engine = make_engine(target.url)
        sessions = session_factory(engine)
        register(sessions, signer, [*workload, "warm"])
        store = target.store()
        service = TimedIngest(settings, sessions, store)
        tlog = RecordingTlog(settings, sessions, Ed25519PrivateKey.generate())
        checkpointer = Checkpointer(settings, sessions, tlog, None)
        timer = StatementTimer(engine) if profile is not None else None
        try:
            # First calls pay for templates, pools and caches: not what is measured.
            await service.ingest(warm, source="bench")

            async def produce(records: Records) -> None:
                for i in range(0, len(records), batch):
                    await service.ingest(records[i : i + batch], source="bench")

            loop = asyncio.create_task(checkpointer.run())
            PROBE.commits.clear()
            PROBE.appends.clear()
            PROBE.profile = profile
            PROBE.timer = timer
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(produce(records) for records in workload.values()))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            PROBE.profile = None
            PROBE.timer = None
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            sizes = log_sizes(sessions)
            for stream, records in workload.items():
                got = sizes.get(stream, (0, 0))[1]
                want = len(records) if tlog_on else 0
                if got != want:
                    raise RuntimeError(f"{stream}: log size {got}, expected {want}")
            return Run(
                "on" if tlog_on else "off",
                seconds,
                cpu,
                sum(len(r) for r in workload.values()),
                list(PROBE.commits),
                list(PROBE.appends),
                len(tlog.signed),
                timer.table() if timer is not None else [],
            )
        finally:
            await store.close()
            engine.dispose()


def profile_report(profile: cProfile.Profile, top: int = 14) -> dict[str, Any]:
    """The functions under append_accepted by cumulative and own time, with their shares."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = max(
        (ct for (file, _, name), (_, _, _, ct, _) in raw.items() if name == "append_accepted"),
        default=0.0,
    ) or sum(tt for (_, _, tt, _, _) in raw.values())
    rows: list[dict[str, Any]] = []
    for (file, line, name), (_, nc, tt, ct, _) in raw.items():
        where = file.split("/site-packages/")[-1].split("/work/main/")[-1]
        rows.append(
            {
                "function": f"{where}:{line}({name})",
                "calls": nc,
                "cum_s": round(ct, 4),
                "cum_share": round(ct / total, 3) if total else 0.0,
                "own_s": round(tt, 4),
                "own_share": round(tt / total, 3) if total else 0.0,
            }
        )
    by_cum = sorted(rows, key=lambda r: -r["cum_s"])[:top]
    by_own = sorted(rows, key=lambda r: -r["own_s"])[:top]
    return {"append_accepted_s": round(total, 4), "by_cumulative": by_cum, "by_own": by_own}


async def throughput(backend: Backend, args: argparse.Namespace, quiet: bool) -> dict[str, Any]:
    signer = Signer.generate()
    names = [f"s{k}" for k in range(args.streams)]
    workload = {
        s: make_records(signer, args.records, stream=s, tenant=TENANT, every=100, close=False)
        for s in names
    }
    warm = make_records(signer, 50, stream="warm", tenant=TENANT, every=25, close=False)
    runs: list[Run] = []
    for pair in range(args.pairs):
        for tlog_on in (False, True):
            run = await ingest_run(backend, workload, warm, signer, args.batch, tlog_on)
            runs.append(run)
            say(
                quiet,
                f"  [{backend.name}] pair {pair + 1} log {run.mode:>3}: "
                f"{run.records / run.seconds:>8,.0f} rec/s ({run.seconds:.2f} s, "
                f"{1e6 * run.cpu / run.records:.0f} us CPU a record, "
                f"{run.checkpoints} checkpoints signed)",
            )
    off = [r for r in runs if r.mode == "off"]
    on = [r for r in runs if r.mode == "on"]
    best_off = min(off, key=lambda r: r.seconds)
    best_on = min(on, key=lambda r: r.seconds)
    n = best_on.records
    on_commit = sum(sum(r.commits) for r in on)
    on_append = sum(sum(r.appends) for r in on)
    result: dict[str, Any] = {
        "streams": args.streams,
        "records": n,
        "batch": args.batch,
        "off_records_per_s": n / best_off.seconds,
        "on_records_per_s": n / best_on.seconds,
        "ratio": best_off.seconds / best_on.seconds,
        "pair_ratios": [round(a.seconds / b.seconds, 3) for a, b in zip(off, on, strict=True)],
        "cpu_us_per_record_off": 1e6 * min(r.cpu for r in off) / n,
        "cpu_us_per_record_on": 1e6 * min(r.cpu for r in on) / n,
        "cpu_ratio": min(r.cpu for r in off) / min(r.cpu for r in on),
        "target_ratio": TARGET_THROUGHPUT_RATIO,
        "commit_ms_per_call_off": 1000 * statistics.median(c for r in off for c in r.commits),
        "commit_ms_per_call_on": 1000 * statistics.median(c for r in on for c in r.commits),
        "append_ms_per_call": 1000 * statistics.median(a for r in on for a in r.appends),
        "append_share_of_commit": on_append / on_commit if on_commit else 0.0,
        "append_us_per_record": 1e6 * on_append / sum(r.records for r in on),
        "checkpoints_signed_per_on_run": [r.checkpoints for r in on],
    }
    if args.profile or result["ratio"] < TARGET_THROUGHPUT_RATIO:
        profile = cProfile.Profile()
        run = await ingest_run(backend, workload, warm, signer, args.batch, True, profile)
        result["profile"] = profile_report(profile)
        result["profile_statements"] = run.statements
        result["profile_run_records_per_s"] = run.records / run.seconds
    return result


# -- 2. ack to inclusion ------------------------------------------------------------------------


async def latency(backend: Backend, args: argparse.Namespace, quiet: bool) -> dict[str, Any]:
    signer = Signer.generate()
    names = [f"l{k}" for k in range(args.latency_streams)]
    per_stream_rate = args.latency_rate / len(names)
    calls = max(1, round(per_stream_rate * args.latency_seconds / args.latency_batch))
    workload = {
        s: make_records(
            signer, calls * args.latency_batch, stream=s, tenant=TENANT, every=100, close=False
        )
        for s in names
    }
    warm = make_records(signer, 20, stream="warm", tenant=TENANT, every=10, close=False)
    with fresh(backend) as target:
        settings = target.settings()  # the default checkpoint policy
        engine = make_engine(target.url)
        sessions = session_factory(engine)
        register(sessions, signer, [*names, "warm"])
        store = target.store()
        service = IngestService(settings, sessions, store)
        tlog = RecordingTlog(settings, sessions, Ed25519PrivateKey.generate())
        checkpointer = Checkpointer(settings, sessions, tlog, None)
        acks: list[tuple[str, float, int]] = []  # (stream, ack time, size needed)
        try:
            await service.ingest(warm, source="bench")
            loop = asyncio.create_task(checkpointer.run())
            period = args.latency_batch / per_stream_rate

            async def produce(stream: str, records: Records, offset: float) -> None:
                start = time.perf_counter() + offset
                for k, i in enumerate(range(0, len(records), args.latency_batch)):
                    delay = start + k * period - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    chunk = records[i : i + args.latency_batch]
                    await service.ingest(chunk, source="bench")
                    acks.append((stream, time.perf_counter(), i + len(chunk)))

            started = time.perf_counter()
            await asyncio.gather(
                *(produce(s, workload[s], k * period / len(names)) for k, s in enumerate(names))
            )
            produced_s = time.perf_counter() - started
            ids = {s: log_id for s, (log_id, _) in log_sizes(sessions).items()}
            # Let the loop cover the last acks (the interval rule does within ~1.25 s).
            deadline = time.perf_counter() + settings.tlog_checkpoint_interval_s + 5
            while time.perf_counter() < deadline:
                covered = {
                    lid: max((z for _, l2, z in tlog.signed if l2 == lid), default=0)
                    for lid in ids.values()
                }
                if all(covered[ids[s]] >= len(workload[s]) for s in names):
                    break
                await asyncio.sleep(0.05)
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        finally:
            await store.close()
            engine.dispose()
    waits: list[float] = []
    uncovered = 0
    for stream, acked, size in acks:
        lid = ids[stream]
        when = next((t for t, l2, z in tlog.signed if l2 == lid and z >= size), None)
        if when is None:
            uncovered += 1
            continue
        waits.append(max(0.0, when - acked))
    bound = settings.tlog_checkpoint_interval_s + min(settings.tlog_checkpoint_interval_s / 4, 0.25)
    p99 = pct(waits, 0.99) if waits else float("inf")
    return {
        "streams": len(names),
        "batch": args.latency_batch,
        "target_rate": args.latency_rate,
        "achieved_rate": sum(len(r) for r in workload.values()) / produced_s,
        "ingest_calls": len(acks),
        "checkpoints_signed": len(tlog.signed),
        "uncovered_calls": uncovered,
        "p50_s": statistics.median(waits) if waits else float("inf"),
        "p99_s": p99,
        "max_s": max(waits) if waits else float("inf"),
        "policy_bound_s": bound,
        "p99_over_bound": p99 / bound,
        "target_p99_s": TARGET_INCLUSION_P99_S,
    }


# -- 3. inclusion proofs at 1M leaves -------------------------------------------------------------


@dataclass(slots=True)
class BigLog:
    log_id: int
    build_s: float
    batch_s: list[float]  # each bulk transaction of the build
    small_at_start_ms: list[float]  # appends of `small` leaves to the near-empty log
    small_at_end_ms: list[float]  # ... and to the full one


def build_log(
    sessions: sessionmaker[Session],
    timer: StatementTimer,
    origin: str,
    n: int,
    batch: int,
    small: int,
    probes: int = 5,
) -> BigLog:
    """`n` leaves (sequence = index + 1, random entries): `probes` appends of `small` leaves
    (an ingest call's worth), the bulk in transactions of `batch`, `probes` more small ones;
    each small append is timed with its commit."""
    rng = random.Random(17)
    with sessions.begin() as session:
        log_id = TlogRepository(session).create_log(TENANT, "big", origin).id
    size = 0

    def append(count: int) -> float:
        nonlocal size
        leaves = [(i + 1, rng.randbytes(32)) for i in range(size, size + count)]
        started = time.perf_counter()
        with sessions.begin() as session:
            row = session.get(TlogLog, log_id)
            assert row is not None
            if not TlogRepository(session).append(row, leaves):
                raise RuntimeError("the log moved under the builder")
        size += count
        return time.perf_counter() - started

    started = time.perf_counter()
    head = [1000 * append(small) for _ in range(probes)]
    bulk = []
    while size < n - probes * small:
        bulk.append(append(min(batch, n - probes * small - size)))
    with timer.recording():
        tail = [1000 * append(small) for _ in range(probes)]
    return BigLog(log_id, time.perf_counter() - started, bulk, head, tail)


def proofs(backend: Backend, args: argparse.Namespace, quiet: bool) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    with fresh(backend) as target:
        settings = target.settings()
        engine: Engine = make_engine(target.url)
        sessions = session_factory(engine)
        tlog = TlogService(settings, sessions, key)
        append_timer = StatementTimer(engine)
        try:
            origin = f"{settings.tlog_name}/{TENANT}/big"
            big = build_log(
                sessions, append_timer, origin, args.leaves, args.build_batch, args.batch
            )
            say(quiet, f"  [{backend.name}] built {args.leaves:,} leaves in {big.build_s:.1f} s")
            log_id = big.log_id
            signed = tlog.sign_now(TENANT, "big")
            rng = random.Random(5)
            sequences = [rng.randrange(1, args.leaves + 1) for _ in range(args.proofs)]

            def lookup(index: int) -> None:
                with sessions() as session:
                    if TlogRepository(session).leaf(log_id, index) is None:
                        raise RuntimeError(f"no leaf {index}")

            for s in sequences[:20]:  # warm-up: pools, statement caches
                lookup(s - 1)
                tlog.inclusion(TENANT, "big", sequence=s)
            base_t: list[float] = []
            proof_t: list[float] = []
            made = []
            deadline = time.perf_counter() + args.proof_budget_s
            for s in sequences:
                t0 = time.perf_counter()
                lookup(s - 1)
                t1 = time.perf_counter()
                made.append(tlog.inclusion(TENANT, "big", sequence=s))
                t2 = time.perf_counter()
                base_t.append(t1 - t0)
                proof_t.append(t2 - t1)
                if t2 > deadline:
                    break
            # Where a proof's time goes, statement by statement, and the plan of its
            # node query as the database runs it.
            proof_timer = StatementTimer(engine)
            with proof_timer.recording():
                for s in sequences[:10]:
                    tlog.inclusion(TENANT, "big", sequence=s)
            plans = {}
            for table in ("tlog_nodes", "tlog_leaves"):
                slow = proof_timer.slowest(f"FROM {table}")
                plans[table] = explain(engine, *slow) if slow is not None else []
        finally:
            engine.dispose()
    policy = parse_policy(f"log {tlog.verifier(TENANT, 'big').vkey()}\nquorum none\n")
    verified = open_checkpoint(signed.note.encode(), policy, origin)
    for s, proof in zip(sequences, made, strict=False):
        if proof.index != s - 1 or proof.size != args.leaves:
            raise RuntimeError(f"sequence {s}: proof of leaf {proof.index} at {proof.size}")
        check_inclusion(proof.entry, proof.index, proof.hashes, verified)
    p50, p99 = statistics.median(proof_t), pct(proof_t, 0.99)
    b50, b99 = statistics.median(base_t), pct(base_t, 0.99)
    first, last = big.batch_s[0], big.batch_s[-1]
    return {
        "leaves": args.leaves,
        "build_s": big.build_s,
        "build_leaves_per_s": args.leaves / big.build_s,
        "build_batch": args.build_batch,
        "build_first_batch_s": first,
        "build_last_batch_s": last,
        "append_small": args.batch,
        "append_small_at_start_ms": statistics.median(big.small_at_start_ms),
        "append_small_at_end_ms": statistics.median(big.small_at_end_ms),
        "append_small_growth": statistics.median(big.small_at_end_ms)
        / statistics.median(big.small_at_start_ms),
        "append_statements_at_end": append_timer.table(),
        "proofs": len(proof_t),
        "proofs_wanted": args.proofs,
        "mean_proof_hashes": statistics.fmean(len(p.hashes) for p in made),
        "p50_ms": 1000 * p50,
        "p99_ms": 1000 * p99,
        "baseline_pk_read_p50_ms": 1000 * b50,
        "baseline_pk_read_p99_ms": 1000 * b99,
        "ratio_p50": p50 / b50,
        "ratio_p99": p99 / b99,
        "target_p99_ms": TARGET_PROOF_P99_MS,
        "proof_statements": proof_timer.table(),
        "nodes_query_plan": plans["tlog_nodes"],
        "leaf_query_plan": plans["tlog_leaves"],
    }


# -- 4. offline verification ----------------------------------------------------------------------


def best_of(repeat: int, fns: list[Callable[[], None]]) -> list[float]:
    """Best time of each function over `repeat` interleaved rounds, gc off while timing."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            gc.collect()
            gc.disable()
            try:
                started = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - started)
            finally:
                gc.enable()
    return best


def verify(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    n = args.verify_entries
    entries = [rng.randbytes(32) for _ in range(n)]
    tree = MemoryTree()
    for entry in entries:
        tree.append_entry(entry)
    origin = f"ffaudit/{TENANT}/offline"
    signer = NoteSigner(origin, Ed25519PrivateKey.generate())
    note = sign_checkpoint(Checkpoint(origin, n, tree.root()), signer).encode()
    policy = parse_policy(f"log {signer.verifier.vkey()}\nquorum none\n")
    started = time.perf_counter()
    verified = open_checkpoint(note, policy, origin)
    open_s = time.perf_counter() - started
    proofs_ = [tree.inclusion_proof(i) for i in range(n)]

    def hash_all() -> None:
        for entry in entries:
            leaf_hash(entry)

    def verify_all() -> None:
        for i, entry in enumerate(entries):
            check_inclusion(entry, i, proofs_[i], verified)

    # The hashing a verification cannot avoid: one leaf hash, then one node hash per proof
    # element (64 bytes, a little dearer than a leaf's 33).
    pairs = [(p[0], p[-1]) for p in proofs_ for _ in p]

    def hash_bound() -> None:
        for entry in entries:
            leaf_hash(entry)
        for left, right in pairs:
            node_hash(left, right)

    hash_s, verify_s, bound_s = best_of(args.repeat, [hash_all, verify_all, hash_bound])
    mean_hashes = statistics.fmean(len(p) for p in proofs_)
    return {
        "entries": n,
        "mean_proof_hashes": mean_hashes,
        "open_checkpoint_ms": 1000 * open_s,
        "verify_records_per_s": n / verify_s,
        "leaf_hash_per_s": n / hash_s,
        "cost_in_leaf_hashes": verify_s / hash_s,
        "hash_bound_records_per_s": n / bound_s,
        "verify_over_hash_bound": verify_s / bound_s,
    }


# -- main ---------------------------------------------------------------------------------------


def backends(args: argparse.Namespace) -> list[Backend]:
    wanted = set(args.backends.split(","))
    out = [Backend("sqlite")] if "sqlite" in wanted else []
    pg = os.environ.get("FFAUDIT_TEST_POSTGRES_URL")
    es = os.environ.get("FFAUDIT_TEST_ELASTICSEARCH_URL")
    if pg and es and "postgres" in wanted:
        out.append(Backend("postgres+elasticsearch", pg, es))
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    quiet = args.json
    parts = set(args.parts.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "backends": {},
    }
    started = time.perf_counter()
    for backend in backends(args):
        figures: dict[str, Any] = {}
        if "throughput" in parts:
            say(quiet, f"[{backend.name}] ingest throughput, log off vs on")
            figures["throughput"] = await throughput(backend, args, quiet)
        if "latency" in parts:
            say(quiet, f"[{backend.name}] ack-to-inclusion latency")
            figures["latency"] = await latency(backend, args, quiet)
        if "proofs" in parts:
            say(quiet, f"[{backend.name}] inclusion proofs at {args.leaves:,} leaves")
            figures["proofs"] = await asyncio.to_thread(proofs, backend, args, quiet)
        result["backends"][backend.name] = figures
    if "verify" in parts:
        say(quiet, "offline verification")
        result["verify"] = verify(args)
    result["total_s"] = time.perf_counter() - started
    return result


def statements(rows: list[dict[str, Any]], title: str) -> None:
    print(title)
    for row in rows[:6]:
        print(
            f"    {100 * row['share']:5.1f}%  {row['calls']:>5} x {row['ms_per_call']:8.3f} ms  "
            f"{row['statement']}"
        )


def report(result: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"\nCPython {result['python']}, {result['cpus']} CPUs, {result['total_s']:.0f} s in all")
    for name, figures in result["backends"].items():
        print(f"\n== {name}")
        if t := figures.get("throughput"):
            print(
                f"ingest, {t['streams']} streams x {t['records'] // t['streams']:,} records, "
                f"calls of {t['batch']}:"
            )
            print(f"  log off  {t['off_records_per_s']:>9,.0f} rec/s (best run)")
            print(f"  log on   {t['on_records_per_s']:>9,.0f} rec/s (best run)")
            print(
                f"  ratio on/off = {t['ratio']:.3f} (pairs {t['pair_ratios']})   "
                f"target >= {t['target_ratio']}: {verdict(t['ratio'] >= t['target_ratio'])}"
            )
            print(
                f"  this process's CPU a record: off {t['cpu_us_per_record_off']:.0f} us, on "
                f"{t['cpu_us_per_record_on']:.0f} us: ratio off/on {t['cpu_ratio']:.3f} "
                "(less noisy than wall time on a shared machine)"
            )
            print(
                f"  commit per call: off {t['commit_ms_per_call_off']:.1f} ms, on "
                f"{t['commit_ms_per_call_on']:.1f} ms, of which append_accepted "
                f"{t['append_ms_per_call']:.1f} ms ({100 * t['append_share_of_commit']:.0f}% "
                f"of commit time; {t['append_us_per_record']:.0f} us a record)"
            )
            if "profile_statements" in t:
                statements(t["profile_statements"], "  inside append_accepted, by statement:")
            if "profile" in t:
                total = t["profile"]["append_accepted_s"]
                print(f"  cProfile inside append_accepted ({total:.3f} s in all), by own time:")
                for row in t["profile"]["by_own"][:10]:
                    print(
                        f"    {100 * row['own_share']:5.1f}% own {100 * row['cum_share']:5.1f}% "
                        f"cum  {row['calls']:>8}  {row['function']}"
                    )
        if lat := figures.get("latency"):
            print(
                f"ack -> signed checkpoint covering it ({lat['streams']} streams, calls of "
                f"{lat['batch']}, {lat['achieved_rate']:,.0f} of {lat['target_rate']:,} rec/s, "
                f"{lat['ingest_calls']} calls, {lat['checkpoints_signed']} checkpoints):"
            )
            print(
                f"  p50 {1000 * lat['p50_s']:.0f} ms  p99 {1000 * lat['p99_s']:.0f} ms  "
                f"max {1000 * lat['max_s']:.0f} ms   policy bound (interval + tick) "
                f"{1000 * lat['policy_bound_s']:.0f} ms, p99/bound {lat['p99_over_bound']:.2f}"
            )
            print(
                f"  target p99 <= {lat['target_p99_s']} s: "
                f"{verdict(lat['p99_s'] <= lat['target_p99_s'])}"
                + (
                    f"  ({lat['uncovered_calls']} calls never covered)"
                    if lat["uncovered_calls"]
                    else ""
                )
            )
        if p := figures.get("proofs"):
            print(
                f"inclusion proof at {p['leaves']:,} leaves (built at "
                f"{p['build_leaves_per_s']:,.0f} leaves/s, {p['mean_proof_hashes']:.1f} "
                f"hashes a proof):"
            )
            print(
                f"  build batches of {p['build_batch']:,}: first {p['build_first_batch_s']:.2f} s,"
                f" last {p['build_last_batch_s']:.2f} s; an append of {p['append_small']} leaves "
                f"(with commit): {p['append_small_at_start_ms']:.1f} ms at the start, "
                f"{p['append_small_at_end_ms']:.1f} ms at {p['leaves']:,} "
                f"({p['append_small_growth']:.1f}x)"
            )
            statements(
                p["append_statements_at_end"], f"  that append at {p['leaves']:,}, by statement:"
            )
            done = p["proofs"]
            if done < p["proofs_wanted"]:
                print(f"  {done} of {p['proofs_wanted']} proofs timed (time budget reached)")
            print(f"  TlogService.inclusion  p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms")
            print(
                f"  PK read of one leaf    p50 {p['baseline_pk_read_p50_ms']:.2f} ms  "
                f"p99 {p['baseline_pk_read_p99_ms']:.2f} ms"
            )
            print(
                f"  ratio p50 {p['ratio_p50']:.1f}x  p99 {p['ratio_p99']:.1f}x   "
                f"target p99 <= {p['target_p99_ms']} ms: "
                f"{verdict(p['p99_ms'] <= p['target_p99_ms'])}"
            )
            statements(p["proof_statements"], "  a proof, by statement:")
            for table in ("leaf", "nodes"):
                print(f"  plan of its {table} query:")
                for line in p[f"{table}_query_plan"]:
                    print(f"    {line}")
    if v := result.get("verify"):
        print(f"\n== offline verification, {v['entries']:,} proofs, one checkpoint")
        print(f"  open_checkpoint once        {v['open_checkpoint_ms']:.2f} ms")
        print(f"  check_inclusion        {v['verify_records_per_s']:>10,.0f} records/s")
        print(f"  leaf_hash alone        {v['leaf_hash_per_s']:>10,.0f} entries/s")
        print(
            f"  hashing alone (1 leaf + {v['mean_proof_hashes']:.1f} node hashes a record) "
            f"{v['hash_bound_records_per_s']:>10,.0f} records/s"
        )
        print(
            f"  cost = {v['cost_in_leaf_hashes']:.1f} leaf hashes a record; "
            f"{v['verify_over_hash_bound']:.2f}x the hashing it cannot avoid"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", type=Path, help="also write the JSON result to this file")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS)
    )
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="sqlite, postgres (PostgreSQL + Elasticsearch, only when both URLs are set)",
    )
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--records", type=int, default=3000, help="per stream and run")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--pairs", type=int, default=2, help="off,on pairs per backend")
    parser.add_argument("--profile", action="store_true", help="profile even if the ratio is met")
    parser.add_argument("--latency-streams", type=int, default=2)
    parser.add_argument("--latency-rate", type=int, default=400, help="records/s, all streams")
    parser.add_argument("--latency-batch", type=int, default=50)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--build-batch", type=int, default=10_000)
    parser.add_argument("--proofs", type=int, default=1000)
    parser.add_argument(
        "--proof-budget-s", type=float, default=20.0, help="stop timing proofs after this"
    )
    parser.add_argument("--verify-entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.save is not None:
        args.save.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        report(result)


if __name__ == "__main__":
    main()
