"""The ingest path: attribute records to registered streams, verify, store, then commit heads.

Ordering is what makes acknowledgements honest. For each stream batch:
1. read the head and pending records (control database);
2. plan verdicts (audit.ingest.planner);
3. write the records to the event store — create-only, so a retry after a crash finds its
   own earlier write instead of duplicating it;
4. commit the new head with a compare-and-set, together with pending rows, checkpoints and
   alerts. A lost race (another replica moved the head) re-plans from step 1.
Only after step 4 does the caller acknowledge. A store that refuses writes raises
StoreUnavailableError: nothing is acknowledged and the producer keeps its records.

Calls of one stream overlap without changing that order: steps 1-2 run in the stream's plan
turn, step 3 with no turn held, step 4 in its commit turn (both turns taken in arrival order
before the call's first await). The next call plans on its predecessor's planned head while
that one writes, so consecutive writes overlap; it commits only after the predecessor
committed as planned and its own write was clean, and otherwise plans again from the
database in its commit turn, as after a lost race.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.kinds import RuleId
from audit.alerts.service import raise_event_alert, raise_planned_alert
from audit.errors import (
    BusyError,
    CanonicalizationError,
    ConflictError,
    FFAuditError,
    ForbiddenError,
    TooManyRequestsError,
)
from audit.ingest.planner import Head, Incoming, Plan, PlannedVerdict, Planner, Result
from audit.ingest.repository import IngestRepository
from audit.ingest.turns import Turn, Turns
from audit.integrity import record as f
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import record_hash
from audit.integrity.keys import Verifier
from audit.integrity.record import document_id as doc_id
from audit.metrics import Metrics
from audit.models import Checkpoint, PendingRecord, QuarantinedRecord
from audit.producers.schemas import ProducerIdentity
from audit.secretbox import SecretBox
from audit.settings import AuditSettings
from audit.store.protocol import EventStore, StoredEvent, Verdict
from audit.streams.repository import StreamRepository
from audit.streams.service import StreamService
from audit.tlog.service import append_accepted

log = logging.getLogger("audit.ingest")
_RESERVED_PREFIX = "ffaudit.ingest."
_COMMIT_ATTEMPTS = 12
_MAX_BUDGETS = 10_000  # quarantine budgets kept before idle senders are forgotten


class _LostRace(Exception):
    pass


@dataclass(slots=True)
class _StreamTurn:
    """A call's place in a stream's two lines, both taken when the call arrived."""

    plan: Turn
    commit: Turn


@dataclass(slots=True)
class _Speculation:
    """What a call in its commit turn leaves for the next one to plan on: its planned head
    when that is the stream's whole state after the commit, else None (wait for the
    commit). `committed` is True once the commit succeeded as planned."""

    committed: asyncio.Future[bool]
    head: Head | None = None


@dataclass(slots=True)
class IngestReport:
    results: list[Result] = field(default_factory=list)
    quarantined: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.results:
            out[r.outcome.value] += 1
        if self.quarantined:
            out["quarantined"] = len(self.quarantined)
        return dict(out)


def check_record(index: int, obj: object) -> Incoming | str:
    """An Incoming, or why `obj` cannot be chained (the message names no values)."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    problem = f.shape_error(obj) or f.schema_error(obj)
    if problem is not None:
        return problem
    # One C-level search instead of a startswith per key: "\0" cannot occur in a JSON key
    # that reached us as text, so "\0ffaudit.ingest." matches only at a key's start. The
    # join also refuses a key that is not a string.
    try:
        keys = "\0" + "\0".join(obj)
    except TypeError:
        return "object keys must be strings"
    if keys.find("\0" + _RESERVED_PREFIX) >= 0:
        return f"fields under {_RESERVED_PREFIX}* are reserved for the service"
    try:
        computed = record_hash(obj)
    except CanonicalizationError as exc:
        return exc.message
    try:
        ts = datetime.fromisoformat(obj[f.TIMESTAMP])
    except ValueError:
        return f"{f.TIMESTAMP} is not an RFC 3339 timestamp"
    if ts.tzinfo is None:
        return f"{f.TIMESTAMP} has no UTC offset"
    return Incoming(
        index=index,
        record=obj,
        sequence=obj[f.EVENT_SEQUENCE],
        event_hash=obj[f.EVENT_HASH],
        prev=obj[f.PREV],
        timestamp=ts.astimezone(UTC),
        checkpoint=obj[f.EVENT_ACTION] == "audit.checkpoint",
        content_ok=computed == obj[f.EVENT_HASH],
        content_hash=computed,
    )


class IngestService:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        store: EventStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self.store = store
        self.metrics = metrics or Metrics()
        self._streams = StreamService(sessions)
        # Two turns per stream: planning + writing, then committing. A call plans on the
        # head its predecessor planned while that one commits (see _Speculation).
        self._plans = Turns()
        self._commits = Turns()
        self._speculation: dict[tuple[str, str], _Speculation] = {}
        self._registrations: dict[tuple[str, str], tuple[str, Verifier]] = {}
        # Quarantined payloads are kept encrypted: they can hold raw PII (an unsealed event
        # sent by mistake carries e-mail addresses and paths in clear).
        self._box: SecretBox | None = None
        self._budgets: dict[str, _Budget] = {}
        self._noted_keys: dict[tuple[str, str], set[str]] = {}

    async def ingest(
        self,
        records: Sequence[object],
        *,
        source: str,
        peer: str | None = None,
        producer: ProducerIdentity | None = None,
    ) -> IngestReport:
        """Verify and store `records`; returns once everything is durable (then ack).

        `producer`, the authenticated writer (forward user auth), may write only streams of
        its tenant that its patterns name: otherwise the whole call is refused with
        ForbiddenError before anything is stored. The service's own streams take records
        from `source="service"` alone."""
        started = time.perf_counter()
        report = IngestReport()
        # Streams are named per tenant: records are grouped by the tenant they claim.
        by_stream: dict[tuple[str, str], list[Incoming]] = defaultdict(list)
        malformed: list[tuple[int, object, str]] = []
        for index, obj in enumerate(records):
            checked = check_record(index, obj)
            if isinstance(checked, str):
                malformed.append((index, obj, checked))
            else:
                by_stream[checked.record[f.TENANT], checked.record[f.STREAM]].append(checked)
        # Each stream's place in line, taken before this call first awaits: calls enter a
        # stream in the order they arrived however long each one's own awaits take.
        turns = {
            key: _StreamTurn(self._plans.take(key), self._commits.take(key)) for key in by_stream
        }
        try:
            for index, obj, problem in malformed:
                await self._quarantine(
                    [(index, obj)],
                    problem,
                    source,
                    peer,
                    stream=None,
                    tenant=producer.tenant if producer is not None else None,
                    report=report,
                    rule=RuleId.MALFORMED_RECORD,
                    producer=producer.name if producer is not None else None,
                )
            await self._authorize(by_stream, source, peer, producer)
            self.metrics.in_flight.inc()
            try:
                # Streams are independent: each progresses in its own turn. Every stream
                # finishes (stored and committed, or failed) before the call reports.
                outcomes = await asyncio.gather(
                    *(
                        self._ingest_stream(
                            tenant, stream, items, source, peer, producer, report, turns
                        )
                        for (tenant, stream), items in by_stream.items()
                    ),
                    return_exceptions=True,
                )
            finally:
                self.metrics.in_flight.dec()
        finally:
            for turn in turns.values():
                turn.plan.release()
                turn.commit.release()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        report.results.sort(key=lambda r: r.index)
        # Counted per outcome, then added: a label lookup per record is measurable here.
        tally = Counter(r.outcome.value for r in report.results)
        failures = Counter(kind.value for r in report.results for kind in r.failures)
        for value, count in tally.items():
            self.metrics.records.labels(value, source).inc(count)
        for kind, count in failures.items():
            self.metrics.integrity_failures.labels(kind).inc(count)
        self.metrics.ack_latency.labels(source).observe(time.perf_counter() - started)
        return report

    async def sweep_gaps(self) -> None:
        """Flag gaps that stayed open past the timeout, also when no new record arrives."""
        streams = await asyncio.to_thread(self._streams_with_pending)
        for tenant, stream in streams:
            registration = await self._registration(tenant, stream)
            if registration is not None:
                key = (tenant, stream)
                async with self._plans.take(key), self._commits.take(key):
                    await self._commit_stream(stream, registration, [])

    # -- per stream -----------------------------------------------------------------------

    def is_service_stream(self, stream: str) -> bool:
        return stream.startswith(self.settings.service_stream)

    async def _authorize(
        self,
        by_stream: dict[tuple[str, str], list[Incoming]],
        source: str,
        peer: str | None,
        producer: ProducerIdentity | None,
    ) -> None:
        """Refuse the whole call when any record is for a stream its writer may not write:
        a producer writes its own tenant's streams that its patterns name, nothing else."""
        for (tenant, stream), items in by_stream.items():
            if source != "service" and self.is_service_stream(stream):
                await self._refuse(stream, items, peer, producer, owner=None)
                raise ForbiddenError(f"stream {stream!r} is written by the audit service alone")
            if producer is None:
                continue
            if producer.tenant == tenant and producer.may_write(stream):
                continue
            registration = await self._registration(tenant, stream)
            owner = registration[0] if registration is not None else None
            await self._refuse(stream, items, peer, producer, owner=owner)
            raise ForbiddenError(f"producer {producer.name!r} may not write stream {stream!r}")

    async def _refuse(
        self,
        stream: str,
        items: list[Incoming],
        peer: str | None,
        producer: ProducerIdentity | None,
        owner: str | None,
    ) -> None:
        """Count and alert a refused write: to the stream's owner, who learns that its stream
        was targeted (and by whom only when the producer is its own), and to the producer's
        tenant. Nothing reaches the sender but the refusal."""
        self.metrics.rejected.labels("unauthorized_producer").inc(len(items))
        log.warning(
            "refused %d record(s) for stream %s from %s (producer %s)",
            len(items),
            stream,
            peer or "-",
            producer.name if producer else "none",
        )
        tenants = {owner, producer.tenant if producer else None} - {None}
        if not tenants:
            return
        await asyncio.to_thread(self._alert_refusal, stream, len(items), peer, producer, tenants)

    def _alert_refusal(
        self,
        stream: str,
        count: int,
        peer: str | None,
        producer: ProducerIdentity | None,
        tenants: set[str | None],
    ) -> None:
        with self._sessions.begin() as session:
            for tenant in sorted(t for t in tenants if t is not None):
                own = producer is not None and producer.tenant == tenant
                who = producer.name if own and producer else "a producer of another tenant"
                raise_event_alert(
                    session,
                    self.settings,
                    rule=RuleId.UNAUTHORIZED_PRODUCER,
                    title=f"{count} record(s) for stream {stream} refused: {who} may not write it",
                    tenant_id=tenant,
                    stream_id=stream,
                    # Grouped by who tried, never by the connection's source port.
                    group=f"{stream}:{producer.name if own and producer else _host(peer)}",
                    detail={"count": count, "producer": who, "peer": _host(peer) if own else None},
                )

    async def _ingest_stream(
        self,
        claimed: str,
        stream: str,
        items: list[Incoming],
        source: str,
        peer: str | None,
        producer: ProducerIdentity | None,
        report: IngestReport,
        turns: dict[tuple[str, str], _StreamTurn],
    ) -> None:
        registration = await self._registration(claimed, stream)
        if registration is None:
            # Attributed to the authenticated producer's tenant, never to the tenant a record
            # claims: anyone could claim any tenant and raise alerts there.
            tenant = producer.tenant if producer is not None else None
            await self._quarantine(
                [(i.index, i.record) for i in items],
                "unknown stream",
                source,
                peer,
                stream=stream,
                tenant=tenant,
                report=report,
                rule=RuleId.UNKNOWN_STREAM,
                producer=producer.name if producer is not None else None,
            )
            return
        if items:
            report.results += await self._pipelined(
                stream, registration, items, turns[claimed, stream]
            )

    async def _pipelined(
        self,
        stream: str,
        registration: tuple[str, Verifier],
        items: list[Incoming],
        turn: _StreamTurn,
    ) -> list[Result]:
        """Plan in the stream's plan turn, write with no turn held, commit in its commit
        turn: the next call of the stream plans and writes while this one writes and commits.

        The next call plans on this call's planned head only when that head is all the state
        this commit leaves (no pending records: then no checkpoints are loaded either) and
        its records all come after it, and commits only once this commit succeeded as
        planned; else it plans again from the database in its commit turn, keeping the names
        its records were already written under (as after a race lost to another replica)."""
        tenant, verifier = registration
        key = (tenant, stream)
        adopted: dict[str, Incoming] = {}
        written: dict[int, str] = {}
        mine = _Speculation(asyncio.get_running_loop().create_future())
        try:
            async with turn.plan:
                base = self._speculation.get(key)
                if base is not None and (base.head is None or base.committed.done()):
                    await asyncio.shield(base.committed)
                    base = None
                planned = await self._plan_on(
                    stream, tenant, verifier, items, adopted, written, base
                )
                if planned is None and base is not None:
                    # The plan needs what the call before is still writing: wait for it.
                    await asyncio.shield(base.committed)
                    base = None
                    planned = await self._plan_on(
                        stream, tenant, verifier, items, adopted, written, base
                    )
                assert planned is not None  # without a base a plan is always made
                plan, head_only = planned
                mine.head = replace(plan.head) if head_only else None
                self._speculation[key] = mine
            clean = await self._write_planned(tenant, plan, adopted, written)
            if not clean:
                mine.head = None
            async with turn.commit:
                if (
                    clean
                    and (base is None or await asyncio.shield(base.committed))
                    and await asyncio.to_thread(self._commit, stream, tenant, plan)
                ):
                    mine.committed.set_result(True)
                    return [r for r in plan.results if r.index >= 0]
                # Not as planned: whoever planned on this head plans again; whoever comes
                # next waits for what this call does commit.
                mine.head = None
                return await self._commit_stream(
                    stream, registration, items, adopted=adopted, written=written
                )
        finally:
            if not mine.committed.done():
                mine.committed.set_result(False)
            if self._speculation.get(key) is mine:
                del self._speculation[key]

    async def _commit_stream(
        self,
        stream: str,
        registration: tuple[str, Verifier],
        items: list[Incoming],
        *,
        adopted: dict[str, Incoming] | None = None,
        written: dict[int, str] | None = None,
    ) -> list[Result]:
        """Load, plan, write and commit until the compare-and-set holds. The caller holds
        both of the stream's turns, or the commit turn after the plan turn."""
        tenant, verifier = registration
        # Records another writer stored under an id we wanted but has not committed (it
        # lost a race or crashed). The store's first writer owns an id, so they are planned
        # as if they had arrived with this batch; otherwise two replicas' leftovers can
        # block each other for ever.
        adopted = {} if adopted is None else adopted
        # Where an earlier attempt of this call stored each record: a plan made after a
        # lost race may judge a record differently (evidence, then placed), but it keeps
        # the one copy under the name it already has.
        written = {} if written is None else written
        for attempt in range(_COMMIT_ATTEMPTS):
            if attempt:
                # Another replica holds this head: give it time to commit.
                jitter = random.uniform(0.002, 0.01)  # noqa: S311 (not for secrets)
                await asyncio.sleep(jitter * 2 ** min(attempt, 6))
            planned = await self._plan_on(stream, tenant, verifier, items, adopted, written)
            assert planned is not None  # without a base a plan is always made
            plan = planned[0]
            if not await self._write_planned(tenant, plan, adopted, written):
                continue
            if await asyncio.to_thread(self._commit, stream, tenant, plan):
                return [r for r in plan.results if r.index >= 0]
            log.debug("stream %s: head moved under us (attempt %d)", stream, attempt)
        raise BusyError(f"stream {stream!r}: the chain head kept moving; retry later")

    async def _plan_on(
        self,
        stream: str,
        tenant: str,
        verifier: Verifier,
        items: list[Incoming],
        adopted: dict[str, Incoming],
        written: dict[int, str],
        base: _Speculation | None = None,
    ) -> tuple[Plan, bool] | None:
        """Plan against the database's head, or `base`'s planned one: the plan, and whether
        its head is all the state its commit leaves. None: the plan would need records the
        call that made `base` may not have stored yet (a repeat of its sequences, a
        checkpoint walked back through the store): plan without a base."""
        for item in items:
            item.stored_as = written.get(item.index)
        if base is not None and base.head is not None:
            head = replace(base.head)
            if any(item.sequence <= head.sequence for item in items):
                return None
            pending: list[PendingRecord] = []
            checkpoints: dict[int, Checkpoint] = {}
        else:
            base = None
            head, pending, checkpoints = await asyncio.to_thread(self._load, tenant, stream)
        loaded = (head.sequence, head.hash)
        stored = await self._stored_hashes(tenant, stream, head, items)
        batch = [*adopted.values(), *items]
        plan = self._plan(
            stream, tenant, verifier, replace(head), pending, checkpoints, stored, batch
        )
        if plan.needs_region:
            if base is not None:
                return None
            region = await self._region(tenant, stream, head)
            if region is not None:
                plan = self._plan(
                    stream,
                    tenant,
                    verifier,
                    head,
                    pending,
                    checkpoints,
                    stored,
                    batch,
                    region=region,
                )
        plan.loaded_sequence, plan.loaded_hash = loaded
        removed = set(plan.pending_remove)
        head_only = not plan.pending_add and all(p.id in removed for p in pending)
        return plan, head_only

    async def _write_planned(
        self, tenant: str, plan: Plan, adopted: dict[str, Incoming], written: dict[int, str]
    ) -> bool:
        """Store the plan's records and verdict changes. False: some ids were held by other
        records (now in `adopted`): plan again."""
        if plan.writes:
            try:
                stored_ids = await self.store.write(plan.writes)
            except FFAuditError:
                self.metrics.backpressure.set(1)
                raise
            self.metrics.backpressure.set(0)
            clean, foreign = await self._reconcile(tenant, plan.writes, stored_ids.existing, plan)
            for index, doc in plan.names.items():
                if index >= 0 and doc not in foreign:
                    written.setdefault(index, doc)
            if not clean:
                adopted.update(foreign)
                return False
        if plan.verdicts:
            await self.store.update_verdicts(tenant, [v.update() for v in plan.verdicts])
        return True

    def _plan(
        self,
        stream: str,
        tenant: str,
        verifier: Verifier,
        head: Head,
        pending: list[PendingRecord],
        checkpoints: dict[int, Checkpoint],
        stored: dict[str, tuple[str, Verdict]],
        batch: list[Incoming],
        *,
        region: list[StoredEvent] | None = None,
    ) -> Plan:
        return Planner(
            stream=stream,
            tenant=tenant,
            verifier=verifier,
            head=head,
            pending=pending,
            verified_checkpoints=checkpoints,
            stored=dict(stored),
            now=datetime.now(UTC),
            window=self.settings.reorder_window,
            gap_timeout=timedelta(seconds=self.settings.gap_timeout_s),
            region=region,
        ).run(batch)

    async def _region(self, tenant: str, stream: str, head: Head) -> list[StoredEvent] | None:
        """The stream's stored records after its last verified checkpoint, for arbitration
        between competing histories; None (no arbitration now) past the configured bound,
        which only a producer that stopped signing checkpoints reaches."""
        limit = self.settings.arbitration_max_records
        region: list[StoredEvent] = []
        async for event in self.store.scan(tenant, stream, start=head.signed_through + 1):
            region.append(event)
            if len(region) > limit:
                log.warning(
                    "stream %s: over %d records after its last verified checkpoint; "
                    "competing histories are left to verification",
                    stream,
                    limit,
                )
                return None
        return region

    async def _reconcile(
        self, tenant: str, writes: list[StoredEvent], existing: Sequence[str], plan: Plan
    ) -> tuple[bool, dict[str, Incoming]]:
        """Ids that were already stored: ours from an earlier try (fine: fix its verdict),
        or another record's, returned for adoption. (True, {}) means the plan stands."""
        foreign: dict[str, Incoming] = {}
        clean = True
        ours = {w.doc_id: w for w in writes}
        held = await self.store.get_many(tenant, existing, fresh=True)
        for doc in existing:
            stored = held.get(doc)
            mine = ours[doc]
            if stored is not None and stored.event_hash == mine.event_hash:
                if (stored.verdict, stored.failure) != (mine.verdict, mine.failure):
                    plan.verdicts.append(PlannedVerdict.of(mine))
                continue
            log.debug("stream %s: %s is held by another record; re-planning", mine.stream, doc)
            clean = False
            if stored is not None:
                checked = check_record(-1, stored.record)  # index -1: not in the reply
                if isinstance(checked, Incoming):
                    checked.stored_as = doc
                    foreign[doc] = checked
        return clean, foreign

    async def _stored_hashes(
        self, tenant: str, stream: str, head: Head, items: list[Incoming]
    ) -> dict[str, tuple[str, Verdict]]:
        """(hash, verdict) under every doc id a repeated sequence of this batch could use:
        one read for the batch, as a replay after a crash repeats thousands of records. An
        in-order batch reads nothing (the ingest hot path); the rare name its next sequence
        finds taken (by a record rejected after waiting) is met by the create-only write
        and settled by adoption."""
        wanted = [
            doc
            for item in items
            if item.sequence <= head.sequence
            for doc in {
                doc_id(stream, item.sequence),
                doc_id(stream, item.sequence, item.event_hash),
                doc_id(stream, item.sequence, item.evidence_id_hash),
            }
        ]
        found = await self.store.get_many(tenant, wanted, fresh=True) if wanted else {}
        return {doc: (event.event_hash, Verdict(event.verdict)) for doc, event in found.items()}

    # -- control database (run in a worker thread) -----------------------------------------

    def _load(
        self, tenant: str, stream: str
    ) -> tuple[Head, list[PendingRecord], dict[int, Checkpoint]]:
        with self._sessions() as session:
            row = StreamRepository(session).get_head(tenant, stream)
            if row is None:
                raise ConflictError(f"stream {stream!r} has no chain head")
            head = Head(
                row.sequence,
                row.hash,
                row.signed_through,
                row.last_checkpoint,
                row.closed,
                row.signed_hash,
                row.contested_from,
            )
            repo = IngestRepository(session)
            pending = repo.pending(tenant, stream)
            checkpoints = repo.checkpoints(tenant, stream, [p.sequence for p in pending])
            return head, pending, checkpoints

    def _commit(self, stream: str, tenant: str, plan: Plan) -> bool:
        # Key ids the stream's records were sealed under, noted once per replica: a query
        # by raw id must say which streams it could not cover.
        keys = {
            w.record[f.KEY_ID]
            for w in plan.writes
            if w.verdict != Verdict.REJECTED
            and isinstance(w.record.get(f.KEY_ID), str)
            and len(w.record[f.KEY_ID]) <= 64
        } - self._noted_keys.get((tenant, stream), set())
        try:
            with self._sessions.begin() as session:
                streams = StreamRepository(session)
                moved = streams.advance_head(
                    tenant,
                    stream,
                    expected_sequence=plan.loaded_sequence,
                    expected_hash=plan.loaded_hash,
                    sequence=plan.head.sequence,
                    hash_=plan.head.hash,
                    signed_through=plan.head.signed_through,
                    signed_hash=plan.head.signed_hash,
                    last_checkpoint=plan.head.last_checkpoint,
                    closed=plan.head.closed,
                    contested_from=plan.head.contested_from,
                )
                if not moved:
                    raise _LostRace
                if keys:
                    streams.note_keys(tenant, stream, keys)
                repo = IngestRepository(session)
                repo.remove_pending(plan.pending_remove)
                repo.add_pending(plan.pending_add)
                for checkpoint in plan.checkpoints:
                    repo.add_checkpoint(checkpoint)
                for alert in plan.alerts:
                    raise_planned_alert(
                        session, self.settings, tenant_id=tenant, stream_id=stream, planned=alert
                    )
                if self.settings.tlog_enabled and not append_accepted(
                    session, self.settings, tenant, stream, plan.accepted
                ):
                    raise _LostRace
        except _LostRace:
            return False
        except IntegrityError:
            # The pending table's unique key caught another replica recording the same
            # early record (or key id) between our read and this commit: a lost race like
            # any other.
            return False
        self._noted_keys.setdefault((tenant, stream), set()).update(keys)
        return True

    def purge_quarantine(self) -> int:
        """Drop quarantined input older than FFAUDIT_QUARANTINE_RETENTION_DAYS."""
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.quarantine_retention_days)
        with self._sessions.begin() as session:
            return IngestRepository(session).purge_quarantine(cutoff)

    def _streams_with_pending(self) -> list[tuple[str, str]]:
        with self._sessions() as session:
            return IngestRepository(session).streams_with_pending()

    # -- registrations and quarantine --------------------------------------------------------

    async def _registration(self, tenant: str, stream: str) -> tuple[str, Verifier] | None:
        cached = self._registrations.get((tenant, stream))
        if cached is not None:
            return cached
        found = await asyncio.to_thread(self._lookup, tenant, stream)
        if found is not None:
            self._registrations[tenant, stream] = found
        return found

    def _lookup(self, tenant: str, stream: str) -> tuple[str, Verifier] | None:
        with self._sessions() as session:
            if StreamRepository(session).get_stream(tenant, stream) is None:
                return None
        return tenant, self._streams.verifier(tenant, stream)

    async def _quarantine(
        self,
        items: list[tuple[int, object]],
        reason: str,
        source: str,
        peer: str | None,
        *,
        stream: str | None,
        tenant: str | None,
        report: IngestReport,
        rule: RuleId,
        producer: str | None = None,
    ) -> None:
        """Keep input that cannot be chained, encrypted, attributed to a tenant only when
        one is known for sure, within the sender's budget (TooManyRequestsError past it)."""
        payloads = [_payload(obj) for _, obj in items]
        who = f"producer:{producer}" if producer else f"host:{_host(peer)}"
        if who not in self._budgets and len(self._budgets) >= _MAX_BUDGETS:
            # Senders that have been quiet long enough to refill owe nothing: forget them,
            # so that many addresses cannot grow this map without bound.
            for sender in [k for k, b in self._budgets.items() if b.full()]:
                del self._budgets[sender]
        budget = self._budgets.setdefault(
            who,
            _Budget(
                self.settings.quarantine_max_records_per_min,
                self.settings.quarantine_max_bytes_per_min,
            ),
        )
        if not budget.take(len(payloads), sum(len(p) for p in payloads)):
            # Junk beyond the budget is refused, not kept: unacknowledged, the sender learns
            # of it, and nobody can fill the control database with it.
            self.metrics.rejected.labels("quarantine_budget").inc(len(items))
            raise TooManyRequestsError(
                f"{who}: over its budget for unverifiable input "
                f"({self.settings.quarantine_max_records_per_min} records, "
                f"{self.settings.quarantine_max_bytes_per_min} bytes a minute)"
            )
        if self._box is None:
            self._box = await asyncio.to_thread(SecretBox.load, self.settings.service_keys_dir)
        sealed = [self._box.seal_bytes(p) for p in payloads]
        await asyncio.to_thread(
            self._store_quarantine, sealed, reason, source, peer, stream, tenant, rule
        )
        report.quarantined += [(index, reason) for index, _ in items]
        self.metrics.rejected.labels(rule.value).inc(len(items))

    def _store_quarantine(
        self,
        payloads: list[bytes],
        reason: str,
        source: str,
        peer: str | None,
        stream: str | None,
        tenant: str | None,
        rule: RuleId,
    ) -> None:
        with self._sessions.begin() as session:
            repo = IngestRepository(session)
            for payload in payloads:
                repo.quarantine(
                    QuarantinedRecord(
                        source=source,
                        peer=peer,
                        claimed_stream=stream,
                        claimed_tenant=tenant,
                        reason=reason,
                        payload=payload,
                    )
                )
            raise_event_alert(
                session,
                self.settings,
                rule=rule,
                title=f"{len(payloads)} record(s) quarantined: {reason}",
                tenant_id=tenant,
                stream_id=stream,
                group=f"{stream or '-'}:{_host(peer)}",
                detail={"reason": reason, "source": source, "count": len(payloads)},
            )


class _Budget:
    """A token bucket of records and bytes a minute (one per sender, in this replica)."""

    def __init__(self, records: int, size: int) -> None:
        self.records, self.size = float(records), float(size)
        self.rate = (records / 60.0, size / 60.0)
        self.cap = (float(records), float(size))
        self.at = time.monotonic()

    def full(self) -> bool:
        elapsed = time.monotonic() - self.at
        return (
            self.records + elapsed * self.rate[0] >= self.cap[0]
            and self.size + elapsed * self.rate[1] >= self.cap[1]
        )

    def take(self, records: int, size: int) -> bool:
        now = time.monotonic()
        elapsed, self.at = now - self.at, now
        self.records = min(self.cap[0], self.records + elapsed * self.rate[0])
        self.size = min(self.cap[1], self.size + elapsed * self.rate[1])
        if records > self.records or size > self.size:
            return False
        self.records -= records
        self.size -= size
        return True


def _host(peer: str | None) -> str:
    """The peer's address without its source port (alerts dedupe by host, not connection)."""
    if not peer:
        return "-"
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


def _payload(obj: object) -> bytes:
    try:
        return canonicalize(obj)
    except CanonicalizationError:
        return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS)
