"""Who-did-what: queries, job timelines and verification, tenant-scoped by the caller.

Filters by raw ids (actor, session, target) are turned into pseudonyms under every active
key of the caller's tenant; the subject role is always restricted to its own records. The
tenant always comes from the token.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, Protocol

from audit.errors import CanonicalizationError, NotFoundError
from audit.integrity.canonical import MAX_DEPTH, too_deep
from audit.integrity.chain import record_hash
from audit.integrity.keys import Verifier
from audit.integrity.pseudonym import PiiKind
from audit.integrity.record import EVENT_HASH, ZERO_HASH
from audit.integrity.verify import ChainVerifier, Failure, PurgedRange
from audit.query.keyrings import TenantKeyrings
from audit.query.parallel_verify import (
    PARALLEL_MIN_RECORDS,
    ChainRun,
    Names,
    continue_from,
    kept_aside,
    resolve_jobs,
    verify_parallel,
)
from audit.store.protocol import EventStore, StoredEvent, Verdict
from audit.store.query import EventPage, EventQuery
from audit.streams.service import StreamService

Progress = Callable[[int], Awaitable[None]]
# About a page of the Elasticsearch store: a progress line every few tens of milliseconds
# at full speed, a negligible share of the work.
PROGRESS_EVERY = 1000


class PurgedRanges(Protocol):
    """Retention's signed checkpoints (audit.retention.checkpoints.PurgedRanges)."""

    def ranges(self, tenant: str, stream: str) -> tuple[list[PurgedRange], list[Failure]]: ...


@dataclass(frozen=True, slots=True)
class Filters:
    actor: str | None = None  # raw ids: pseudonymised here
    session: str | None = None
    target: str | None = None
    client_ip: str | None = None
    # Pseudonyms as records and alerts show them (following an alert's group key).
    actor_hash: str | None = None
    session_hash: str | None = None
    client_ip_hash: str | None = None
    # SHA-256 of an input or output file, as records name it (a file met in an alert).
    file_hashes: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    order: Literal["asc", "desc"] = "desc"

    def names(self) -> list[str]:
        """Which filters were used (recorded in the log of the logs; never their values)."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return sorted(name for name, value in values if value not in (None, (), "desc"))


@dataclass(frozen=True, slots=True)
class StreamVerification:
    stream: str
    records: int
    failures: list[Failure]
    head_sequence: int
    head_hash: str
    stored_last_sequence: int
    stored_last_hash: str | None
    signed_through: int
    matches_head: bool
    # The records kept aside at ingest (also in `failures`): evidence, not store damage.
    evidence: list[Failure] = field(default_factory=list)
    # The stored verdict of every record a failure names (what ingest already knew of it).
    verdicts: dict[str, str] = field(default_factory=dict)
    # Worker processes that read and verified it (0: this process): how, not what, so
    # two verifications of one stream compare equal either way.
    workers: int = field(default=0, compare=False)


class QueryService:
    def __init__(
        self,
        store: EventStore,
        keyrings: TenantKeyrings,
        streams: StreamService,
        *,
        purged: PurgedRanges | None = None,
        verify_jobs: int = 0,
        verify_parallel_from: int = PARALLEL_MIN_RECORDS,
    ) -> None:
        self.store = store
        self.keyrings = keyrings
        self.streams = streams
        self.purged = purged
        # Worker processes that re-verify one large stream (0: the cores, capped).
        self.verify_jobs = verify_jobs
        # Streams with fewer chained records are verified in this process.
        self.verify_parallel_from = verify_parallel_from
        self._pool_busy = False

    def build(self, tenant: str, own_only: str | None, filters: Filters) -> EventQuery:
        """The store query; `own_only`, a subject id, narrows it to that actor's records."""
        actors: tuple[str, ...] = ()
        if filters.actor is not None:
            actors = self.keyrings.candidates(tenant, PiiKind.USER, filters.actor)
        if filters.actor_hash is not None:
            # Both given: records that match both (nothing, unless they agree).
            actors = (
                tuple(a for a in actors if a == filters.actor_hash) or ("-",)
                if filters.actor is not None
                else (filters.actor_hash,)
            )
        if own_only is not None:
            own = self.keyrings.candidates(tenant, PiiKind.USER, own_only)
            # A subject asking for someone else gets nothing, not an error that confirms
            # the other person exists.
            actors = tuple(a for a in actors if a in own) if actors else own
            if (filters.actor is not None or filters.actor_hash is not None) and not actors:
                actors = ("-",)
        return EventQuery(
            tenant=tenant,
            actor_hashes=actors,
            session_hashes=_both(
                self.keyrings.candidates(tenant, PiiKind.SESSION, filters.session)
                if filters.session is not None
                else None,
                filters.session_hash,
            ),
            client_ip_hashes=_both(
                self.keyrings.candidates(tenant, PiiKind.CLIENT_IP, filters.client_ip)
                if filters.client_ip is not None
                else None,
                filters.client_ip_hash,
            ),
            target_hashes=(
                self.keyrings.candidates(tenant, PiiKind.PATH, filters.target)
                if filters.target is not None
                else ()
            ),
            file_hashes=filters.file_hashes,
            actions=filters.actions,
            outcomes=filters.outcomes,
            job_ids=filters.jobs,
            streams=filters.streams,
            verdicts=filters.verdicts,
            since=filters.since,
            until=filters.until,
            text=filters.text,
            order=filters.order,
        )

    def coverage(self, tenant: str) -> tuple[list[str], list[str]]:
        """(the pseudonym key ids a raw id is matched under, the streams a raw-id query
        cannot cover): a stream sealed under a key the service does not hold, or whose key
        is not known yet, is named rather than silently skipped."""
        held = set(self.keyrings.keys(tenant))
        blind = sorted(
            stream
            for stream, keys in self.streams.key_ids(tenant).items()
            if not keys or not keys <= held
        )
        return sorted(held), blind

    def subject_linked(self, tenant: str, raw: str) -> bool | None:
        """Whether the subject vault holds a live key for the raw user id, i.e. whether its
        vault-era (v2) records can be found by it; None without a vault. After an erasure it
        is False: the records remain and verify, but the raw id no longer reaches them. (A
        subject never sealed with the vault is False too: tombstones name no one.)"""
        vault = self.keyrings.vault
        if vault is None:
            return None
        lookups = self.keyrings.require(tenant).subject_lookups(PiiKind.USER, raw)
        return bool(vault.find(tenant, PiiKind.USER.value, lookups))

    async def search(self, query: EventQuery, limit: int, cursor: str | None) -> EventPage:
        return await self.store.search(query, limit=limit, cursor=cursor)

    async def one(self, tenant: str, own_only: str | None, doc_id: str) -> StoredEvent:
        event = await self.store.get(tenant, doc_id)
        if event is None:
            raise NotFoundError(f"no event {doc_id!r}")
        if own_only is not None:
            # A thread: the keyring file and the subject vault are blocking reads.
            own = await asyncio.to_thread(self.keyrings.candidates, tenant, PiiKind.USER, own_only)
            if event.record.get("user.hash") not in own:
                raise NotFoundError(f"no event {doc_id!r}")
        return event

    async def expected_records(self, tenant: str, stream: str, head_sequence: int) -> int:
        """How many records verification will find: the accepted head's sequence less the
        ranges retention purged (progress for long runs counts towards this)."""
        if self.purged is None:
            return head_sequence
        ranges, _ = await asyncio.to_thread(self.purged.ranges, tenant, stream)
        return max(0, head_sequence - sum(r.last - r.first + 1 for r in ranges))

    async def verify_stream(
        self,
        tenant: str,
        stream: str,
        *,
        on_progress: Progress | None = None,
        after: tuple[int, str] | None = None,
        through_head: bool = False,
        jobs: int | None = None,
        parallel_from: int | None = None,
        worker_nice: int = 0,
    ) -> StreamVerification:
        """Re-verify what the store holds against the key and the head the service accepted:
        edits or deletions made inside the store after ingest show up here. `on_progress`
        gets the records checked so far every PROGRESS_EVERY records (long chains; with
        workers, as each range of the stream is joined).

        `after` = (sequence, hash) that an earlier pass verified: only the records after it
        are read, the chain continuing from that hash (incremental re-verification). With
        `through_head`, records after the head as read are left out: those ingest is placing
        meanwhile, or still holds as pending, are not the accepted chain yet. `jobs`:
        worker processes for a large stream (None: `verify_jobs`); the result is the same
        (audit.query.parallel_verify). `parallel_from`: records from which a stream counts
        as large (None: `verify_parallel_from`); `worker_nice`: the workers' added
        niceness."""
        read = self.streams.read(stream, tenant_id=tenant)
        # The head may cover records another replica wrote a moment ago, which this store
        # has no reason to have made searchable: without this, a chain read too early
        # ends before the head, and re-verification raised a false store_tampered (soak).
        await self.store.refresh(tenant)
        key = self.streams.verifier(tenant, stream)
        failures: list[Failure] = []
        ranges: list[PurgedRange] = []
        if self.purged is not None:
            # Retention removed these on purpose; their signed checkpoints stand in for them.
            ranges, failures = await asyncio.to_thread(self.purged.ranges, tenant, stream)
        start = 1
        seed: tuple[int, str] | None = None
        if after is not None and after[0] > 0:
            if any(r.first <= after[0] < r.last for r in ranges):
                after = None  # the verified point was purged since: verify it all
            else:
                # The verified prefix stands in for itself, as a purged range would: the
                # chain continues from its hash (what jumping that range would leave).
                ranges = [r for r in ranges if r.first > after[0]]
                failures = [f for f in failures if (f.sequence or 0) > after[0]]
                start = after[0] + 1
                if ranges:
                    ranges.append(PurgedRange(1, after[0], ZERO_HASH, after[1]))
                else:
                    seed = after
        end = read.head_sequence if through_head else None
        workers = jobs if jobs is not None else resolve_jobs(self.verify_jobs)
        large = self.verify_parallel_from if parallel_from is None else parallel_from
        run = None
        # The accepted head tells the size without asking the store: an incremental pass
        # (the re-verifier's usual one) stays here without a snapshot being taken.
        if (
            workers > 1
            and not ranges
            and read.head_sequence - start + 1 >= large
            # One pool per replica at a time: concurrent verifications (a caller repeating
            # POST /v1/verify) run in this process rather than fan out `workers` each.
            and not self._pool_busy
        ):
            self._pool_busy = True
            try:
                run = await verify_parallel(
                    self.store,
                    key,
                    tenant,
                    stream,
                    start=start,
                    end=end,
                    seed=seed,
                    jobs=workers,
                    min_records=large,
                    on_progress=on_progress,
                    nice=worker_nice,
                )
            finally:
                self._pool_busy = False
        used = workers if run is not None else 0
        if run is None:
            run = await self._verify_sequential(
                key, tenant, stream, start, end, ranges, seed, on_progress
            )
        failures += run.failures
        failures += run.evidence
        last_seq, last_hash = run.last_sequence, run.last_hash
        report = run.report
        if (ranges or seed) and report is not None and report.expected - 1 > last_seq:
            # The stream's tail was purged (or nothing follows the verified prefix): the
            # chain ends with its last purged range.
            last_seq, last_hash = report.expected - 1, report.head_hash
        matches = last_seq == read.head_sequence and (
            last_hash == read.head_hash or read.head_sequence == 0
        )
        return StreamVerification(
            stream=stream,
            records=run.records,
            failures=failures,
            head_sequence=read.head_sequence,
            head_hash=read.head_hash,
            stored_last_sequence=last_seq,
            stored_last_hash=last_hash,
            signed_through=report.signed_through if report else 0,
            matches_head=matches,
            evidence=run.evidence,
            verdicts={
                **run.blamed,
                **{f.record_id: "rejected" for f in run.evidence if f.record_id},
            },
            workers=used,
        )

    async def _verify_sequential(
        self,
        key: Verifier,
        tenant: str,
        stream: str,
        start: int,
        end: int | None,
        ranges: list[PurgedRange],
        seed: tuple[int, str] | None,
        on_progress: Progress | None,
    ) -> ChainRun:
        """`verify_stream` in this process: every record fed as the scan reads it."""
        verifier = ChainVerifier(key, strict=False)
        if seed is not None:
            continue_from(verifier, tenant, stream, seed)
        if ranges:
            verifier.skip_purged(tenant, stream, ranges)
        run = ChainRun()
        names = Names(verifier.window)
        # (doc id, verdict) of each recent line: what a failure may name (Names.reach).
        recent: OrderedDict[int, tuple[str, str]] = OrderedDict()
        record = recent.__getitem__
        line = 0
        async for event in self.store.scan(tenant, stream, start=start, end=end):
            if event.verdict == Verdict.REJECTED:
                # Kept aside at ingest, never part of the chain: reported, not fed.
                run.evidence.append(kept_aside(stream, event))
                continue
            line += 1
            recent[line] = (event.doc_id, event.verdict)
            if len(recent) > names.reach:
                recent.popitem(last=False)
            # The verifier hashes the record as it is: no canonical line is made to be parsed.
            found = verifier.feed_record(line, event.record)
            if found:
                run.failures += names.name(line, found, record)
            run.last_sequence, run.last_hash = event.sequence, event.event_hash
            if on_progress is not None and line % PROGRESS_EVERY == 0:
                await on_progress(line)
        run.failures += names.name(line, verifier.finish(), record)
        run.records = line
        run.blamed = names.blamed
        run.report = verifier.streams.get((tenant, stream))
        return run


def _both(candidates: tuple[str, ...] | None, pseudonym: str | None) -> tuple[str, ...]:
    """A raw value's pseudonyms, a pseudonym given as such, or both (they must agree)."""
    if pseudonym is None:
        return candidates or ()
    if candidates is None:
        return (pseudonym,)
    return tuple(c for c in candidates if c == pseudonym) or ("-",)


UNRENDERABLE = "ffaudit.unrenderable"


def describe(event: StoredEvent) -> dict[str, Any]:
    record = event.record
    if too_deep(record):
        # Stored before the depth limit: shown with a marker instead of failing the whole
        # page (the record is unchanged in the store, and its hash still verifies there).
        record = {k: v for k, v in record.items() if type(v) is not dict and type(v) is not list}
        record[UNRENDERABLE] = f"the record nests deeper than {MAX_DEPTH} levels: not shown"
    return {
        "id": event.doc_id,
        "stream": event.stream,
        "sequence": event.sequence,
        "verdict": event.verdict,
        "failure": event.failure,
        "intact": _intact(event),
        "record": record,
    }


def _intact(event: StoredEvent) -> bool:
    """The stored record hashes to the event.hash it carries and that ingest accepted."""
    try:
        return (
            event.record.get(EVENT_HASH) == event.event_hash
            and record_hash(event.record) == event.event_hash
        )
    except CanonicalizationError:
        return False
