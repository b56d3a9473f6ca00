"""End-to-end ingest benchmark: forward client with acks -> service -> Elasticsearch.

    .venv/bin/python -m tests.benchmarks.bench_ingest [--records N] [--batch B] [--json]

A script, not a test. The baseline runs in the same process against the same node:
`elasticsearch.helpers.async_bulk` of the very documents the service stores (create ops,
same batch size), so the ratio says what verification, chaining and the control database
cost on top of the raw write. The target is against that baseline, one bulk at a time; a
second baseline keeps as many bulks in flight as the sender keeps chunks unacknowledged,
which is what the pipelined service gets from Elasticsearch at best. Also measured:
send-to-searchable latency (the ack comes after the durable write; search visibility
follows within the 1 s refresh interval).

The service's collector is tuned as `ffaudit serve` tunes it (audit.common.memory:
objects alive at startup frozen, a larger first generation), after the producer's records
are built: in production those live in the producer's process, not in the service's heap.
`--python-gc` keeps CPython's default collector instead, for comparison.
Elasticsearch comes from FFAUDIT_TEST_ELASTICSEARCH_URL or `ffaudit dev elasticsearch up`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from audit.common.memory import tune_collector
from audit.db.session import make_engine, session_factory, upgrade
from audit.ingest.forward import ForwardServer
from audit.ingest.service import IngestService
from audit.integrity.keys import Signer
from audit.settings import AuditSettings
from audit.store.elastic import ElasticEventStore, to_document
from audit.store.protocol import StoredEvent
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from tests.ingest.conftest import make_records
from tests.ingest.forward_client import ForwardClient, event_time, packed_forward

TARGET_RATIO = 0.8


def dev_server_url(kind: str) -> str:
    """FFAUDIT_TEST_<KIND>_URL as the tests take it, else `ffaudit dev <kind> up`."""
    url = os.environ.get(f"FFAUDIT_TEST_{kind.upper()}_URL")
    if url:
        return url
    out = subprocess.run(
        [sys.executable, "-m", "audit", "dev", kind, "up"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def elasticsearch_url() -> str:
    return dev_server_url("elasticsearch")


async def through_service(
    es_url: str,
    prefix: str,
    records: list[dict[str, Any]],
    batch: int,
    signer: Signer,
    window: int = 1,
) -> tuple[float, ElasticEventStore]:
    workdir = tempfile.mkdtemp(prefix="ffaudit-bench-")
    db = f"sqlite:///{workdir}/control.db"
    upgrade(db)
    settings = AuditSettings(
        database_url=db, elasticsearch_url=es_url, forward_port=0, elasticsearch_index_prefix=prefix
    )
    sessions = session_factory(make_engine(db))
    StreamService(sessions).register(
        StreamRegistration(
            stream="bench", tenant="bench", public_key_pem=signer.verifier.pem().decode()
        )
    )
    store = ElasticEventStore(es_url, prefix=prefix)
    ingest = IngestService(settings, sessions, store)

    async def handler(tag: str, entries: Any, peer: Any) -> None:
        await ingest.ingest([e.record for e in entries], source="forward", peer=peer.address)

    server = ForwardServer(handler, settings)
    await server.start()
    client = await ForwardClient.connect(server.port)
    # The producer's chunks are packed before the clock starts: its serialisation is
    # the producer's cost (Fluent Bit's, in another process), not the service's.
    now = event_time(int(time.time()))
    frames = [
        (
            f"c{i}",
            packed_forward("ffaudit", [(now, r) for r in records[i : i + batch]], chunk=f"c{i}"),
        )
        for i in range(0, len(records), batch)
    ]
    try:
        started = time.perf_counter()
        # As Fluentd / Fluent Bit with acks: up to `window` chunks unacknowledged at once.
        outstanding: deque[str] = deque()
        for chunk_id, frame in frames:
            if len(outstanding) >= window:
                assert await client.read_ack(timeout=60) == outstanding.popleft()
            await client.send_raw(frame)
            outstanding.append(chunk_id)
        while outstanding:
            assert await client.read_ack(timeout=60) == outstanding.popleft()
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
        await server.stop()
    return elapsed, store


async def searchable_latency(es_url: str, prefix: str, signer: Signer, samples: int) -> list[float]:
    """Ack-to-searchable for single records sent one at a time to a live stream."""
    workdir = tempfile.mkdtemp(prefix="ffaudit-bench-")
    db = f"sqlite:///{workdir}/control.db"
    upgrade(db)
    settings = AuditSettings(
        database_url=db, elasticsearch_url=es_url, forward_port=0, elasticsearch_index_prefix=prefix
    )
    sessions = session_factory(make_engine(db))
    StreamService(sessions).register(
        StreamRegistration(
            stream="lat", tenant="lat", public_key_pem=signer.verifier.pem().decode()
        )
    )
    store = ElasticEventStore(es_url, prefix=prefix)
    ingest = IngestService(settings, sessions, store)
    records = make_records(signer, samples, stream="lat", tenant="lat", every=10_000, close=False)
    probe = AsyncElasticsearch(es_url)
    out = []
    try:
        for record in records:
            sent = time.perf_counter()
            await ingest.ingest([record], source="bench")
            while True:
                found = await probe.search(
                    index=f"{prefix}-lat-*",
                    size=0,
                    query={"term": {"event.hash": record["event.hash"]}},
                )
                if found["hits"]["total"]["value"]:
                    break
                await asyncio.sleep(0.005)
            out.append(time.perf_counter() - sent)
    finally:
        await probe.close()
        await store.close()
    return out


async def raw_bulk(
    es_url: str, prefix: str, records: list[dict[str, Any]], batch: int, in_flight: int = 1
) -> float:
    """The same documents the service writes (the store's own document form and index
    names, verdict ok), sent with helpers.async_bulk: the cost of the raw write alone.
    `in_flight`: bulk requests open at once (the service keeps several open when a sender
    keeps several chunks unacknowledged, so the fair comparison for that case)."""
    store = ElasticEventStore(es_url, prefix=prefix)
    await store.ensure_templates()
    now = datetime.now(UTC)
    docs = []
    for record in records:
        event = StoredEvent(
            doc_id=f"bench:{record['event.sequence']}",
            tenant="bench",
            stream="bench",
            sequence=record["event.sequence"],
            event_hash=record["event.hash"],
            timestamp=datetime.fromisoformat(record["@timestamp"]),
            record=record,
            verdict="ok",
            failure=None,
            received_at=now,
        )
        docs.append((store.index_for("bench", event.timestamp), event.doc_id, to_document(event)))
    await store.close()
    client = AsyncElasticsearch(es_url)
    try:
        slots = asyncio.Semaphore(in_flight)

        async def send(part: list[tuple[str, str, dict[str, Any]]]) -> None:
            actions = [
                {"_op_type": "create", "_index": index, "_id": doc_id, "_source": src}
                for index, doc_id, src in part
            ]
            await async_bulk(client, actions, chunk_size=batch, refresh=False)
            slots.release()

        started = time.perf_counter()
        sending = []
        for i in range(0, len(docs), batch):
            await slots.acquire()
            sending.append(asyncio.create_task(send(docs[i : i + batch])))
        await asyncio.gather(*sending)
        return time.perf_counter() - started
    finally:
        await client.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(n: int, batch: int, window: int, as_json: bool, python_gc: bool) -> None:
    es_url = elasticsearch_url()
    run = uuid.uuid4().hex[:8]
    signer = Signer.generate()
    records = make_records(signer, n, stream="bench", tenant="bench", every=1000)
    gc_threshold = AuditSettings.model_fields["gc_gen0_threshold"].default
    if not python_gc:
        tune_collector(gc_threshold)
    prefixes: list[str] = []

    def fresh() -> str:
        prefixes.append(f"ffaudit-bench-{run}-{len(prefixes)}")
        return prefixes[-1]

    e2e_times: dict[int, list[float]] = {1: [], window: []}
    raw_times: dict[int, list[float]] = {1: [], window: []}
    try:
        # Alternate raw and end-to-end runs (fresh indices each) so warm-up and machine
        # noise hit all; report the best of each.
        for _ in range(2):
            for w in raw_times:
                raw_times[w].append(await raw_bulk(es_url, fresh(), records, batch, w))
            for w in e2e_times:
                e2e, store = await through_service(
                    es_url, fresh(), records, batch, signer, window=w
                )
                await store.close()
                e2e_times[w].append(e2e)
        latency = await searchable_latency(es_url, fresh(), signer, 40)
        raw, raw_concurrent = min(raw_times[1]), min(raw_times[window])
    finally:
        client = AsyncElasticsearch(es_url)
        for prefix in prefixes:
            # ES 8 refuses wildcard deletes (action.destructive_requires_name): name them.
            names = await client.options(ignore_status=404).indices.get(index=f"{prefix}-*")
            for name in names.body if isinstance(names.body, dict) else {}:
                await client.indices.delete(index=name)
        await client.close()
    e2e_pipelined, e2e_one = min(e2e_times[window]), min(e2e_times[1])
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "records": len(records),
        "batch": batch,
        "window": window,
        "collector": "python default" if python_gc else f"serve's (gen0 {gc_threshold}, frozen)",
        "e2e_records_per_s": len(records) / e2e_pipelined,
        "e2e_one_chunk_at_a_time_records_per_s": len(records) / e2e_one,
        "raw_bulk_records_per_s": len(records) / raw,
        "raw_bulk_concurrent_records_per_s": len(records) / raw_concurrent,
        "ratio": raw / e2e_pipelined,
        "ratio_one_chunk_at_a_time": raw / e2e_one,
        "ratio_to_concurrent_raw": raw_concurrent / e2e_pipelined,
        "target_ratio": TARGET_RATIO,
        "searchable_p50_ms": 1000 * statistics.median(latency),
        "searchable_p99_ms": 1000 * pct(latency, 0.99),
    }
    if as_json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"CPython {result['python']}, {len(records)} records in batches of {batch}, "
        f"collector: {result['collector']}"
    )
    print(
        f"end-to-end, {window} chunks in flight (forward+ack -> verify -> ES) "
        f"{result['e2e_records_per_s']:>9,.0f} rec/s"
    )
    print(
        "end-to-end, one chunk at a time (stop-and-wait)          "
        f"{result['e2e_one_chunk_at_a_time_records_per_s']:>9,.0f} rec/s"
    )
    raw_rate = result["raw_bulk_records_per_s"]
    print(f"raw helpers.async_bulk, same documents, same batches  {raw_rate:>9,.0f} rec/s")
    print(
        f"raw, {window} bulk requests in flight                       "
        f"{result['raw_bulk_concurrent_records_per_s']:>9,.0f} rec/s"
    )
    verdict = "met" if result["ratio"] >= TARGET_RATIO else "MISSED"
    print(
        f"ratio end-to-end / raw = {result['ratio']:.2f} ({window} in flight), "
        f"{result['ratio_one_chunk_at_a_time']:.2f} (one at a time)   "
        f"target >= {TARGET_RATIO}: {verdict}"
    )
    print(
        f"ratio end-to-end ({window} in flight) / raw with {window} bulks in flight = "
        f"{result['ratio_to_concurrent_raw']:.2f}"
    )
    print(
        f"ingest call to searchable: p50 {result['searchable_p50_ms']:.0f} ms, "
        f"p99 {result['searchable_p99_ms']:.0f} ms (refresh_interval 1 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--window", type=int, default=4, help="chunks a sender keeps unacknowledged"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--python-gc", action="store_true", help="CPython's default collector, not serve's"
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.records, args.batch, args.window, args.json, args.python_gc))


if __name__ == "__main__":
    main()
