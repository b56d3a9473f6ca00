"""Who-did-what at scale: query latency and stored-chain verification on Elasticsearch.

    .venv/bin/python -m tests.benchmarks.bench_query [--events N] [--no-reuse] [--json]

A script, not a test: nothing asserts on time. It loads N sealed records (default 1M) into
Elasticsearch under a fixed index prefix and keeps them, with the keys and a control
database, in `--state-dir`; a later run whose manifest and document count match reuses them
instead of loading again (`--no-reuse` reloads).

The data: three tenants, one of them with 25 engine streams; one stream holds a quarter of
all records (verification of a long chain). Thousands of actors (a few heavy users, a long
tail) submit jobs over 30 days of record time: submitted, started, detected, swapped (one
summary record per video; failed frames one by one, as selective auditing logs them),
completed or failed, input erased. Records are sealed exactly as an engine seals them
(Sealer: pseudonyms under the tenant's keyring, chain, signed checkpoints) and written with
`ElasticEventStore.write`, so the documents are the store's own.

Measured through the service's own code paths:

* query latency (p50/p95 of `--runs` each, after warm-up, kinds interleaved): what
  GET /v1/events, /v1/stats and /v1/jobs/{id} run (`QueryService.build` pseudonymising the
  raw actor under the tenant's keyring, then the store). Each run asks something different
  (another actor, range or job) and the shard request cache is emptied first, so no answer
  comes from a cache. (Over immutable past daily indices that cache is a real asset of
  repeated dashboard aggregations; it is left out here to measure the work itself.)
* verification rate: `QueryService.verify_stream` (what POST /v1/verify runs) over the
  large stream, in this process (`jobs=1`) and on `--jobs` worker processes (a point in
  time read in sequence ranges, audit.query.parallel_verify; 1 worker shows what the
  machinery costs), against the raw rate of reading the same documents in the same run:
  `store.scan` without verification, and the client's own `search_after` paging of
  `_source` (same query, sort and page size). Runs interleaved; best of `--repeat`. The
  ratio reported against the target is the best verification over the raw paging; each
  one's ratio is printed too. Workers compete for the cores with Elasticsearch itself:
  the load average is printed with the result.
Elasticsearch comes from FFAUDIT_TEST_ELASTICSEARCH_URL or `ffaudit dev elasticsearch up`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import platform
import pstats
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.orm import Session, sessionmaker

from audit.db.session import make_engine, session_factory, upgrade
from audit.integrity.chain import ChainWriter, CheckpointPolicy, SealedRecord
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from audit.query.parallel_verify import verify_parallel
from audit.query.service import Filters, QueryService
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import StoredEvent
from audit.streams.repository import StreamRepository
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from tests.benchmarks.bench_ingest import elasticsearch_url

TARGET_P95_MS = 100.0
TARGET_VERIFY_RATIO = 0.8
PREFIX = "ffaudit-qbench"
FORMAT = 1  # bump when the generated data changes: old state is then reloaded
T0 = datetime(2026, 10, 22, tzinfo=UTC)
DAYS = 30
# tenant -> (streams, actors); the first stream of the first tenant is the large one.
TENANTS = {"qb-acme": (25, 3000), "qb-globex": (4, 600), "qb-initech": (2, 400)}
BIG_STREAM = "engine-acme-00"
OOM = "CUDA out of memory on frame {frame} (tried to allocate 2.00 GiB)"


# -- data ----------------------------------------------------------------------------------


def job_number(stream_index: int, job: int) -> int:
    """Job ids unique within a tenant, reproducible from (stream, job) alone."""
    return stream_index * 10**6 + job


@dataclass(frozen=True, slots=True)
class StreamPlan:
    tenant: str
    stream: str
    records: int  # at least this many, closing checkpoint included


def plan(events: int) -> list[StreamPlan]:
    """A quarter of the records in one stream; the rest spread over the other streams."""
    big = events // 4
    others = sum(n for n, _ in TENANTS.values()) - 1
    each = (events - big) // others
    out = []
    for tenant, (streams, _actors) in TENANTS.items():
        short = tenant.removeprefix("qb-")
        for k in range(streams):
            name = f"engine-{short}-{k:02d}"
            out.append(StreamPlan(tenant, name, big if name == BIG_STREAM else each))
    return out


def job_events(
    rng: random.Random, tenant: str, actors: int, job: int, at: datetime
) -> list[AuditEvent]:
    """One job of one actor, as an engine records it."""
    # Heavy users and a long tail: a tenth of the actors submit most of the jobs.
    actor = f"user-{rng.randrange(actors // 10 if rng.random() < 0.7 else actors):05d}"
    session = f"sess-{tenant}-{actor}-{job // 5}"
    ip = f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    video = rng.random() < 0.4
    target = f"/srv/uploads/{actor}/{job:08d}.{'mp4' if video else 'png'}"
    job_id = f"job-{tenant}-{job:08d}"
    digest = f"{rng.getrandbits(256):064x}"
    base: dict[str, Any] = dict(
        actor=actor, session=session, client_ip=ip, target=target, job_id=job_id
    )
    t = at
    out: list[AuditEvent] = []

    def add(action: EventAction, outcome: Outcome = Outcome.SUCCESS, **extra: Any) -> None:
        nonlocal t
        t += timedelta(milliseconds=rng.randrange(20, 4000))
        out.append(AuditEvent(action, outcome, t, **base, **extra))

    model = {"model": "inswapper_128", "model_version": "1.0", "blend_ratio": 0.75}
    add(
        EventAction.JOB_SUBMITTED,
        file_sha256=digest,
        metadata={**model, "kind": "video" if video else "image"},
    )
    add(EventAction.JOB_STARTED, metadata={"provider": "CUDAExecutionProvider", "gpu": "T4"})
    add(
        EventAction.FACE_DETECTED,
        metadata={"faces": rng.randrange(1, 5), "detector": "retinaface_10g"},
    )
    failed_frames = 0
    if video:
        frames = rng.randrange(120, 3000)
        for _ in range(rng.choice((0, 0, 0, 0, 1, 2, 5))):
            frame = rng.randrange(frames)
            failed_frames += 1
            add(
                EventAction.FRAME_FAILED,
                Outcome.FAILURE,
                error_type="CUDAOutOfMemoryError",
                error_message=OOM.format(frame=frame),
                metadata={"frame": frame, "execution_time_ms": round(rng.uniform(20, 90), 3)},
            )
        swapped = {
            "frames": frames,
            "failed_frames": failed_frames,
            "output_resolution": "1920x1080",
        }
    else:
        swapped = {
            "source_face_index": 0,
            "target_face_index": rng.randrange(3),
            "output_resolution": "1024x1024",
        }
    add(
        EventAction.FACE_SWAPPED,
        metadata={**swapped, "execution_time_ms": round(rng.uniform(40, 900), 3)},
    )
    if rng.random() < 0.08:
        add(
            EventAction.JOB_FAILED,
            Outcome.FAILURE,
            error_type=rng.choice(("NoFaceDetected", "ModelLoadError", "TimeoutError")),
            error_message="job aborted: no usable face in the source image",
        )
    else:
        add(
            EventAction.JOB_COMPLETED,
            file_sha256=digest,
            metadata={"output_sha256": f"{rng.getrandbits(256):064x}"},
        )
    add(EventAction.INPUT_ERASED, metadata={"reason": "processed"})
    return out


def sealed_stream(
    spec: StreamPlan, index: int, signer: Signer, keyring: Keyring, seed: int
) -> Iterator[SealedRecord]:
    """The stream's records in order: jobs spread evenly over DAYS of record time."""
    rng = random.Random(f"{seed}:{spec.stream}")
    actors = TENANTS[spec.tenant][1]
    sealer = Sealer(
        ChainWriter(spec.stream, spec.tenant, signer, policy=CheckpointPolicy(1000, 600.0)),
        Pseudonymizer(keyring, spec.tenant),
    )
    jobs = spec.records // 7 + 1  # about 7 records a job
    step = timedelta(days=DAYS) / jobs
    at, job, last = T0, 0, T0
    while sealer.writer.head.sequence < spec.records - 1:
        events = job_events(rng, spec.tenant, actors, job_number(index, job), at)
        for event in events:
            if sealer.writer.head.sequence >= spec.records - 1:
                break
            yield from sealer.seal(event)
            last = event.timestamp or last
        job += 1
        at = T0 + step * job + timedelta(seconds=rng.randrange(60))
    yield from sealer.close(last)


def stored(record: dict[str, Any], tenant: str, received: datetime) -> StoredEvent:
    sequence = record["event.sequence"]
    stream = record["ffaudit.stream"]
    return StoredEvent(
        doc_id=f"{stream}:{sequence}",
        tenant=tenant,
        stream=stream,
        sequence=sequence,
        event_hash=record["event.hash"],
        timestamp=datetime.fromisoformat(record["@timestamp"]),
        record=record,
        verdict="ok",
        failure=None,
        received_at=received,
    )


# -- state ---------------------------------------------------------------------------------


@dataclass(slots=True)
class State:
    directory: Path
    manifest: dict[str, Any]

    @property
    def control_db(self) -> str:
        return f"sqlite:///{self.directory / 'control.db'}"

    @property
    def keyrings(self) -> Path:
        return self.directory / "keyrings"


async def count_documents(store: ElasticEventStore) -> int:
    await store.refresh()
    response = await store.client.count(
        index=f"{store.prefix}-*", ignore_unavailable=True, allow_no_indices=True
    )
    return int(response["count"])


async def drop_indices(store: ElasticEventStore) -> None:
    # ES 8 refuses wildcard deletes (action.destructive_requires_name): name them.
    names = await store.client.options(ignore_status=404).indices.get(index=f"{store.prefix}-*")
    for name in names.body if isinstance(names.body, dict) else {}:
        await store.client.indices.delete(index=name)


async def load(
    store: ElasticEventStore, events: int, seed: int, directory: Path, batch: int
) -> State:
    """Seal and write every stream; register streams and their heads in a control DB."""
    await drop_indices(store)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in ("control.db", "manifest.json"):
        (directory / stale).unlink(missing_ok=True)
    signer = Signer.generate()
    (directory / "signing.key").write_bytes(signer.pem())
    state = State(directory, {})
    keyrings = TenantKeyrings(state.keyrings)
    rings = {t: keyrings.import_keyring(t, Keyring.generate().dumps()) for t in TENANTS}
    upgrade(state.control_db)
    sessions = session_factory(make_engine(state.control_db))
    streams = StreamService(sessions)
    received = datetime.now(UTC)
    total, started = 0, time.perf_counter()
    heads: dict[tuple[str, str], tuple[int, str, int, bool]] = {}
    for spec in plan(events):
        index = int(spec.stream.rsplit("-", 1)[1])
        streams.register(
            StreamRegistration(
                stream=spec.stream,
                tenant=spec.tenant,
                public_key_pem=signer.verifier.pem().decode(),
            )
        )
        pending: list[StoredEvent] = []
        writes: list[asyncio.Task[Any]] = []
        signed = 0
        last: dict[str, Any] = {}
        for sealed in sealed_stream(spec, index, signer, rings[spec.tenant], seed):
            last = sealed.record
            if last["event.action"] == "audit.checkpoint":
                signed = last["event.sequence"]
            pending.append(stored(last, spec.tenant, received))
            if len(pending) >= batch:
                # Two bulk writes in flight: sealing the next batch overlaps the write.
                if len(writes) >= 2:
                    await writes.pop(0)
                writes.append(asyncio.create_task(store.write(pending)))
                pending = []
        writes.append(asyncio.create_task(store.write(pending)))
        for write in writes:
            await write
        total += last["event.sequence"]
        heads[spec.tenant, spec.stream] = (
            last["event.sequence"],
            last["event.hash"],
            signed,
            True,
        )
        rate = total / (time.perf_counter() - started)
        print(
            f"  {spec.stream}: {last['event.sequence']:,} records ({total:,}, {rate:,.0f}/s)",
            file=sys.stderr,
        )
    set_heads(sessions, heads)
    await store.refresh()
    state.manifest = {
        "format": FORMAT,
        "prefix": store.prefix,
        "events": events,
        "seed": seed,
        "records": total,
    }
    (directory / "manifest.json").write_bytes(orjson.dumps(state.manifest))
    return state


def set_heads(
    sessions: sessionmaker[Session], heads: dict[tuple[str, str], tuple[int, str, int, bool]]
) -> None:
    """The heads the service would have accepted after ingesting every record."""
    with sessions.begin() as session:
        repo = StreamRepository(session)
        for (tenant, stream), (sequence, hash_, signed, closed) in heads.items():
            head = repo.get_head(tenant, stream)
            assert head is not None
            moved = repo.advance_head(
                tenant,
                stream,
                expected_sequence=head.sequence,
                expected_hash=head.hash,
                sequence=sequence,
                hash_=hash_,
                signed_through=signed,
                last_checkpoint=signed,
                closed=closed,
            )
            assert moved, stream


async def prepared(
    store: ElasticEventStore, args: argparse.Namespace
) -> tuple[State, float | None]:
    directory: Path = args.state_dir
    manifest_path = directory / "manifest.json"
    if args.reuse and manifest_path.is_file():
        manifest = orjson.loads(manifest_path.read_bytes())
        wanted = {
            "format": FORMAT,
            "prefix": store.prefix,
            "events": args.events,
            "seed": args.seed,
        }
        if {k: manifest.get(k) for k in wanted} == wanted and manifest[
            "records"
        ] == await count_documents(store):
            print(
                f"reusing {manifest['records']:,} records under {store.prefix}-*", file=sys.stderr
            )
            return State(directory, manifest), None
    print(
        f"loading {args.events:,} records under {store.prefix}-* (state in {directory})",
        file=sys.stderr,
    )
    started = time.perf_counter()
    state = await load(store, args.events, args.seed, directory, args.batch)
    return state, time.perf_counter() - started


# -- queries -------------------------------------------------------------------------------

# One run of a query: the hits it got and the seconds the measured part took.
Query = Callable[[], Awaitable[tuple[int, float]]]


def query_kinds(service: QueryService, rng: random.Random) -> dict[str, Callable[[], Query]]:
    """Each kind makes a fresh query per run: another actor, range or job."""
    tenant = "qb-acme"
    actors = TENANTS[tenant][1]

    def actor() -> str:
        # Mostly the busy tenth of the actors, sometimes the long tail.
        return f"user-{rng.randrange(actors // 10 if rng.random() < 0.7 else actors):05d}"

    def week() -> tuple[datetime, datetime]:
        start = T0 + timedelta(minutes=rng.randrange((DAYS - 7) * 24 * 60))
        return start, start + timedelta(days=7)

    def job_id() -> str:
        # Every stream of the tenant has at least 3000 jobs at the default size.
        number = job_number(rng.randrange(TENANTS[tenant][0]), rng.randrange(3000))
        return f"job-{tenant}-{number:08d}"

    def search(filters: Filters) -> Query:
        async def run() -> tuple[int, float]:
            # Timed from the raw filters: pseudonymising the actor is part of the query.
            started = time.perf_counter()
            page = await service.search(service.build(tenant, None, filters), 100, None)
            return len(page.events), time.perf_counter() - started

        return run

    def actor_only() -> Query:
        return search(Filters(actor=actor()))

    def actor_week() -> Query:
        since, until = week()
        return search(Filters(actor=actor(), since=since, until=until))

    def failures_in_range() -> Query:
        since, until = week()
        actions = ("job.failed", "frame.failed")
        return search(Filters(actions=actions, outcomes=("failure",), since=since, until=until))

    def free_text() -> Query:
        words = rng.choice(("out of memory", "no usable face", "cuda", "timeouterror", "aborted"))
        since, until = week()
        return search(Filters(text=words, since=since, until=until))

    def job_timeline() -> Query:
        job = job_id()

        async def run() -> tuple[int, float]:
            started = time.perf_counter()
            events = await service.store.by_job(tenant, job)
            return len(events), time.perf_counter() - started

        return run

    def stats_by_day() -> Query:
        # Shifted by some seconds each run: a repeated aggregation (size 0) would come from
        # Elasticsearch's shard request cache, and measure nothing. (query_latency empties
        # that cache first, since a later run with the same seed asks the same again.)
        since = T0 + timedelta(seconds=rng.randrange(24 * 3600))
        filters = Filters(since=since, until=since + timedelta(days=DAYS))

        async def run() -> tuple[int, float]:
            started = time.perf_counter()
            counts = await service.store.stats(service.build(tenant, None, filters), by="day")
            return sum(counts.values()), time.perf_counter() - started

        return run

    def page_two() -> Query:
        since, until = week()
        filters = Filters(since=since, until=until)

        async def run() -> tuple[int, float]:
            first = await service.search(service.build(tenant, None, filters), 100, None)
            assert first.next_cursor is not None
            # Only the second page is timed: the first one is how a caller got the cursor.
            started = time.perf_counter()
            query = service.build(tenant, None, filters)
            page = await service.search(query, 100, first.next_cursor)
            return len(page.events), time.perf_counter() - started

        return run

    return {
        "actor": actor_only,
        "actor + 7 days": actor_week,
        "failures in 7 days": failures_in_range,
        "job timeline": job_timeline,
        "stats by day, 30 days": stats_by_day,
        "free text, 7 days": free_text,
        "page 2 via cursor": page_two,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def query_latency(
    service: QueryService, runs: int, warmup: int, seed: int
) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    store = service.store
    assert isinstance(store, ElasticEventStore)
    await store.client.indices.clear_cache(index=f"{store.prefix}-*", request=True)
    kinds = query_kinds(service, rng)
    times: dict[str, list[float]] = {name: [] for name in kinds}
    hits: dict[str, list[int]] = {name: [] for name in kinds}
    for n in range(warmup + runs):
        names = list(kinds)
        rng.shuffle(names)  # interleaved, in another order each round
        for name in names:
            got, elapsed = await kinds[name]()()
            if n >= warmup:
                times[name].append(elapsed)
                hits[name].append(got)
    return {
        name: {
            "p50_ms": 1000 * pct(t, 0.5),
            "p95_ms": 1000 * pct(t, 0.95),
            "max_ms": 1000 * max(t),
            "mean_hits": sum(hits[name]) / len(hits[name]),
            "runs": len(t),
        }
        for name, t in times.items()
    }


# -- verification --------------------------------------------------------------------------


async def raw_source_scan(store: ElasticEventStore, tenant: str, stream: str) -> int:
    """The client's own search_after paging of _source: the same query, sort and page size
    as `store.scan`, nothing built from the hits."""
    query = {
        "bool": {
            "filter": [
                {"term": {"ffaudit.ingest.tenant": tenant}},
                {"term": {"ffaudit.ingest.stream": stream}},
                {"range": {"ffaudit.ingest.sequence": {"gte": 1}}},
            ]
        }
    }
    sort = [{"ffaudit.ingest.sequence": "asc"}, {"ffaudit.ingest.doc_id": "asc"}]
    count, after = 0, None
    while True:
        extra: dict[str, Any] = {} if after is None else {"search_after": after}
        response = await store.client.search(
            index=f"{store.prefix}-{tenant}-*",
            query=query,
            sort=sort,
            size=store.page_size,
            track_total_hits=False,
            ignore_unavailable=True,
            allow_no_indices=True,
            **extra,
        )
        hits = response["hits"]["hits"]
        for hit in hits:
            count += hit["_source"] is not None
        if len(hits) < store.page_size:
            return count
        after = hits[-1]["sort"]


async def store_scan(store: ElasticEventStore, tenant: str, stream: str) -> int:
    count = 0
    async for _event in store.scan(tenant, stream):
        count += 1
    return count


async def verified(service: QueryService, tenant: str, stream: str, jobs: int = 1) -> int:
    result = await service.verify_stream(tenant, stream, jobs=jobs)
    assert not result.failures, result.failures[:3]
    assert result.matches_head
    return result.records


async def one_worker(service: QueryService, tenant: str, stream: str) -> int:
    """The parallel path with a single worker: what starting it, reading the point in time
    and joining cost against the same work in this process."""
    run = await verify_parallel(
        service.store,
        service.streams.verifier(tenant, stream),
        tenant,
        stream,
        start=1,
        end=None,
        seed=None,
        jobs=1,
        min_records=1,
    )
    assert run is not None
    assert not run.failures, run.failures[:3]
    return run.records


async def timed(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    gc.collect()
    started = time.perf_counter()
    count = await run()
    return time.perf_counter() - started, count


RAW = "raw search_after of _source"
IN_PROCESS = "verify_stream, in process"


async def verification(
    service: QueryService, store: ElasticEventStore, repeat: int, jobs: list[int]
) -> dict[str, Any]:
    tenant = "qb-acme"
    runs: dict[str, Callable[[], Awaitable[int]]] = {
        RAW: lambda: raw_source_scan(store, tenant, BIG_STREAM),
        "store.scan": lambda: store_scan(store, tenant, BIG_STREAM),
        IN_PROCESS: lambda: verified(service, tenant, BIG_STREAM),
    }
    for n in jobs:
        if n == 1:
            runs["verify_stream, 1 worker"] = lambda: one_worker(service, tenant, BIG_STREAM)
        else:
            runs[f"verify_stream, {n} workers"] = partial(verified, service, tenant, BIG_STREAM, n)
    best = {name: float("inf") for name in runs}
    records = 0
    for k in range(repeat):
        order = list(runs) if k % 2 == 0 else list(runs)[::-1]
        for name in order:
            elapsed, count = await timed(runs[name])
            records = records or count
            assert count == records, (name, count, records)
            best[name] = min(best[name], elapsed)
    rates = {name: records / s for name, s in best.items()}
    verifications = [name for name in runs if name.startswith("verify_stream")]
    return {
        "stream": BIG_STREAM,
        "records": records,
        "records_per_s": rates,
        "over_raw_source": {name: rates[name] / rates[RAW] for name in verifications},
        "verify_over_raw_source": max(rates[name] for name in verifications) / rates[RAW],
        "verify_over_store_scan": rates[IN_PROCESS] / rates["store.scan"],
        "load_average_after": os.getloadavg(),
    }


async def profile_verify(service: QueryService, out: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    await verified(service, "qb-acme", BIG_STREAM)
    profiler.disable()
    profiler.dump_stats(out)
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(30)


# -- main ----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    url = elasticsearch_url()
    loader = ElasticEventStore(url, prefix=args.prefix, bulk_chunk=2500, request_timeout_s=120)
    try:
        state, load_s = await prepared(loader, args)
    finally:
        await loader.close()
    store = ElasticEventStore(url, prefix=args.prefix)
    sessions = session_factory(make_engine(state.control_db))
    service = QueryService(store, TenantKeyrings(state.keyrings), StreamService(sessions))
    try:
        if args.profile:
            await profile_verify(service, args.profile)
            return {}
        latency = (
            await query_latency(service, args.runs, args.warmup, args.seed)
            if "queries" in args.parts
            else None
        )
        verify = (
            await verification(service, store, args.repeat, args.jobs)
            if "verify" in args.parts
            else None
        )
    finally:
        await store.close()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "records": state.manifest["records"],
        "load_s": load_s,
        "queries": latency,
        "target_p95_ms": TARGET_P95_MS,
        "verify": verify,
        "target_verify_ratio": TARGET_VERIFY_RATIO,
    }


MET = {True: "met", False: "MISSED"}


def report(r: dict[str, Any]) -> None:
    loaded = "reused" if r["load_s"] is None else f"loaded in {r['load_s']:.0f} s"
    print(
        f"CPython {r['python']} on {r['platform']} ({r['cpus']} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in r['load_average'])})\n"
        f"{r['records']:,} records in Elasticsearch ({loaded})"
    )
    if r["queries"] is not None:
        queries(r["queries"])
    if r["verify"] is not None:
        verification_report(r["verify"])


def queries(results: dict[str, dict[str, float]]) -> None:
    print(
        f"query latency, {next(iter(results.values()))['runs']:.0f} runs each after warm-up (ms):"
    )
    print(
        f"  {'query':<24} {'p50':>7} {'p95':>7} {'max':>7} {'hits':>7}  "
        f"p95 <= {TARGET_P95_MS:.0f} ms"
    )
    for name, q in results.items():
        print(
            f"  {name:<24} {q['p50_ms']:7.1f} {q['p95_ms']:7.1f} {q['max_ms']:7.1f} "
            f"{q['mean_hits']:7.1f}  {MET[q['p95_ms'] <= TARGET_P95_MS]}"
        )


def verification_report(v: dict[str, Any]) -> None:
    print(f"verification of {v['stream']} ({v['records']:,} records), best of the runs:")
    for name, rate in v["records_per_s"].items():
        over = v["over_raw_source"].get(name)
        share = "" if over is None else f"   {over:.2f} of raw paging"
        print(f"  {name:<28} {rate:>9,.0f} records/s{share}")
    ratio = v["verify_over_raw_source"]
    print(
        f"  best verify / raw _source paging = {ratio:.2f}   target >= {TARGET_VERIFY_RATIO}: "
        f"{MET[ratio >= TARGET_VERIFY_RATIO]}\n"
        f"  in-process verify / store.scan   = {v['verify_over_store_scan']:.2f}\n"
        f"  load average after: {', '.join(f'{x:.1f}' for x in v['load_average_after'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="records to load")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--prefix", default=PREFIX, help="index prefix of the kept data")
    parser.add_argument("--state-dir", type=Path, default=Path("var/bench-query"))
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch", type=int, default=5000, help="records per store.write")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--parts",
        type=lambda v: set(v.split(",")),
        default={"queries", "verify"},
        help="what to measure: queries,verify",
    )
    parser.add_argument(
        "--jobs",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[1, 2],
        help="worker counts to measure verification with (1: the parallel path, one worker)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile one verification, write stats here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if not result:
        return
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        report(result)


if __name__ == "__main__":
    main()
