"""Multi-replica ingest throughput: 1 vs 2 `ffaudit serve` processes sharing PostgreSQL and
Elasticsearch, many producer streams with acks spread over the replicas' forward ports.

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.bench_replicas \
        [--streams 40] [--records 600] [--batch 100] [--window 1] [--rounds 1] [--json]

A script, not a test: nothing asserts on time. Each phase starts its replicas as separate
OS processes (tests/benchmarks/replicas.py: the real `ffaudit serve`, forward shared key and
producer login, JWT-protected API) on a fresh PostgreSQL database and index prefix. Stream i
connects to replica i mod N, as a TCP load balancer spreads connections; each stream sends
PackedForward chunks of `--batch` records and asks for an ack (`--window` chunks may be
unacknowledged at once). Records are sealed before the clock starts and every stream's
first chunk is sent untimed (index creation, connection pools). The 1-replica phase is the
baseline of the ratio.

After each phase: every record stored exactly once by (stream, sequence) in Elasticsearch,
nothing stored that was not sent, every chain head at the last sequence sent. Also printed:
CPU seconds per 1000 records of the replicas, the Elasticsearch JVM, all PostgreSQL
processes (the whole server: other users of it included) and this load generator, and
PostgreSQL's work per record from pg_stat_database / pg_stat_user_tables deltas of the
phase's own database (counters settle SETTLE_S after the run; the replicas' background
loops in that time are included). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from tests.benchmarks.bench_ingest import pct
from tests.benchmarks.replicas import (
    Deployment,
    LiveStream,
    LoadStats,
    StoredCheck,
    StreamSender,
    backend_pids,
    check_stored,
    cpu_by_pid,
    cpu_delta,
    deployment,
    es_counters,
    machine_cpu,
    packed_frame,
    pg_counters,
    register,
)

# PostgreSQL publishes a backend's statistics at most once a second, and an idle backend's
# only after 10 s (PGSTAT_IDLE_INTERVAL): wait that long before reading the counters.
SETTLE_S = 11.0
DRAIN_TIMEOUT_S = 300.0


@dataclass
class Phase:
    replicas: int
    records: int
    seconds: float
    ack_p50_ms: float
    ack_p99_ms: float
    errors: dict[str, int]
    cpu_s: dict[str, float]  # per process group, over the timed run
    machine_busy: float  # share of all cores busy over the timed run, whoever used them
    pg: dict[str, int]  # counter deltas over the timed run and the settle time
    pg_size: dict[str, int]  # bytes per table at the end
    es: dict[str, int]  # the indices' counter deltas over the same time; store_bytes at the end
    check: StoredCheck
    rss_mib: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def _loader_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_snapshot(dep: Deployment) -> dict[str, dict[int, float]]:
    """CPU seconds by process, per group; the backends' processes are looked up each time
    (PostgreSQL starts a process per connection)."""
    backends = backend_pids()
    out = {r.name: cpu_by_pid([r.pid]) for r in dep.replicas}
    out["elasticsearch"] = cpu_by_pid(backends["elasticsearch"])
    out["postgresql (whole server)"] = cpu_by_pid(backends["postgresql"])
    out["load generator"] = {os.getpid(): _loader_cpu()}
    return out


async def _send_all(sender: StreamSender, frames: list[tuple[bytes, str, int]]) -> None:
    for frame, chunk, records in frames:
        await sender.send(frame, chunk, records)
    if not await sender.drain(DRAIN_TIMEOUT_S):
        raise RuntimeError(f"chunks still unacknowledged after {DRAIN_TIMEOUT_S:.0f} s")


async def run_phase(count: int, args: argparse.Namespace) -> Phase:
    with deployment(count) as dep:
        producer = register(dep, args.streams)
        frames: dict[str, list[tuple[bytes, str, int]]] = {}
        last_sent: dict[str, int] = {}
        for stream in producer.streams:
            live = LiveStream(stream, producer.signers[stream])
            records = live.seal(args.records)
            frames[stream] = []
            for i in range(0, len(records), args.batch):
                part, chunk = records[i : i + args.batch], f"{stream}:{i}"
                frames[stream].append((packed_frame(part, chunk), chunk, len(part)))
            last_sent[stream] = live.last_sequence
        warmup = LoadStats()
        stats = LoadStats()
        senders = {
            stream: StreamSender(
                dep.replicas[i % count].forward_port,
                producer.credentials,
                warmup,
                window=args.window,
            )
            for i, stream in enumerate(producer.streams)
        }
        await asyncio.gather(*(s.start() for s in senders.values()))
        try:
            await asyncio.gather(*(_send_all(senders[s], frames[s][:1]) for s in producer.streams))
            for sender in senders.values():
                sender.stats = stats
            await asyncio.sleep(SETTLE_S)
            pg_before = pg_counters(dep.database_url)
            es_before = await es_counters(dep)
            cpu_before, machine_before = _cpu_snapshot(dep), machine_cpu()
            started = time.perf_counter()
            await asyncio.gather(*(_send_all(senders[s], frames[s][1:]) for s in producer.streams))
            seconds = time.perf_counter() - started
            cpu_after, machine_after = _cpu_snapshot(dep), machine_cpu()
            rss = [r.rss_mib() for r in dep.replicas]
            await asyncio.sleep(SETTLE_S)
            pg_after = pg_counters(dep.database_url)
            es_after = await es_counters(dep)
        finally:
            for sender in senders.values():
                await sender.close()
        check = await check_stored(dep, last_sent)
    errors = dict(warmup.errors + stats.errors)
    return Phase(
        replicas=count,
        records=stats.acked,
        seconds=seconds,
        ack_p50_ms=1000 * statistics.median(stats.latencies),
        ack_p99_ms=1000 * pct(stats.latencies, 0.99),
        errors=errors,
        cpu_s={k: cpu_delta(cpu_before[k], v) for k, v in cpu_after.items()},
        machine_busy=(machine_after[0] - machine_before[0])
        / (machine_after[1] - machine_before[1]),
        pg={k: pg_after[k] - pg_before.get(k, 0) for k in pg_after if not k.startswith("bytes:")},
        pg_size={k: v for k, v in pg_after.items() if k.startswith("bytes:")},
        es={k: v - (0 if k == "store_bytes" else es_before.get(k, 0)) for k, v in es_after.items()},
        check=check,
        rss_mib=rss,
    )


def _describe(phase: Phase) -> list[str]:
    per_k = 1000 / phase.records
    cores = os.cpu_count() or 1
    lines = [
        f"{phase.replicas} replica(s): {phase.records:,} records in {phase.seconds:.1f} s = "
        f"{phase.rate:,.0f} records/s; ack latency p50 {phase.ack_p50_ms:.0f} ms, "
        f"p99 {phase.ack_p99_ms:.0f} ms; errors: {phase.errors or 'none'}",
        f"  machine CPU busy {phase.machine_busy:.0%} of {cores} cores (everything running "
        "here); CPU s per 1000 records: "
        + ", ".join(f"{k} {v * per_k:.2f}" for k, v in phase.cpu_s.items()),
        "  replica RSS at the end: " + ", ".join(f"{m:.0f} MiB" for m in phase.rss_mib),
    ]
    pg = phase.pg
    writes = pg["inserted"] + pg["updated"] + pg["deleted"]
    commits_per_s = pg["commits"] / phase.seconds
    load_k = phase.rate / 1000
    lines.append(
        f"  PostgreSQL (this database): {commits_per_s:,.0f} commits/s = "
        f"{commits_per_s / load_k:,.0f} per 1000 records/s, and "
        f"{pg['rollbacks'] / phase.seconds / load_k:,.0f} rollbacks/s per 1000 records/s "
        "(read-only sessions end so), "
        f"rows written per record {writes / phase.records:.2f} "
        f"(inserted {pg['inserted'] / phase.records:.2f}, updated "
        f"{pg['updated'] / phase.records:.2f}, deleted {pg['deleted'] / phase.records:.2f})"
    )
    tables = sorted(
        ((k.removeprefix("rows:"), v) for k, v in pg.items() if k.startswith("rows:") and v),
        key=lambda kv: -kv[1],
    )
    lines.append(
        "  rows written per record by table: "
        + ", ".join(f"{name} {rows / phase.records:.2f}" for name, rows in tables[:8])
    )
    sizes = sorted(
        ((k.removeprefix("bytes:"), v) for k, v in phase.pg_size.items() if v),
        key=lambda kv: -kv[1],
    )
    stored = max(1, phase.check.stored)
    lines.append(
        f"  PostgreSQL bytes per stored record (tables with indexes, whole database): "
        f"{sum(v for _, v in sizes) / stored:,.0f}: "
        + ", ".join(f"{name} {size / stored:,.0f}" for name, size in sizes[:5])
    )
    es = phase.es
    if es:
        lines.append(
            f"  Elasticsearch (one node, these indices' primaries): per record indexing "
            f"{es['indexing_ms'] / phase.records:.3f} ms, refresh "
            f"{es['refresh_ms'] / phase.records:.3f} ms, merges "
            f"{es['merge_ms'] / phase.records:.3f} ms; "
            f"{es['store_bytes'] / max(1, phase.check.stored):,.0f} bytes on disk per stored record"
        )
    c = phase.check
    lines.append(
        f"  stored: {c.stored:,} documents; lost {c.lost}, duplicated {c.duplicated}, "
        f"never sent {c.unexpected}; chain heads at the last sequence sent: "
        + ("all" if not c.head_mismatches else "; ".join(c.head_mismatches))
    )
    return lines


async def main_async(args: argparse.Namespace) -> int:
    phases: dict[int, list[Phase]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for count in (1, 2):
            phases[count].append(await run_phase(count, args))
    best = {k: max(v, key=lambda p: p.rate) for k, v in phases.items()}
    cores = os.cpu_count() or 0
    ratio = best[2].rate / best[1].rate
    ok = all(p.check.ok for v in phases.values() for p in v)
    if args.json:
        out: dict[str, Any] = {
            "python": platform.python_version(),
            "cores": cores,
            "streams": args.streams,
            "batch": args.batch,
            "window": args.window,
            "phases": [{**asdict(p), "rate": p.rate} for v in phases.values() for p in v],
            "ratio_2_over_1": ratio,
            "checks_ok": ok,
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0 if ok else 1
    print(
        f"CPython {platform.python_version()}, {cores} cores shared by the replicas, the load "
        "generator, Elasticsearch (one node) and PostgreSQL: the figures are what this "
        "machine gives, not what a replica gives on its own cores"
    )
    print(
        f"{args.streams} streams x {args.records} events, chunks of {args.batch} records, "
        f"{args.window} chunk(s) in flight per stream, best of {args.rounds} round(s)"
    )
    for count in (1, 2):
        print("\n".join(_describe(best[count])))
    print(f"ratio 2 replicas / 1 replica = {ratio:.2f}")
    print("checks: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--records", type=int, default=600, help="events per stream")
    parser.add_argument("--batch", type=int, default=100, help="records per chunk")
    parser.add_argument("--window", type=int, default=1, help="unacknowledged chunks per stream")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
