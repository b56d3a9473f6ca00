"""The console at scale: server and browser time to a usable events explorer, page weight.

    .venv/bin/python -m tests.benchmarks.bench_console [--events N] [--browser-loads K]
        [--no-reuse] [--no-keep]

A script, not a test: nothing asserts on time. It loads N sealed records (default 1M) into
Elasticsearch under an index prefix of its own (`--prefix`), kept with the keys and control
database in `--state-dir` so that a later run with the same N reuses them (bench_query's
`prepared`; `--no-reuse` reloads, `--no-keep` removes them at the end), with bench_query's
loader (three tenants, 31 engine streams, thousands of actors, 30 days of record time;
sealed by the Sealer and written with `ElasticEventStore.write` in big batches: setup, not
measured), registers the streams in a control database and runs the real service on it
(uvicorn on a loopback port, as `tests.apptools.serving` does), signed in as an
administrator with a second factor of the largest tenant.

Measured:

* server time: 50 loads of GET /console/events with different filters (none, a stream, an
  action, failures, a time range, an actor, free text, combinations), each timed end to end
  with httpx (the whole HTML: page of records, histogram aggregation, facets). Baseline of
  the same run: the raw store calls the explorer makes for the same filter (one search page,
  the facets in one request, the time span, the histogram; same concurrency), so the ratio
  says what the console adds on top of the store. The shard request cache is emptied before every
  timed call: no aggregation answer comes from a cache of an earlier one.
* browser time: Debian's chromium through Playwright signs in through the form, then loads
  the explorer with `--browser-loads` of those filters; timed from navigation until the
  chart is drawn (`.uplot` inside `[data-histogram]`) and the table of records is there.
* page weight of each view: the HTML plus every script and stylesheet it references,
  fetched uncached; raw bytes (what the service sends: it does not compress) and gzip
  level 6 (what a deployment behind a compressing proxy transfers).

Elasticsearch comes from FFAUDIT_TEST_ELASTICSEARCH_URL or `ffaudit dev elasticsearch up`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import platform
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import httpx
from playwright.sync_api import sync_playwright

from audit.db.session import make_engine, session_factory
from audit.query.keyrings import TenantKeyrings
from audit.query.service import Filters, QueryService
from audit.settings import AuditSettings
from audit.store.elastic import INGEST, ElasticEventStore
from audit.store.query import EventQuery
from audit.streams.service import StreamService
from dashboards.views.events import FACETS, PAGE_SIZE, hide_trail, parse_time, pick_interval
from dashboards.views.jobs import job_url
from tests.apptools import app_settings, jwt_token, serving
from tests.benchmarks.bench_ingest import elasticsearch_url
from tests.benchmarks.bench_query import DAYS, T0, State, drop_indices, job_number, pct, prepared

TARGET_SERVER_P95_MS = 300.0
TARGET_BROWSER_P95_S = 1.0
TARGET_WEIGHT_KB = 200.0
GZIP_LEVEL = 6
TENANT = "qb-acme"  # the largest tenant of bench_query's data
STREAMS = ("engine-acme-00", "engine-acme-01", "engine-acme-07", "engine-acme-13")
ACTIONS = (
    "job.submitted",
    "job.started",
    "face.detected",
    "face.swapped",
    "frame.failed",
    "job.failed",
    "job.completed",
    "input.erased",
    "audit.checkpoint",
)
WORDS = ("out of memory", "no usable face", "cuda", "timeouterror", "aborted", "inswapper")
CHROMIUM = os.environ.get("FFAUDIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_ASSET = re.compile(r'<(?:script[^>]*?\ssrc|link[^>]*?\shref)="([^"]+)"')

Params = list[tuple[str, str]]


# -- filters -------------------------------------------------------------------------------


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def filter_set(count: int) -> list[Params]:
    """`count` different explorer filters: each kind alone, then combinations."""
    day = timedelta(days=1)
    ranges = [
        (T0 + 3 * day, T0 + 4 * day),
        (T0 + 10 * day, T0 + 17 * day),
        (T0 + 20 * day + timedelta(hours=5), T0 + 20 * day + timedelta(hours=6)),
        (T0, T0 + DAYS * day),
    ]
    actors = [f"user-{n:05d}" for n in (1, 7, 42, 150, 1200, 2999)]
    out: list[Params] = [[]]
    out += [[("stream", s)] for s in STREAMS]
    out += [[("action", a)] for a in ACTIONS]
    out += [[("outcome", "failure")]]
    out += [[("since", iso(a)), ("until", iso(b))] for a, b in ranges]
    out += [[("actor", a)] for a in actors]
    out += [[("q", w)] for w in WORDS[:4]]
    week = [("since", iso(ranges[1][0])), ("until", iso(ranges[1][1]))]
    out += [
        [("stream", STREAMS[0]), ("action", "frame.failed")],
        [("stream", STREAMS[1]), ("outcome", "failure")],
        [("actor", actors[0]), *week],
        [("actor", actors[1]), ("action", "job.submitted")],
        [("actor", actors[2]), ("outcome", "failure")],
        [("outcome", "failure"), *week],
        [("action", "job.failed"), ("action", "frame.failed"), *week],
        [("q", "out of memory"), ("stream", STREAMS[0])],
        [("q", "no usable face"), *week],
        [("q", "cuda"), ("outcome", "failure"), ("stream", STREAMS[2])],
        [("stream", STREAMS[3]), ("since", iso(ranges[0][0])), ("until", iso(ranges[0][1]))],
        [("action", "face.swapped"), ("since", iso(ranges[2][0])), ("until", iso(ranges[2][1]))],
        [("actor", actors[3]), ("stream", STREAMS[0])],
        [("actor", actors[4]), ("q", "cuda")],
        [("since", iso(ranges[1][0]))],  # open-ended: the span reads decide the chart
        [("until", iso(ranges[0][1]))],
        [("action", "job.completed"), ("stream", STREAMS[1]), *week],
        [("outcome", "failure"), ("action", "job.failed"), ("actor", actors[0])],
        [("q", "timeouterror"), ("outcome", "failure")],
        [("actor", actors[5]), ("since", iso(ranges[0][0])), ("until", iso(ranges[0][1]))],
        [("q", "aborted"), ("action", "job.failed")],
        [("stream", STREAMS[2]), ("action", "input.erased"), ("outcome", "success")],
    ]
    assert len(out) >= count, f"only {len(out)} filters defined"
    return out[:count]


def label(params: Params) -> str:
    return urlencode(params) or "(no filter)"


def explorer_url(base: str, params: Params) -> str:
    return f"{base}/console/events" + (f"?{urlencode(params)}" if params else "")


def to_filters(params: Params) -> Filters:
    """The explorer's Filters of `params`."""
    one = {k: v for k, v in params}
    return Filters(
        actor=one.get("actor"),
        actions=tuple(v for k, v in params if k == "action"),
        outcomes=tuple(v for k, v in params if k == "outcome"),
        streams=(one["stream"],) if "stream" in one else (),
        since=parse_time("since", one.get("since")),
        until=parse_time("until", one.get("until")),
        text=one.get("q"),
    )


def explorer_query(service: QueryService, filters: Filters) -> EventQuery:
    """The store query the explorer runs for `filters` (trail reads hidden)."""
    return hide_trail(service.build(TENANT, None, filters), filters, include_trail=False)


# -- baseline: the raw store calls of one explorer load ------------------------------------


async def store_calls(store: ElasticEventStore, query: EventQuery, filters: Filters) -> None:
    """What `dashboards.views.events.explorer` asks the store, with the same concurrency:
    a page, the facets (one request) and the chart (its time span first when the filters
    leave it open), all at once."""

    async def chart() -> None:
        start, end = filters.since, filters.until
        if start is None or end is None:
            span = await store.time_span(query)
            start = start or (span[0] if span else None)
            end = end or (span[1] if span else None)
        interval = pick_interval(start, end) if start and end else 3600
        await store.histogram(query, interval_s=interval)

    await asyncio.gather(
        store.search(query, limit=PAGE_SIZE), store.facets(query, by=FACETS), chart()
    )


# -- server --------------------------------------------------------------------------------


async def sign_in(client: httpx.AsyncClient, token: str) -> None:
    page = await client.get("/console/sign-in")
    page.raise_for_status()
    found = _CSRF.search(page.text)
    assert found, "no CSRF field on the sign-in page"
    answer = await client.post(
        "/console/sign-in", data={"csrf": found.group(1), "token": token}, follow_redirects=False
    )
    assert answer.status_code == 303, (answer.status_code, answer.text[:500])


async def clear_request_cache(store: ElasticEventStore) -> None:
    await store.client.indices.clear_cache(index=f"{store.prefix}-*", request=True)


async def timed(run: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


async def server_phase(
    base: str, token: str, store: ElasticEventStore, service: QueryService, filters: list[Params]
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await sign_in(client, token)

        async def load_page(params: Params) -> None:
            answer = await client.get(explorer_url("", params))
            assert answer.status_code == 200, (label(params), answer.status_code, answer.text)
            assert "data-histogram" in answer.text

        for params in filters[:3]:  # warm-up: templates, connections, first queries
            await load_page(params)
            warm = to_filters(params)
            await store_calls(store, explorer_query(service, warm), warm)
        console: list[float] = []
        raw: list[float] = []
        for n, params in enumerate(filters):
            filters_ = to_filters(params)
            query = explorer_query(service, filters_)  # what the route builds off the loop

            async def http(p: Params = params) -> None:
                await load_page(p)

            async def direct(q: EventQuery = query, f: Filters = filters_) -> None:
                await store_calls(store, q, f)

            # Interleaved, in alternating order; each after emptying the request cache.
            order: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("console", http),
                ("raw", direct),
            ]
            for name, run in order if n % 2 == 0 else order[::-1]:
                await clear_request_cache(store)
                elapsed = await timed(run)
                (console if name == "console" else raw).append(elapsed)
    ratios = [c / r for c, r in zip(console, raw, strict=True)]
    slowest = sorted(zip(console, filters, strict=True), key=lambda x: -x[0])[:3]
    return {
        "loads": len(console),
        "console": console,
        "raw": raw,
        "ratios": ratios,
        "slowest": [(1000 * t, label(p)) for t, p in slowest],
    }


# -- browser -------------------------------------------------------------------------------


def browser_phase(base: str, token: str, filters: list[Params], prefix: str, url: str) -> Any:
    """Sign in through the form, then time each explorer load until chart and table."""
    times: list[float] = []
    cold = 0.0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1440, "height": 900})
            page = ctx.new_page()
            page.goto(f"{base}/console/sign-in")
            page.fill("#token", token)
            with page.expect_navigation():
                page.click("form[action='/console/sign-in'] button[type=submit]")
            assert page.url == f"{base}/console/", page.url
            for n, params in enumerate(filters):
                clear_cache_sync(url, prefix)
                started = time.perf_counter()
                page.goto(explorer_url(base, params), wait_until="commit")
                page.wait_for_selector("[data-histogram] .uplot", state="attached")
                page.wait_for_selector("#results table", state="attached")
                elapsed = time.perf_counter() - started
                if n == 0:
                    cold = elapsed  # static files not yet in the browser's cache
                times.append(elapsed)
        finally:
            browser.close()
    return {"loads": len(times), "times": times, "cold": cold}


def clear_cache_sync(url: str, prefix: str) -> None:
    """The request cache emptied from sync code (Playwright's sync API owns this thread)."""
    httpx.post(f"{url}/{prefix}-*/_cache/clear", params={"request": "true"}).raise_for_status()


# -- page weight ---------------------------------------------------------------------------


async def page_weight(base: str, token: str) -> list[dict[str, Any]]:
    views = [
        "/console/",
        "/console/events",
        "/console/actors?actor=user-00001",
        "/console/jobs",
        job_url(f"job-{TENANT}-{job_number(0, 3):08d}"),
        "/console/alerts",
        "/console/verify",
        "/console/retention",
    ]
    out = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await sign_in(client, token)
        for view in views:
            page = await client.get(view)
            assert page.status_code == 200, (view, page.status_code, page.text[:500])
            bodies = [page.content]
            assets = list(dict.fromkeys(_ASSET.findall(page.text)))
            for asset in assets:
                got = await client.get(
                    urljoin(base + view, asset), headers={"cache-control": "no-cache"}
                )
                assert got.status_code == 200, (asset, got.status_code)
                bodies.append(got.content)
            out.append(
                {
                    "view": view,
                    "html": len(page.content),
                    "assets": len(assets),
                    "raw": sum(len(b) for b in bodies),
                    "gzip": sum(len(gzip.compress(b, GZIP_LEVEL)) for b in bodies),
                    "served_encoding": page.headers.get("content-encoding", "identity"),
                }
            )
    return out


# -- main ----------------------------------------------------------------------------------


async def load_data(url: str, args: argparse.Namespace) -> tuple[State, float | None]:
    """The kept records of an earlier run with the same N and seed, or freshly loaded ones
    (then the seconds loading took)."""
    loader = ElasticEventStore(url, prefix=args.prefix, bulk_chunk=2500, request_timeout_s=120)
    try:
        return await prepared(loader, args)
    finally:
        await loader.close()


async def measure_server(
    url: str, prefix: str, state: State, base: str, token: str, filters: list[Params]
) -> dict[str, Any]:
    store = ElasticEventStore(url, prefix=prefix)
    sessions = session_factory(make_engine(state.control_db))
    service = QueryService(store, TenantKeyrings(state.keyrings), StreamService(sessions))
    try:
        return await server_phase(base, token, store, service, filters)
    finally:
        await store.close()


async def cleanup(url: str, prefix: str) -> None:
    store = ElasticEventStore(url, prefix=prefix)
    try:
        await drop_indices(store)
    finally:
        await store.close()


async def forget_page_views(url: str, prefix: str) -> None:
    """Remove the log of the logs the measured page views wrote, so that the kept records
    match their manifest and the next run reuses them."""
    store = ElasticEventStore(url, prefix=prefix)
    try:
        # By id: this distribution has no _delete_by_query (no reindex module). A run
        # writes one record per page view: a few hundred at most.
        await store.refresh()
        found = await store.client.search(
            index=f"{prefix}-*",
            query={"prefix": {f"{INGEST}stream": f"{AuditSettings().service_stream}."}},
            size=10_000,
            source=False,
        )
        hits = found["hits"]["hits"]
        if hits:
            await store.client.bulk(
                operations=[{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits],
                refresh=True,
            )
    finally:
        await store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = elasticsearch_url()
    prefix: str = args.prefix
    filters = filter_set(args.loads)
    result: dict[str, Any] = {}
    try:
        state, load_s = asyncio.run(load_data(url, args))
        result["records"] = state.manifest["records"]
        result["load_s"] = load_s
        if load_s is not None:
            print(
                f"loaded {state.manifest['records']:,} sealed records in {load_s:.0f} s "
                f"({state.manifest['records'] / load_s:,.0f}/s)",
                flush=True,
            )
        settings = app_settings(
            state.directory,  # the keyrings the records were sealed under are there
            database_url=state.control_db,
            elasticsearch_url=url,
            elasticsearch_index_prefix=prefix,
        )
        # An administrator with a second factor: every view, retention included.
        token = jwt_token(
            sub="root",
            tenant=TENANT,
            roles=["admin"],
            amr=["pwd", "otp"],
            exp=int(time.time()) + 4 * 3600,
        )
        with serving(settings) as base:
            result["server"] = asyncio.run(measure_server(url, prefix, state, base, token, filters))
            if args.browser_loads:
                picked = filters[:: max(1, len(filters) // args.browser_loads)]
                result["browser"] = browser_phase(
                    base, token, picked[: args.browser_loads], prefix, url
                )
            result["weight"] = asyncio.run(page_weight(base, token))
    finally:
        asyncio.run(cleanup(url, prefix) if not args.keep else forget_page_views(url, prefix))
    return result


MET = {True: "met", False: "MISSED"}


def report(r: dict[str, Any]) -> None:
    s = r["server"]
    console, raw = s["console"], s["raw"]
    p95 = 1000 * pct(console, 0.95)
    print(
        f"\nserver time of GET /console/events, {s['loads']} filters, end to end (ms):\n"
        f"  {'':<34} {'p50':>7} {'p95':>7} {'max':>7}\n"
        f"  {'console (httpx, whole HTML)':<34} {1000 * pct(console, 0.5):7.1f} {p95:7.1f} "
        f"{1000 * max(console):7.1f}\n"
        f"  {'raw store calls (baseline)':<34} {1000 * pct(raw, 0.5):7.1f} "
        f"{1000 * pct(raw, 0.95):7.1f} {1000 * max(raw):7.1f}\n"
        f"  p95 <= {TARGET_SERVER_P95_MS:.0f} ms: {MET[p95 <= TARGET_SERVER_P95_MS]}\n"
        f"  console / raw store calls: p50 of per-filter ratios {pct(s['ratios'], 0.5):.2f}, "
        f"p95 {pct(s['ratios'], 0.95):.2f}; ratio of p50s "
        f"{pct(console, 0.5) / pct(raw, 0.5):.2f}\n"
        f"  slowest: " + "; ".join(f"{ms:.0f} ms {name}" for ms, name in s["slowest"])
    )
    if "browser" in r:
        b = r["browser"]
        bp95 = pct(b["times"], 0.95)
        print(
            f"\nbrowser time to chart drawn + table present, {b['loads']} explorer loads "
            f"(chromium, headless):\n"
            f"  p50 {1000 * pct(b['times'], 0.5):.0f} ms, p95 {1000 * bp95:.0f} ms, "
            f"max {1000 * max(b['times']):.0f} ms (first, cold static cache: "
            f"{1000 * b['cold']:.0f} ms)\n"
            f"  p95 <= {TARGET_BROWSER_P95_S:.0f} s: {MET[bp95 <= TARGET_BROWSER_P95_S]}"
        )
    print(
        f"\npage weight, HTML + referenced scripts/stylesheets, uncached (KB = 1000 bytes);\n"
        f"the service sends them uncompressed (raw); behind a compressing proxy the gzip "
        f"column (level {GZIP_LEVEL}) is what is transferred:\n"
        f"  {'view':<44} {'html':>7} {'assets':>6} {'raw':>8} {'gzip':>8}  "
        f"gzip < {TARGET_WEIGHT_KB:.0f} KB  raw < {TARGET_WEIGHT_KB:.0f} KB"
    )
    for w in r["weight"]:
        print(
            f"  {w['view']:<44} {w['html'] / 1000:7.1f} {w['assets']:6d} {w['raw'] / 1000:8.1f} "
            f"{w['gzip'] / 1000:8.1f}  {MET[w['gzip'] < 1000 * TARGET_WEIGHT_KB]:<14}"
            f"{MET[w['raw'] < 1000 * TARGET_WEIGHT_KB]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="records to load")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--prefix", default="ffaudit-consolebench", help="index prefix of the data")
    parser.add_argument("--state-dir", type=Path, default=Path("var/bench-console"))
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch", type=int, default=5000, help="records per store.write")
    parser.add_argument("--loads", type=int, default=50, help="explorer filters timed")
    parser.add_argument("--browser-loads", type=int, default=15, help="0: no browser")
    args = parser.parse_args()
    r = run(args)
    print(
        f"CPython {platform.python_version()} on {platform.platform()} ({os.cpu_count()} CPUs, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())})\n"
        f"{r['records']:,} records in Elasticsearch, "
        + (f"loaded in {r['load_s']:.0f} s" if r["load_s"] is not None else "reused")
        + " (setup, not measured)"
    )
    report(r)


if __name__ == "__main__":
    main()
