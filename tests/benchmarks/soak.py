"""Bounded soak: two replicas under a steady load just below capacity, with everything else
a deployment runs switched on, watched for loss, duplication, errors and memory growth.

    PYTHONPATH=. .venv/bin/python -m tests.benchmarks.soak [--duration 600] [--rate R]
        [--streams 50] [--load 0.8] [--max-slope 1.5] [--rests 1] [--json]

A script, not in CI's default run (ten minutes by default). Two `ffaudit serve` processes
(tests/benchmarks/replicas.py) share a fresh PostgreSQL database and index prefix; stream i
writes to replica i mod 2 over its own forward connection with acks. Live the whole time:
a threshold alert rule (records per stream in 30 s windows, so every stream opens one
alert), a webhook to a local receiver that checks each delivery's signature
(audit.webhooks.signing.verify_signature), queries through the HTTP API every
QUERY_EVERY_S on alternating replicas, and the replicas' own loops (alert evaluation,
webhook delivery, re-verification, transparency-log checkpoints, the gap sweep).

Without `--rate`, capacity is measured first (`--probe-s` of every stream sending at full
speed, sealing as it goes, with the queries and the replicas' loops already running) and
the soak offers `--load` of it. Each stream seals its share of the rate every `--flush`
seconds (as a shipper flushes its buffer) and sends it as one chunk; a chunk not yet
acknowledged holds the next back, which then carries the backlog. Re-verification's first
pass (every stored record, FFAUDIT_REVERIFY_TICK_S = 300 s after a replica starts) falls
inside the default ten minutes.

Every SAMPLE_S: acknowledged records/s, p99 ack latency, replica RSS (VmRSS), errors,
backlog. Memory is judged at rest: after the warm-up and after each of `--rests` parts of
the steady load, the load stops, every chunk is acknowledged, and after REST_S each
replica's RSS is read; a line through those readings gives MiB per minute of load. Under
load RSS follows the backlog (a re-verification pass on a shared machine holds thousands of
records in flight for minutes), so a line fitted to it measures the load as much as the
process; it is reported, not judged. At the end: every record sent stored exactly once by
(stream, sequence), chain heads at the last sequence sent, POST /v1/verify on every stream,
one webhook delivery per alert opened. Exit status 1 when records are lost or duplicated, a
chain fails, errors occurred, a delivery was missing or badly signed, fewer than KEEP_UP of
the offered records/s were acknowledged under the steady load (overloaded: the backlog, and
every buffer with it, grows), or a replica's RSS at rest grew faster than `--max-slope`
MiB/min of steady load. Live samples go to stderr; `--json` puts the result on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from audit.errors import FFAuditError
from audit.webhooks.signing import verify_signature
from tests.apptools import running
from tests.benchmarks.bench_ingest import pct
from tests.benchmarks.replicas import (
    Bearer,
    Deployment,
    LiveStream,
    LoadStats,
    StreamSender,
    check_stored,
    deployment,
    packed_frame,
    register,
)

SAMPLE_S = 5.0
QUERY_EVERY_S = 2.0
RULE_WINDOW_S = 30
MAX_CHUNK = 1000  # records per chunk when a stream carries a backlog
PROBE_CHUNK = 100
DRAIN_TIMEOUT_S = 180.0
VERIFY_TIMEOUT_S = 900.0
DELIVERY_WAIT_S = 60.0
# Longer than a replica's memory trim interval (FFAUDIT_MEMORY_TRIM_INTERVAL_S, 30 s), so
# that memory the load freed has been handed back when RSS at rest is read.
REST_S = 45.0
KEEP_UP = 0.97  # acknowledged / offered after the warm-up, below which it was overloaded
HOOK_SETTINGS = {
    "FFAUDIT_WEBHOOK_ALLOW_HTTP": "true",
    "FFAUDIT_WEBHOOK_ALLOWED_DESTINATIONS": '["127.0.0.1"]',
}


class HookReceiver:
    """The webhook's receiving end: counts deliveries by event id and checks signatures."""

    def __init__(self) -> None:
        self.secret = ""
        self.rule = ""  # the soak's own alert rule (set_up_alerting)
        self.events: set[str] = set()
        self.requests = 0
        self.bad_signatures = 0
        self.rules: Counter[str] = Counter()  # alerts delivered, by rule
        self.others: list[str] = []  # titles of alerts the soak's own rule did not open
        self._lock = threading.Lock()  # uvicorn answers in its own thread
        self.app = Starlette(routes=[Route("/hook", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            verify_signature(self.secret, request.headers.get("x-ffaudit-signature", ""), body)
            good = True
        except FFAuditError:
            good = False
        with self._lock:
            self.requests += 1
            if good:
                self.events.add(request.headers.get("x-ffaudit-event-id", ""))
                alert = orjson.loads(body).get("alert") or {}
                self.rules[str(alert.get("rule"))] += 1
                if alert.get("rule") != self.rule:
                    self.others.append(f"{alert.get('rule')}: {alert.get('title')}")
            else:
                self.bad_signatures += 1
        return Response(status_code=204)


@dataclass
class Run:
    """What the producers and the query loop add to during the soak."""

    stats: LoadStats = field(default_factory=LoadStats)
    sent: int = 0
    query_latencies: list[float] = field(default_factory=list)
    query_errors: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "warm-up"  # written into each sample: warm-up, rest, steady


async def produce(
    stream: str,
    live: LiveStream,
    sender: StreamSender,
    run: Run,
    *,
    rate: float | None,
    until: float,
    flush_s: float,
) -> None:
    """Seal and send `rate` records/s of one stream until `until` (None: as fast as acks
    allow, PROBE_CHUNK at a time)."""
    started = time.monotonic()
    if rate is not None:
        await asyncio.sleep(random.uniform(0, flush_s))  # streams flush out of step
    due_at, events = time.monotonic(), 0
    while (now := time.monotonic()) < until:
        if rate is None:
            n = PROBE_CHUNK
        else:
            if now < due_at:
                await asyncio.sleep(due_at - now)
            due_at += flush_s
            n = int(rate * (time.monotonic() - started)) - events
            if n <= 0:
                continue
        events += n
        records = live.seal(n)
        for i in range(0, len(records), MAX_CHUNK):
            part = records[i : i + MAX_CHUNK]
            chunk = f"{stream}:{part[0]['event.sequence']}"
            await sender.send(packed_frame(part, chunk), chunk, len(part))
            run.sent += len(part)


async def query_loop(dep: Deployment, streams: list[str], run: Run, rule: str) -> None:
    """Reads an auditor would make, spread over the replicas (each is audited too)."""
    async with httpx.AsyncClient(timeout=60.0, auth=Bearer("auditor")) as http:
        for k in itertools.count():
            stream = streams[k % len(streams)]
            requests = [
                ("/v1/events", {"stream": stream, "limit": "50"}),
                ("/v1/events", {"action": "face.swapped", "limit": "20"}),
                ("/v1/alerts", {"rule": rule, "limit": "50"}),
            ]
            path, params = requests[k % len(requests)]
            began = time.perf_counter()
            try:
                answer = await http.get(f"{dep.api(k)}{path}", params=params)
                failure = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            run.query_latencies.append(time.perf_counter() - began)
            if failure is not None:
                run.query_errors[f"query {path}: {failure}"] += 1
            await asyncio.sleep(QUERY_EVERY_S)


async def sample_loop(dep: Deployment, run: Run, started: float) -> None:
    last_t, last_acked = time.monotonic(), run.stats.acked
    while True:
        await asyncio.sleep(SAMPLE_S)
        now, acked = time.monotonic(), run.stats.acked
        latencies = run.stats.take_interval()
        sample: dict[str, Any] = {
            "t": round(now - started, 1),
            "acked_per_s": (acked - last_acked) / (now - last_t),
            "ack_p99_ms": 1000 * pct(latencies, 0.99) if latencies else None,
            "rss_mib": [round(r.rss_mib(), 1) for r in dep.replicas],
            "children_rss_mib": [round(r.children_rss_mib(), 1) for r in dep.replicas],
            "errors": sum(run.stats.errors.values()) + sum(run.query_errors.values()),
            "backlog": run.sent - acked,
            "phase": run.phase,
        }
        run.samples.append(sample)
        last_t, last_acked = now, acked
        rss = " ".join(f"{m:.0f}" for m in sample["rss_mib"])
        children = " ".join(f"{m:.0f}" for m in sample["children_rss_mib"])
        p99 = sample["ack_p99_ms"]
        print(
            f"  t={sample['t']:>6.0f}s {sample['acked_per_s']:>7,.0f} rec/s  ack p99 "
            f"{'-' if p99 is None else f'{p99:.0f}'} ms  RSS {rss} MiB (children {children})  "
            f"errors {sample['errors']}  backlog {sample['backlog']}",
            file=sys.stderr,
            flush=True,
        )


def set_up_alerting(dep: Deployment, hook: HookReceiver, hook_url: str) -> str:
    """The alert rule and the webhook, over the API; returns the rule's alert name."""
    with httpx.Client(timeout=60.0, auth=Bearer("admin")) as http:
        made = http.post(
            f"{dep.api(0)}/v1/alert-rules",
            json={
                "name": "soak-volume",
                "severity": "high",
                "filter": {"action": ["face.swapped"]},
                "group_by": "stream",
                "window_s": RULE_WINDOW_S,
                "threshold": 5,
            },
        )
        made.raise_for_status()
        rule = str(made.json()["rule"])
        hook.rule = rule
        webhook = http.post(
            f"{dep.api(1)}/v1/webhooks",
            json={"url": f"{hook_url}/hook", "min_severity": "low", "description": "soak"},
        )
        webhook.raise_for_status()
        hook.secret = webhook.json()["secret"]
    return rule


def alerts_opened(dep: Deployment, rule: str) -> int:
    count, cursor = 0, None
    with httpx.Client(timeout=60.0, auth=Bearer("auditor")) as http:
        while True:
            params: dict[str, Any] = {"rule": rule, "limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = http.get(f"{dep.api(0)}/v1/alerts", params=params)
            page.raise_for_status()
            body = page.json()
            count += len(body["alerts"])
            cursor = body["next_cursor"]
            if not cursor:
                return count


async def verify_chains(dep: Deployment, streams: list[str]) -> list[str]:
    """POST /v1/verify per stream; the streams that did not verify, with why."""
    failed = []
    async with httpx.AsyncClient(timeout=VERIFY_TIMEOUT_S, auth=Bearer("auditor")) as http:
        for i, stream in enumerate(streams):
            answer = await http.post(f"{dep.api(i)}/v1/verify", json={"stream": stream})
            answer.raise_for_status()
            body = answer.json()
            if not body["ok"]:
                failures = body["streams"][0]["failures"][:3] if body["streams"] else []
                failed.append(f"{stream}: {failures}")
    return failed


def rss_slopes(samples: list[dict[str, Any]]) -> list[float]:
    """MiB per minute of each replica's RSS under the steady load (least-squares line)."""
    kept = [s for s in samples if s["phase"] == "steady"]
    if len(kept) < 3:
        return []
    minutes = [s["t"] / 60 for s in kept]
    return [
        statistics.linear_regression(minutes, [s["rss_mib"][i] for s in kept]).slope
        for i in range(len(kept[0]["rss_mib"]))
    ]


async def rest(run: Run, dep: Deployment) -> list[float]:
    """Each replica's RSS after REST_S with nothing offered and nothing in flight (phase()
    drained): what it holds at rest, comparable between two points of the run, where RSS
    under load follows the backlog."""
    run.phase = "rest"
    await asyncio.sleep(REST_S)
    return [round(r.rss_mib(), 1) for r in dep.replicas]


async def soak(args: argparse.Namespace, dep: Deployment, hook: HookReceiver, hook_url: str) -> int:
    producer = register(dep, args.streams)
    rule = set_up_alerting(dep, hook, hook_url)
    lives = {s: LiveStream(s, producer.signers[s]) for s in producer.streams}
    run = Run()
    senders = {
        s: StreamSender(
            dep.replicas[i % len(dep.replicas)].forward_port,
            producer.credentials,
            run.stats,
            window=args.window,
        )
        for i, s in enumerate(producer.streams)
    }
    await asyncio.gather(*(x.start() for x in senders.values()))

    async def phase(rate: float | None, seconds: float) -> float:
        began, acked = time.monotonic(), run.stats.acked
        per_stream = None if rate is None else rate / len(senders)
        await asyncio.gather(
            *(
                produce(
                    s,
                    lives[s],
                    senders[s],
                    run,
                    rate=per_stream,
                    until=began + seconds,
                    flush_s=args.flush,
                )
                for s in producer.streams
            )
        )
        # Acked while producing (in-flight chunks at the end excluded, as at the start).
        rate_seen = (run.stats.acked - acked) / (time.monotonic() - began)
        drained = await asyncio.gather(*(x.drain(DRAIN_TIMEOUT_S) for x in senders.values()))
        if not all(drained):
            raise RuntimeError(f"chunks unacknowledged {DRAIN_TIMEOUT_S:.0f} s after the end")
        return rate_seen

    # Queries run from the capacity probe on, so that capacity is measured under them too.
    queries = asyncio.create_task(query_loop(dep, producer.streams, run, rule))
    # Past the first alert windows' evaluation (window + delay + tick: 70 s by default) and
    # a fifth of the run, but never more than half of it.
    warmup_s = min(0.5 * args.duration, max(90.0, 0.2 * args.duration))
    sampler: asyncio.Task[None] | None = None
    try:
        rate, capacity = args.rate, None
        if rate is None:
            await phase(None, 5.0)  # warm: index creation, connection pools
            capacity = await phase(None, args.probe_s)
            rate = args.load * capacity
            print(
                f"capacity {capacity:,.0f} records/s over {args.probe_s:.0f} s; offering "
                f"{args.load:.0%} of it: {rate:,.0f} records/s",
                file=sys.stderr,
                flush=True,
            )
        run.stats.take_interval()
        started = time.monotonic()
        sampler = asyncio.create_task(sample_loop(dep, run, started))
        await phase(rate, warmup_s)
        # RSS at rest after the warm-up, then after each part of the steady load, by the
        # minutes of steady load before it.
        rests = [(0.0, await rest(run, dep))]
        steady_s, acked_before = 0.0, run.stats.acked
        latencies_before = len(run.stats.latencies)
        for _ in range(args.rests):
            run.phase = "steady"
            began = time.monotonic()
            await phase(rate, (args.duration - warmup_s) / args.rests)
            steady_s += time.monotonic() - began  # each part's drain included
            rests.append((steady_s / 60, await rest(run, dep)))
        acked_rate = (run.stats.acked - acked_before) / steady_s
    finally:
        background = [t for t in (queries, sampler) if t is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for sender in senders.values():
            await sender.close()
    soak_latencies = run.stats.latencies[latencies_before:]

    last_sent = {s: lives[s].last_sequence for s in producer.streams}
    stored = await check_stored(dep, last_sent)
    chains = await verify_chains(dep, producer.streams)
    opened = alerts_opened(dep, rule)
    deadline = time.monotonic() + DELIVERY_WAIT_S
    while len(hook.events) < opened and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        opened = alerts_opened(dep, rule)
    delivered = len(hook.events)
    slopes = rss_slopes(run.samples)
    # A leak grows with every minute of load; buffers and caches filling level off.
    growth = [
        statistics.linear_regression([m for m, _ in rests], [r[i] for _, r in rests]).slope
        for i in range(len(dep.replicas))
    ]
    errors = dict(run.stats.errors + run.query_errors)
    steady = [x["acked_per_s"] for x in run.samples if x["phase"] == "steady"]
    steady_rate = statistics.fmean(steady) if steady else acked_rate

    failures = []
    if not stored.ok:
        failures.append("records lost, duplicated, unexpected or heads off")
    if run.sent != sum(last_sent.values()):
        failures.append(f"sent {run.sent} records but the chains end at {sum(last_sent.values())}")
    if chains:
        failures.append(f"{len(chains)} chain(s) do not verify")
    if errors:
        failures.append(f"errors: {errors}")
    if hook.bad_signatures:
        failures.append(f"{hook.bad_signatures} webhook deliveries with a bad signature")
    if hook.others:
        # Nothing else should fire: nobody tampers, no record is late or out of order.
        failures.append(f"alerts the soak did not cause: {hook.others[:5]}")
    if delivered < opened or (opened == 0 and args.duration >= 2 * RULE_WINDOW_S + 30):
        failures.append(f"{opened} alerts opened, {delivered} delivered")
    if steady_rate < KEEP_UP * rate:
        # Then the backlog (and with it every buffer) grows: no steady state to judge.
        failures.append(f"did not keep up: {steady_rate:,.0f} of {rate:,.0f} records/s acked")
    if any(g > args.max_slope for g in growth):
        failures.append(f"RSS at rest grew faster than {args.max_slope} MiB/min")

    result = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "replicas": len(dep.replicas),
        "streams": args.streams,
        "duration_s": round(warmup_s + steady_s, 1),
        "capacity_records_per_s": capacity,
        "offered_records_per_s": rate,
        "acked_records_per_s": acked_rate,
        "acked_after_warmup_per_s": steady_rate,
        "ack_p50_ms": 1000 * statistics.median(soak_latencies),
        "ack_p99_ms": 1000 * pct(soak_latencies, 0.99),
        "ack_max_ms": 1000 * max(soak_latencies),
        "records_sent": run.sent,
        "stored": stored.stored,
        "lost": stored.lost,
        "duplicated": stored.duplicated,
        "never_sent": stored.unexpected,
        "head_mismatches": stored.head_mismatches,
        "chains_not_verifying": chains,
        "errors": errors,
        "queries": len(run.query_latencies),
        "query_p99_ms": 1000 * pct(run.query_latencies, 0.99) if run.query_latencies else None,
        "alerts_opened": opened,
        "webhook_deliveries": delivered,
        "webhook_requests": hook.requests,
        "webhook_bad_signatures": hook.bad_signatures,
        "webhook_rules": dict(hook.rules),
        "other_alerts": hook.others,
        "warmup_s": warmup_s,
        "steady_s": round(steady_s, 1),
        "rss_at_rest_mib": [{"steady_min": round(m, 2), "rss_mib": r} for m, r in rests],
        "rss_growth_at_rest_mib_per_min": growth,
        "max_slope_mib_per_min": args.max_slope,
        "rss_slope_under_load_mib_per_min": slopes,
        "rss_first_after_warmup_mib": next(
            (s["rss_mib"] for s in run.samples if s["phase"] == "steady"), None
        ),
        "rss_last_mib": run.samples[-1]["rss_mib"] if run.samples else None,
        # RSS keeps the high-water mark of what was in flight (CPython and malloc hand freed
        # memory back to the system only in part): read a rise together with the backlog.
        "rss_peak_mib": [
            max((x["rss_mib"][i] for x in run.samples), default=0.0)
            for i in range(len(dep.replicas))
        ],
        "backlog_max_after_warmup": max(
            (x["backlog"] for x in run.samples if x["phase"] == "steady"), default=0
        ),
        "children_rss_max_mib": [
            max((x["children_rss_mib"][i] for x in run.samples), default=0.0)
            for i in range(len(dep.replicas))
        ],
        "samples": run.samples,
        "failures": failures,
    }
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_summary(result)
    return 1 if failures else 0


def _print_summary(r: dict[str, Any]) -> None:
    print(
        f"CPython {r['python']}, {r['cores']} cores shared by {r['replicas']} replicas, the load "
        "generator, Elasticsearch (one node) and PostgreSQL"
    )
    print(
        f"{r['streams']} streams, {r['duration_s']:.0f} s: offered "
        f"{r['offered_records_per_s']:,.0f} records/s, acknowledged "
        f"{r['acked_records_per_s']:,.0f} records/s (after the warm-up "
        f"{r['acked_after_warmup_per_s']:,.0f}); ack latency p50 "
        f"{r['ack_p50_ms']:.0f} ms, p99 {r['ack_p99_ms']:.0f} ms, max {r['ack_max_ms']:.0f} ms"
    )
    print(
        f"records sent (capacity probe included) {r['records_sent']:,}, stored "
        f"{r['stored']:,}: lost {r['lost']}, "
        f"duplicated {r['duplicated']}, never sent {r['never_sent']}; heads off: "
        f"{r['head_mismatches'] or 'none'}; chains not verifying: "
        f"{r['chains_not_verifying'] or 'none'}"
    )
    q99 = r["query_p99_ms"]
    print(
        f"errors: {r['errors'] or 'none'}; {r['queries']} queries (probe on), p99 "
        f"{'-' if q99 is None else f'{q99:.0f}'} ms; alerts opened {r['alerts_opened']}, webhook "
        f"deliveries {r['webhook_deliveries']} ({r['webhook_requests']} requests, "
        f"{r['webhook_bad_signatures']} badly signed)"
    )
    growth = ", ".join(f"{g:+.2f}" for g in r["rss_growth_at_rest_mib_per_min"])
    at_rest = "; ".join(f"{x['steady_min']:.1f}: {x['rss_mib']}" for x in r["rss_at_rest_mib"])
    slopes = ", ".join(f"{s:+.2f}" for s in r["rss_slope_under_load_mib_per_min"]) or "-"
    print(
        f"RSS at rest after {at_rest} MiB (minutes of steady load: MiB): line {growth} MiB/min "
        f"(limit {r['max_slope_mib_per_min']}). Under load: first {r['rss_first_after_warmup_mib']}"
        f" MiB, last {r['rss_last_mib']} MiB, peak {r['rss_peak_mib']} MiB, line {slopes} MiB/min"
        f"; worker processes' RSS at most "
        f"{r['children_rss_max_mib']} MiB; backlog after the warm-up at most "
        f"{r['backlog_max_after_warmup']:,} records"
    )
    print("result: " + ("; ".join(r["failures"]) if r["failures"] else "passed"))


async def main_async(args: argparse.Namespace) -> int:
    hook = HookReceiver()
    with running(hook.app) as hook_url, deployment(2, HOOK_SETTINGS) as dep:
        if not dep.own_host_names:
            print(
                "note: no unshare: both replicas share a host name; audited calls go to one",
                file=sys.stderr,
            )
        return await soak(args, dep, hook, hook_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of steady load")
    parser.add_argument("--rate", type=float, default=None, help="records/s in all")
    parser.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    parser.add_argument("--probe-s", type=float, default=20.0, help="capacity measurement")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--flush", type=float, default=1.0, help="seconds between chunks")
    parser.add_argument("--window", type=int, default=1, help="unacknowledged chunks per stream")
    parser.add_argument(
        "--max-slope",
        type=float,
        default=1.5,
        help="MiB/min of RSS growth at rest (a line through the rests' RSS)",
    )
    parser.add_argument(
        "--rests", type=int, default=1, help="parts of the steady load, each followed by a rest"
    )
    parser.add_argument("--json", action="store_true")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
