"""Re-verification of one stored stream on several processes: the result of the sequential
pass (`QueryService.verify_stream`), the same failures in the same order naming the same
stored records, read and verified by workers.

Slicing. `EventStore.snapshot` splits the stream's sequences into contiguous ranges (a few
per worker, so that one slow range does not idle the others and the parent joins early
ranges while later ones run) and counts the chained records in each; the counts number
every worker's lines as the sequential pass numbers them (line = the record's place among
the chained records read). Elasticsearch reads one point in time: every worker pages its
range with search_after in it, so the ranges and the counts are one snapshot. Sliced
scroll is not used: its slices are hashes of doc ids, records from all over the chain,
where the chain is verified in runs of consecutive sequences. The SQL store has no
snapshot that spans connections; rows are create-only, so what can change under a reader
is a record stored after the count, and a range whose count differs is the signal: the
whole stream is then verified sequentially.

Per range. A worker opens its own client (`SnapshotReader`), verifies its records with
`audit.integrity.parallel.SliceVerifier` and hands back what the join needs, the doc id
and verdict of each line (failures name records by line), the records kept aside at
ingest (evidence, in order) and its last chained record.

Join. `ParallelVerifier.join` (the offline `verify --jobs` join, property-tested against
the sequential verifier) settles each range on the true chain state in order. Its fallback
reads a range again from the snapshot (a thread of the parent, placing records only).

Naming. A failure names the record of its line when that line lies within 2·window lines
before the one whose feeding made it certain: what the sequential pass keeps of recent
records (`Names`, one rule for both paths).

Sequential instead. With one job, below PARALLEL_MIN_RECORDS (process start and join cost
more than they save), for a store another process cannot open, and for a stream with
purged ranges from retention (their jumps are state the join does not carry).

Cost. Workers do the reading and hashing; the parent joins (one to a few dozen replays
per range when the chain is intact) and names failures: about 1 µs of its CPU per record,
against about 40 µs per record for a worker to decode and verify it (bench_query on
Elasticsearch, which spends about 60 µs of its own CPU per record served). One paging
client is bound by the round trips of its single chain of requests; N workers keep N
chains in flight, so the rate grows with N until the cores are spent: on C cores shared
with Elasticsearch about C / (40 + 60) µs, with its nodes elsewhere about C / 40 µs,
bounded there by the cluster's own read rate.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

from audit.integrity.keys import Verifier
from audit.integrity.parallel import (
    ParallelVerifier,
    RecordLocator,
    SliceResult,
    SliceVerifier,
    Tuning,
    default_jobs,
    verifier_from_pem,
    worker_context,
)
from audit.integrity.verify import ChainVerifier, Failure, FailureKind, StreamReport, _Entry
from audit.store.protocol import EventStore, SnapshotReader, StoredEvent, Verdict

Progress = Callable[[int], Awaitable[None]]
# Below this many chained records a stream is verified in the calling process: starting
# workers and joining costs about what a few tens of thousands of records do.
PARALLEL_MIN_RECORDS = 50_000
RANGES_PER_JOB = 4
# The default worker count: the cores, at most this (the store's read rate is the limit
# beyond, and a re-verification should leave cores to ingest).
MAX_DEFAULT_JOBS = 8

_Key = tuple[str, str]


def resolve_jobs(configured: int | None) -> int:
    """Workers for one stream: `configured` (settings.verify_jobs; 0 or None: the cores,
    at most MAX_DEFAULT_JOBS)."""
    if configured:
        return max(1, configured)
    return max(1, min(default_jobs(), MAX_DEFAULT_JOBS))


def kept_aside(stream: str, event: StoredEvent) -> Failure:
    """A record ingest kept aside (verdict rejected): evidence, never fed to the chain."""
    return Failure(
        FailureKind.INSERTED,
        stream,
        None,
        event.sequence,
        f"kept aside at ingest ({event.failure}): not part of the chain",
        event.doc_id,
    )


def continue_from(
    verifier: ChainVerifier, tenant: str, stream: str, after: tuple[int, str]
) -> None:
    """Before feeding: sequences up to after[0] were verified, the chain continuing from
    hash after[1] (incremental verification); the state jumping a purged range 1..after[0]
    would leave."""
    verifier.streams[tenant, stream] = StreamReport(
        stream,
        tenant,
        expected=after[0] + 1,
        head_hash=after[1],
        recent=[None] * verifier.window,
    )


class Names:
    """Failures name the stored record of their line, and `blamed` keeps its verdict."""

    def __init__(self, window: int) -> None:
        self.reach = 2 * window
        self.blamed: dict[str, str] = {}

    def name(
        self, at: int, failures: Iterable[Failure], record: Callable[[int], tuple[str, str]]
    ) -> list[Failure]:
        """`failures` made certain when line `at` was fed (the chain's length at its end);
        `record(line)`: (doc id, verdict) of a line within reach."""
        named = []
        for failure in failures:
            line = failure.line
            if line is not None and 0 < line <= at and at - line < self.reach:
                doc_id, verdict = record(line)
                failure = replace(failure, record_id=doc_id)
                self.blamed[doc_id] = verdict
            named.append(failure)
        return named


@dataclass(slots=True)
class ChainRun:
    """One verification's reading of the chain, sequential or parallel alike."""

    records: int = 0
    failures: list[Failure] = field(default_factory=list)  # named; end of input last
    evidence: list[Failure] = field(default_factory=list)
    last_sequence: int = 0
    last_hash: str | None = None
    blamed: dict[str, str] = field(default_factory=dict)
    report: StreamReport | None = None
    # How the join went (ParallelVerifier.joined): for tests and benchmarks.
    joined: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Range:
    reader: SnapshotReader
    stream: str
    first: int
    last: int
    first_line: int
    chained: int


@dataclass(slots=True)
class _RangeResult:
    verified: SliceResult
    doc_ids: list[str]
    verdicts: list[str]
    evidence: list[Failure]
    last: tuple[int, str] | None  # (sequence, event hash) of its last chained record


async def verify_parallel(
    store: EventStore,
    key: Verifier,
    tenant: str,
    stream: str,
    *,
    start: int,
    end: int | None,
    seed: tuple[int, str] | None,
    jobs: int,
    min_records: int = PARALLEL_MIN_RECORDS,
    on_progress: Progress | None = None,
    nice: int = 0,
) -> ChainRun | None:
    """The stream verified by `jobs` workers, or None where the sequential pass must run
    (too small, a store no other process opens, a count that changed while read).
    `seed`: (sequence, hash) the chain continues from (`continue_from`). `nice`: added to
    the workers' scheduling niceness (background work yields the cores to ingest)."""
    snapshot = await store.snapshot(tenant, stream, start, end, parts=jobs * RANGES_PER_JOB)
    try:
        total = sum(r.chained for r in snapshot.ranges)
        if snapshot.reader is None or total < max(1, min_records):
            return None
        ranges, line = [], 1
        for r in snapshot.ranges:
            ranges.append(_Range(snapshot.reader, stream, r.first, r.last, line, r.chained))
            line += r.chained
        return await _run(ranges, key, tenant, stream, seed, jobs, on_progress, nice)
    finally:
        await store.release(snapshot)


def _lower_priority(nice: int) -> None:
    """A worker's initializer: `nice` added to its niceness (0: left as it is)."""
    if nice > 0:
        os.nice(nice)


async def _run(
    ranges: list[_Range],
    key: Verifier,
    tenant: str,
    stream: str,
    seed: tuple[int, str] | None,
    jobs: int,
    on_progress: Progress | None,
    nice: int = 0,
) -> ChainRun | None:
    joiner = ParallelVerifier(key, strict=False)
    if seed is not None:
        continue_from(joiner, tenant, stream, seed)
    names = Names(joiner.window)
    run = ChainRun()
    held: list[tuple[int, _RangeResult]] = []  # (first line, result) of the recent ranges

    def record(line: int) -> tuple[str, str]:
        for first, result in reversed(held):
            if line >= first:
                return result.doc_ids[line - first], result.verdicts[line - first]
        raise AssertionError(f"line {line} is out of reach")

    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=worker_context([__name__]),
        initializer=_lower_priority,
        initargs=(nice,),
    )
    loop = asyncio.get_running_loop()
    pem = key.pem()
    futures = [
        loop.run_in_executor(pool, _verify_range, r, pem, joiner.window, Tuning()) for r in ranges
    ]
    try:
        for r, future in zip(ranges, futures, strict=True):
            result = await future
            if len(result.doc_ids) != r.chained:
                return None  # records stored after the count (SQL): read it all again
            # Failures of this range name lines at most 2·window before it.
            held = [h for h in held if h[0] + len(h[1].doc_ids) > r.first_line - names.reach]
            held.append((r.first_line, result))
            # A thread: the fallback re-reads the range there, with a client of its own
            # (the workers' queue may hold later ranges still).
            tagged = await asyncio.to_thread(
                joiner.join, result.verified, partial(_locate_range, r)
            )
            for at, failure in tagged:
                run.failures += names.name(at, (failure,), record)
            run.evidence += result.evidence
            run.records += r.chained
            if result.last is not None:
                run.last_sequence, run.last_hash = result.last
            if on_progress is not None:
                await on_progress(run.records)
        run.failures += names.name(run.records, joiner.finish(), record)
    finally:
        for future in futures:
            future.cancel()
        await asyncio.to_thread(partial(pool.shutdown, wait=True, cancel_futures=True))
    run.blamed = names.blamed
    run.report = joiner.streams.get((tenant, stream))
    run.joined = joiner.joined
    return run


# -- worker side ----------------------------------------------------------------------------


def _verify_range(r: _Range, pem: bytes, window: int, tuning: Tuning) -> _RangeResult:
    verifier = SliceVerifier(verifier_from_pem(pem), strict=False, window=window, tuning=tuning)
    return asyncio.run(_scan_range(r, verifier))


async def _scan_range(r: _Range, verifier: SliceVerifier) -> _RangeResult:
    doc_ids: list[str] = []
    verdicts: list[str] = []
    seen: dict[str, str] = {}  # one object per verdict: pickled once, then by reference
    evidence: list[Failure] = []
    last: tuple[int, str] | None = None
    line = r.first_line - 1
    feed = verifier.feed_stored
    async for event in r.reader.scan(r.first, r.last):
        if event.verdict == Verdict.REJECTED:
            evidence.append(kept_aside(r.stream, event))
            continue
        line += 1
        doc_ids.append(event.doc_id)
        verdicts.append(seen.setdefault(event.verdict, event.verdict))
        feed(line, event.record)
        last = event.sequence, event.event_hash
    return _RangeResult(verifier.result(), doc_ids, verdicts, evidence, last)


def _locate_range(r: _Range, after: int) -> list[tuple[_Key, _Entry]]:
    """The range's records after line `after`, placed (the join's fallback re-read)."""
    return asyncio.run(_locate(r, after))


async def _locate(r: _Range, after: int) -> list[tuple[_Key, _Entry]]:
    locator = RecordLocator()
    located = []
    line = r.first_line - 1
    async for event in r.reader.scan(r.first, r.last):
        if event.verdict == Verdict.REJECTED:
            continue
        line += 1
        if line > after and (found := locator.locate(line, event.record)) is not None:
            located.append(found)
    return located
