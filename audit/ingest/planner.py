"""Verification at ingest: classify a batch of one stream's records against its chain head.

Pure: no I/O. The service loads the head, the stream's pending (early) records and the
stored hashes of sequences the batch repeats, and afterwards writes what the plan says.
The rules are those of `ffaudit verify` (docs/record-spec.md §7) applied incrementally,
with one more: a record that fails verification never takes a place in the chain.

* next sequence, linking to the head: **ok**;
* not linking to the head, content not matching its event.hash, or a checkpoint whose
  signature fails: **rejected** — stored aside as evidence, alerted, and its sequence stays
  open for the genuine record (otherwise anyone who can write the stream could occupy a
  sequence with junk and make the producer's own record the "fork");
* a sequence already accepted with the same hash: **duplicate** (idempotent, not rewritten);
  with another hash: a **fork** — both kept and flagged, unless the sequence is already
  covered by a verified checkpoint, then the newcomer is **rejected** (`forged`);
* ahead of the head: **pending** until the gap fills; a gap still open after the reorder
  window or the gap timeout is flagged (`gap`) and the chain continues after it;
* checkpoints: the signature is checked against the stream's registered key on arrival.

Records carry no signature of their own, so a well-formed forgery (content hashed, linked
to the head) is indistinguishable from the genuine record until a signed checkpoint covers
one of the two. Everything after `signed_through` is therefore provisional. When histories
compete (`contested_from`), a verified checkpoint settles them: walking back from it by
hash finds the records it commits to; those are the chain (ok), every other record at
those sequences is rejected as `forged` and a `chain_attack` alert names them. The walk may
need stored records the batch does not carry: the planner then asks for them
(`Plan.needs_region`) and the service plans again with the stream's provisional region.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from audit.alerts.kinds import JsonValue, PlannedAlert, RuleId
from audit.errors import CanonicalizationError
from audit.ingest.schemas import Failures, IngestFailure, joined
from audit.integrity import record as f
from audit.integrity.chain import record_hash
from audit.integrity.keys import Verifier
from audit.integrity.record import document_id as doc_id
from audit.integrity.signatures import checkpoint_signature
from audit.models import Checkpoint, PendingRecord
from audit.store.protocol import StoredEvent, Verdict, VerdictUpdate

OK, DUPLICATE, PENDING, BROKEN, REJECTED = (
    Verdict.OK,
    Verdict.DUPLICATE,
    Verdict.PENDING,
    Verdict.BROKEN,
    Verdict.REJECTED,
)
MODIFIED, BROKEN_LINK, AFTER_CLOSE, FORK, FORGED, GAP, LATE = (
    IngestFailure.MODIFIED,
    IngestFailure.BROKEN_LINK,
    IngestFailure.AFTER_CLOSE,
    IngestFailure.FORK,
    IngestFailure.FORGED,
    IngestFailure.GAP,
    IngestFailure.LATE,
)


@dataclass(slots=True)
class Incoming:
    index: int  # position in the request or forward message
    record: dict[str, Any]
    sequence: int
    event_hash: str
    prev: str
    timestamp: datetime
    checkpoint: bool
    content_ok: bool  # the record hashes to its own event.hash (computed once, on arrival)
    content_hash: str = ""  # what it hashes to (event_hash when content_ok)
    # Where it already lies in the store (a record adopted from another replica's
    # unfinished write): planned again, but never stored a second time.
    stored_as: str | None = None

    @property
    def evidence_id_hash(self) -> str:
        """The hash naming it as evidence: its content's, so that an edited copy that keeps
        the genuine event.hash never takes the genuine record's name."""
        return self.event_hash if self.content_ok else (self.content_hash or self.event_hash)


@dataclass(slots=True)
class Result:
    index: int
    sequence: int
    outcome: Verdict
    failures: Failures = ()
    detail: str = ""

    @property
    def failure(self) -> str | None:
        """As stored and returned by the API: the kinds comma-joined."""
        return joined(self.failures)


@dataclass(frozen=True, slots=True)
class PlannedVerdict:
    """A new verdict for a record stored before (the write of a record this plan stores
    carries its verdict itself)."""

    doc_id: str
    timestamp: datetime  # the record's @timestamp: addresses its daily index
    verdict: Verdict
    failures: Failures = ()

    @classmethod
    def of(cls, event: StoredEvent) -> PlannedVerdict:
        """The verdict a planned write carries, for the record already stored under its id."""
        return cls(
            event.doc_id,
            event.timestamp,
            Verdict(event.verdict),
            IngestFailure.parse(event.failure),
        )

    def update(self) -> VerdictUpdate:
        return (self.doc_id, self.timestamp, self.verdict, joined(self.failures))


@dataclass(slots=True)
class Head:
    sequence: int
    hash: str
    signed_through: int
    last_checkpoint: int
    closed: bool
    signed_hash: str = f.ZERO_HASH  # the hash at signed_through
    contested_from: int | None = None


@dataclass(slots=True)
class _Early:
    """A record waiting ahead of the head: from the database or from this batch."""

    sequence: int
    event_hash: str
    prev: str
    doc_id: str
    timestamp: datetime
    received_at: datetime
    row_id: int | None = None
    incoming: Incoming | None = None


@dataclass(slots=True)
class Plan:
    head: Head
    loaded_sequence: int = 0  # the head as read, for the compare-and-set
    loaded_hash: str = ""
    writes: list[StoredEvent] = field(default_factory=list)
    verdicts: list[PlannedVerdict] = field(default_factory=list)
    pending_add: list[PendingRecord] = field(default_factory=list)
    pending_remove: list[int] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    alerts: list[PlannedAlert] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    # Plan again with the stream's stored records after signed_through: a verified
    # checkpoint must be walked back through records this batch does not carry.
    needs_region: bool = False
    names: dict[int, str] = field(default_factory=dict)  # Incoming.index -> its doc id
    # (sequence, event.hash) of the records this plan placed in the chain as `ok`, in
    # chain order: the stream's transparency log appends them (audit.tlog).
    accepted: list[tuple[int, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Node:
    """A record taking part in arbitration: from this batch, the pending rows or the store."""

    sequence: int
    hash: str
    prev: str
    doc_id: str
    timestamp: datetime
    verdict: Verdict
    incoming: Incoming | None = None
    early: _Early | None = None


class Planner:
    def __init__(
        self,
        *,
        stream: str,
        tenant: str,
        verifier: Verifier,
        head: Head,
        pending: list[PendingRecord],
        verified_checkpoints: dict[int, Checkpoint],
        stored: dict[str, tuple[str, Verdict]],
        now: datetime,
        window: int,
        gap_timeout: timedelta,
        region: list[StoredEvent] | None = None,
    ) -> None:
        self.stream, self.tenant, self.verifier = stream, tenant, verifier
        self.now, self.window, self.gap_timeout = now, window, gap_timeout
        # doc_id -> (event_hash, verdict), for the doc ids this batch may repeat or take
        self.stored = stored
        self.checkpoints = verified_checkpoints  # sequence -> checkpoint row (pending ones)
        self.region = region  # stored records after signed_through, when asked for
        self.loaded_sequence = head.sequence
        # The proven prefix as loaded: arbitration walks back to it even when this batch
        # moves signed_through (the batch may carry the very checkpoint that settles).
        self.proven = (head.signed_through, head.signed_hash)
        self.plan = Plan(head=head)
        self._signatures: dict[int, IngestFailure | None] = {}  # by Incoming.index
        self._doc_of = self.plan.names  # Incoming.index -> the doc id it was written under
        self._arrived: list[Incoming] = []  # this batch, content and signature sound
        self.early: dict[int, list[_Early]] = {}
        for row in pending:
            self.early.setdefault(row.sequence, []).append(
                _Early(
                    row.sequence,
                    row.event_hash,
                    row.prev,
                    row.doc_id,
                    row.timestamp,
                    row.received_at,
                    row_id=row.id,
                )
            )

    # -- entry point ----------------------------------------------------------------------

    def run(self, batch: list[Incoming]) -> Plan:
        # A replica may have recorded the head's successor as early just after another
        # one moved the head: settle such records before anything new.
        self._drain()
        for item in sorted(batch, key=lambda i: (i.sequence, i.index)):
            self._one(item)
        self._arbitrate()
        self._flag_stale_gaps()
        return self.plan

    # -- classification -------------------------------------------------------------------

    def _one(self, item: Incoming) -> None:
        head = self.plan.head
        if self._is_duplicate(item):
            self.plan.results.append(Result(item.index, item.sequence, DUPLICATE))
            return
        if not item.content_ok:
            self._alert(item, MODIFIED, "record content does not match its hash")
        if item.checkpoint:
            self._check_signature(item)
        unsound = [] if item.content_ok else [MODIFIED]
        sig = self._signature_failure(item) if item.checkpoint else None
        if sig:
            unsound.append(sig)
        if unsound:
            # Not placed on its own word: evidence. A checkpoint whose content is sound
            # but whose signature fails can still be proven by a later verified one.
            self._reject(item, tuple(unsound))
            if item.content_ok:
                self._arrived.append(item)
            return
        self._arrived.append(item)
        if item.sequence <= head.sequence:
            self._repeat(item)
        elif item.sequence == head.sequence + 1 and item.sequence not in self.early:
            self._accept_new(item)
            self._drain()
        elif item.sequence == head.sequence + 1:
            self._hold(item)  # rivals wait at this sequence: the one that links wins
            self._drain()
        else:
            self._hold(item)

    def _accept_new(self, item: Incoming) -> None:
        head = self.plan.head
        if item.prev != head.hash:
            self._link_alert(item.sequence, item.event_hash)
            self._reject(item, (BROKEN_LINK,))
            return
        failures: Failures = ()
        if head.closed:
            failures = (AFTER_CLOSE,)
            self._alert(item, AFTER_CLOSE, "record after the stream's closing checkpoint")
        outcome = BROKEN if failures else OK
        self._write(item, self._free_doc(item.sequence, item.event_hash), outcome, failures)
        self.plan.results.append(Result(item.index, item.sequence, outcome, failures))
        if outcome == OK:
            self.plan.accepted.append((item.sequence, item.event_hash))
        self._advance(item.sequence, item.event_hash, checkpoint=item if item.checkpoint else None)

    def _reject(self, item: Incoming, failures: Failures) -> None:
        """Keep `item` as evidence outside the chain; its sequence stays open. Evidence is
        always filed under its own hash-suffixed id: never the sequence's plain name, and
        the same id on every retry, whatever this replica knows about the stream."""
        self._write(
            item, doc_id(self.stream, item.sequence, item.evidence_id_hash), REJECTED, failures
        )
        self.plan.results.append(Result(item.index, item.sequence, REJECTED, failures))
        self._contest(item.sequence)

    def _free_doc(self, sequence: int, event_hash: str) -> str:
        """`stream:seq` unless another record (placed, rival or evidence) holds that name."""
        first = doc_id(self.stream, sequence)
        return first if first not in self.stored else doc_id(self.stream, sequence, event_hash)

    def _contest(self, sequence: int) -> None:
        head = self.plan.head
        if sequence > head.signed_through and (
            head.contested_from is None or sequence < head.contested_from
        ):
            head.contested_from = sequence

    def _link_alert(self, sequence: int, event_hash: str) -> None:
        self._integrity_alert(
            BROKEN_LINK,
            "record does not link to the accepted head: kept aside, not placed",
            sequence,
            event_hash,
        )

    def _advance(self, sequence: int, event_hash: str, *, checkpoint: Incoming | None) -> None:
        head = self.plan.head
        head.sequence, head.hash = sequence, event_hash
        cp = self.checkpoints.get(sequence)
        if checkpoint is not None or cp is not None:
            head.last_checkpoint = sequence
            closing = (
                checkpoint.record.get(f.CP_CLOSING) is True
                if checkpoint is not None
                else bool(cp and cp.closing)
            )
            verified = (
                checkpoint is not None and self._signature_failure(checkpoint) is None
            ) or bool(cp and cp.verified)
            if verified:
                head.signed_through, head.signed_hash = sequence, event_hash
            head.closed = head.closed or closing

    def _is_duplicate(self, item: Incoming) -> bool:
        if item.sequence > self.plan.head.sequence:
            waiting = self.early.get(item.sequence, ())
            return any(e.event_hash == item.event_hash for e in waiting)
        if not item.content_ok:
            # A copy of an edited record: the same edit, filed as evidence already.
            return doc_id(self.stream, item.sequence, item.evidence_id_hash) in self.stored
        first = doc_id(self.stream, item.sequence)
        rival = doc_id(self.stream, item.sequence, item.event_hash)
        held = self.stored.get(first)
        return (held is not None and held[0] == item.event_hash) or rival in self.stored

    def _repeat(self, item: Incoming) -> None:
        first = doc_id(self.stream, item.sequence)
        rival = doc_id(self.stream, item.sequence, item.event_hash)
        held = self.stored.get(first)
        if held is None:
            # Its place was given up when a gap was flagged: keep it, flagged as late.
            self._write(item, first, BROKEN, (LATE,))
            self.plan.results.append(Result(item.index, item.sequence, BROKEN, (LATE,)))
            return
        if item.sequence <= self.plan.head.signed_through:
            # A verified checkpoint already proves the record at this sequence.
            self._write(item, rival, REJECTED, (FORGED,))
            self.plan.results.append(Result(item.index, item.sequence, REJECTED, (FORGED,)))
            self._attack_alert([item.sequence], self.plan.head.signed_through)
            return
        self._fork(item, first, rival, first_is_evidence=held[1] == REJECTED)

    def _fork(self, item: Incoming, first: str, rival: str, *, first_is_evidence: bool) -> None:
        self._write(item, rival, BROKEN, (FORK,))
        self._contest(item.sequence)
        if not first_is_evidence:
            self._set_verdict(first, item.timestamp, BROKEN, (FORK,))
        self.plan.results.append(
            Result(item.index, item.sequence, BROKEN, (FORK,), "another record holds this sequence")
        )
        self._alert(item, FORK, "two records claim one sequence (fork)")

    def _hold(self, item: Incoming) -> None:
        waiting = self.early.setdefault(item.sequence, [])
        doc = item.stored_as or (
            doc_id(self.stream, item.sequence, item.event_hash)
            if waiting
            else self._free_doc(item.sequence, item.event_hash)
        )
        waiting.append(
            _Early(
                item.sequence,
                item.event_hash,
                item.prev,
                doc,
                item.timestamp,
                self.now,
                incoming=item,
            )
        )
        self._write(item, doc, PENDING, ())
        self.plan.pending_add.append(
            PendingRecord(
                tenant_id=self.tenant,
                stream_id=self.stream,
                sequence=item.sequence,
                event_hash=item.event_hash,
                prev=item.prev,
                doc_id=doc,
                timestamp=item.timestamp,
                received_at=self.now,
            )
        )
        self.plan.results.append(Result(item.index, item.sequence, PENDING))

    def _drain(self, *, linked: bool = True) -> None:
        head = self.plan.head
        while head.sequence + 1 in self.early:
            waiting = self.early.pop(head.sequence + 1)
            for entry in waiting:
                # Its doc id is taken now: a later rival for this sequence is a fork.
                self.stored[entry.doc_id] = (entry.event_hash, PENDING)
                if entry.row_id is not None:
                    self.plan.pending_remove.append(entry.row_id)
                else:
                    self._unplan_pending(entry)
            fits = [e for e in waiting if e.prev == head.hash] if linked else waiting
            if not fits:
                # Nothing waiting here links to the head: evidence, and the sequence stays
                # open for the genuine record (a later checkpoint may prove these instead).
                for entry in waiting:
                    self._settle(entry, REJECTED, (BROKEN_LINK,))
                    self._link_alert(entry.sequence, entry.event_hash)
                self._contest(head.sequence + 1)
                break
            chosen = fits[0]
            failures: list[IngestFailure] = [] if linked else [GAP]
            for entry in waiting:
                if entry is chosen:
                    continue
                if entry in fits:
                    self._settle(entry, BROKEN, (FORK,))  # two records link: undecided
                    failures.append(FORK)
                    self._contest(entry.sequence)
                else:
                    self._settle(entry, REJECTED, (BROKEN_LINK,))
                    self._link_alert(entry.sequence, entry.event_hash)
                    self._contest(entry.sequence)
            if head.closed:
                failures.append(AFTER_CLOSE)
            found = tuple(dict.fromkeys(failures))
            self._settle(chosen, BROKEN if found else OK, found)
            if not found:
                self.plan.accepted.append((chosen.sequence, chosen.event_hash))
            self._advance(
                chosen.sequence,
                chosen.event_hash,
                checkpoint=chosen.incoming
                if chosen.incoming and chosen.incoming.checkpoint
                else None,
            )
            linked = True

    def _settle(self, entry: _Early, outcome: Verdict, failures: Failures) -> None:
        """A waiting record gets its final verdict."""
        self.stored[entry.doc_id] = (entry.event_hash, outcome)
        self._set_verdict(entry.doc_id, entry.timestamp, outcome, failures)
        if entry.incoming is not None:
            for r in self.plan.results:
                if r.index == entry.incoming.index:
                    r.outcome, r.failures = outcome, failures

    def _set_verdict(
        self, doc: str, timestamp: datetime, outcome: Verdict, failures: Failures
    ) -> None:
        """The record stored (or written by this plan) as `doc` gets a new verdict, which
        replaces every earlier decision of this plan about it. A record this plan writes is
        written with it directly; otherwise one update is queued, and any update queued
        before for the same record is dropped: updates are applied after the writes, so a
        stale one (a `fork` flag queued before the settlement) would overrule the final
        verdict."""
        self.plan.verdicts = [v for v in self.plan.verdicts if v.doc_id != doc]
        written = False
        for i, ev in enumerate(self.plan.writes):
            if ev.doc_id == doc:
                self.plan.writes[i] = _with_verdict(ev, outcome, failures)
                written = True
        if not written:
            self.plan.verdicts.append(PlannedVerdict(doc, timestamp, outcome, failures))

    def _unplan_pending(self, entry: _Early) -> None:
        self.plan.pending_add = [p for p in self.plan.pending_add if p.doc_id != entry.doc_id]

    # -- arbitration between competing histories ---------------------------------------------

    def _arbitrate(self) -> None:
        head = self.plan.head
        if head.contested_from is None:
            return
        nodes = self._nodes()
        proofs = sorted(
            (
                n
                for n in nodes
                if n.sequence >= head.contested_from
                and n.sequence > self.proven[0]
                and self._proves(n)
            ),
            key=lambda n: n.sequence,
            reverse=True,
        )
        for checkpoint in proofs:
            if self._settle_by(checkpoint, nodes) or self.plan.needs_region:
                return
        if head.contested_from is not None and head.contested_from <= head.signed_through:
            head.contested_from = None  # below a verified checkpoint nothing is provisional

    def _nodes(self) -> list[_Node]:
        """Every record that may take part: stored after signed_through (when loaded), this
        batch's sound records, the pending ones. One node per doc id, the freshest view."""
        by_doc: dict[str, _Node] = {}
        for ev in self.region or ():
            if ev.sequence > self.proven[0] and _sound(ev):
                prev = ev.record.get(f.PREV)
                if isinstance(prev, str):
                    by_doc[ev.doc_id] = _Node(
                        ev.sequence,
                        ev.event_hash,
                        prev,
                        ev.doc_id,
                        ev.timestamp,
                        Verdict(ev.verdict),
                    )
        for item in self._arrived:
            doc = self._doc_of.get(item.index)
            if doc is not None:
                by_doc[doc] = _Node(
                    item.sequence,
                    item.event_hash,
                    item.prev,
                    doc,
                    item.timestamp,
                    self.stored.get(doc, ("", PENDING))[1],
                    incoming=item,
                )
        for waiting in self.early.values():
            for e in waiting:
                by_doc[e.doc_id] = _Node(
                    e.sequence, e.event_hash, e.prev, e.doc_id, e.timestamp, PENDING, e.incoming, e
                )
        return list(by_doc.values())

    def _proves(self, node: _Node) -> bool:
        """A checkpoint whose signature verifies under the stream's key."""
        if node.incoming is not None:
            return node.incoming.checkpoint and self._signature_failure(node.incoming) is None
        if node.early is not None:
            row = self.checkpoints.get(node.sequence)
            return row is not None and row.verified and row.event_hash == node.hash
        ev = next((e for e in self.region or () if e.doc_id == node.doc_id), None)
        return (
            ev is not None
            and ev.record.get(f.EVENT_ACTION) == "audit.checkpoint"
            and self._signature_check(ev.record, ev.event_hash) is None
        )

    def _placed_failure(self, node: _Node) -> IngestFailure | None:
        """A proven record's own flaw: a checkpoint whose signature was damaged (the later
        checkpoint proves its content, not its signature)."""
        if node.incoming is not None:
            if node.incoming.checkpoint:
                return self._signature_failure(node.incoming)
            return None
        ev = next((e for e in self.region or () if e.doc_id == node.doc_id), None)
        if ev is not None and ev.record.get(f.EVENT_ACTION) == "audit.checkpoint":
            return self._signature_check(ev.record, ev.event_hash)
        return None

    def _closing(self, node: _Node) -> bool:
        if node.incoming is not None:
            return node.incoming.record.get(f.CP_CLOSING) is True
        row = self.checkpoints.get(node.sequence)
        if row is not None and row.event_hash == node.hash:
            return row.closing
        ev = next((e for e in self.region or () if e.doc_id == node.doc_id), None)
        return ev is not None and ev.record.get(f.CP_CLOSING) is True

    def _settle_by(self, checkpoint: _Node, nodes: list[_Node]) -> bool:
        """Walk back from a verified checkpoint; where other records compete with what it
        commits to, they are forged. True when that changed anything."""
        head = self.plan.head
        signed_through, signed_hash = self.proven
        by_hash = {n.hash: n for n in nodes}
        branch = {checkpoint.sequence: checkpoint}
        lowest = checkpoint
        while lowest.sequence - 1 > signed_through:
            parent = by_hash.get(lowest.prev)
            if parent is None or parent.sequence != lowest.sequence - 1:
                break
            branch[parent.sequence] = parent
            lowest = parent
        complete = lowest.sequence == signed_through + 1
        if complete and lowest.prev != signed_hash:
            return False  # contradicts the signed prefix: only a leaked key does that
        first = lowest.sequence if complete else lowest.sequence - 1
        if self.region is None and first <= self.loaded_sequence + 1:
            # The store may hold records competing at these sequences.
            self.plan.needs_region = True
            return False
        forged: dict[str, _Node] = {}
        for n in sorted(nodes, key=lambda n: n.sequence):
            proven = branch.get(n.sequence)
            if first <= n.sequence <= checkpoint.sequence and (
                proven is None or proven.hash != n.hash
            ):
                forged[n.hash] = n
            elif n.sequence > checkpoint.sequence and n.prev in forged:
                forged[n.hash] = n  # built on a forged record
        # A record the checkpoint commits to but which was kept aside (a checkpoint whose
        # own signature failed), in this call or an earlier one: it must be placed.
        unplaced = any(self._verdict(n) == REJECTED for n in branch.values())
        if not forged and not (complete and unplaced):
            return False  # nothing competes: records still missing are awaited as usual
        for n in forged.values():
            self._restate(n, REJECTED, (FORGED,))
        placed: list[tuple[int, str]] = []
        for n in branch.values():
            failure = GAP if not complete and n is lowest else self._placed_failure(n)
            newly = n.early is not None or n.incoming is not None or n.verdict != OK
            if failure is None and newly and (n.sequence, n.hash) not in self.plan.accepted:
                placed.append((n.sequence, n.hash))
            self._restate(n, BROKEN if failure else OK, (failure,) if failure else ())
        # Newly placed by the proof: transparency-log leaves too. The log is append-only,
        # so a forgery accepted earlier stays a leaf beside them: two leaves at one
        # sequence, which is how a monitor of the log sees the attack (spec §13).
        self.plan.accepted.extend(sorted(placed))
        if not complete and forged:
            self._gap_alert(
                first, first, f"record {first} of stream {self.stream}: only forgeries arrived"
            )
        if forged:
            self._attack_alert(sorted({n.sequence for n in forged.values()}), checkpoint.sequence)
        if head.hash in forged or head.sequence < checkpoint.sequence:
            head.sequence, head.hash = checkpoint.sequence, checkpoint.hash
            head.last_checkpoint = checkpoint.sequence
            head.closed = self._closing(checkpoint)
        if checkpoint.sequence > head.signed_through:
            head.signed_through, head.signed_hash = checkpoint.sequence, checkpoint.hash
        head.contested_from = None
        self._resume(nodes, forged, checkpoint.sequence)
        return True

    def _resume(self, nodes: list[_Node], forged: dict[str, _Node], through: int) -> None:
        """After the head moved to a proven checkpoint: records at or below it that are
        still waiting are settled; rejected records above it that may link on wait again,
        except a checkpoint whose own signature fails: it stays evidence until a later
        verified checkpoint commits to it, and its sequence stays contested for that one."""
        head = self.plan.head
        for sequence in [s for s in self.early if s <= head.sequence]:
            for entry in self.early.pop(sequence):
                self._release(entry)
                self._settle(entry, BROKEN, (LATE,))
        for n in nodes:
            if (
                n.sequence > through
                and n.hash not in forged
                and n.early is None
                and self.stored.get(n.doc_id, ("", ""))[1] == REJECTED
                and n.sequence > head.sequence
            ):
                if self._placed_failure(n) is not None:
                    self._contest(n.sequence)
                    continue
                entry = _Early(
                    n.sequence, n.hash, n.prev, n.doc_id, n.timestamp, self.now, incoming=n.incoming
                )
                self.early.setdefault(n.sequence, []).append(entry)
        self._drain()

    def _restate(self, node: _Node, verdict: Verdict, failures: Failures) -> None:
        if node.early is not None:
            waiting = self.early.get(node.sequence, [])
            if node.early in waiting:
                waiting.remove(node.early)
                if not waiting:
                    del self.early[node.sequence]
            self._release(node.early)
            self._settle(node.early, verdict, failures)
        elif node.incoming is not None:
            entry = _Early(
                node.sequence,
                node.hash,
                node.prev,
                node.doc_id,
                node.timestamp,
                self.now,
                incoming=node.incoming,
            )
            self._settle(entry, verdict, failures)
        elif (
            node.verdict != verdict
            or failures
            or any(v.doc_id == node.doc_id for v in self.plan.verdicts)  # decided otherwise before
        ):
            self._set_verdict(node.doc_id, node.timestamp, verdict, failures)
        self.stored[node.doc_id] = (node.hash, verdict)

    def _verdict(self, node: _Node) -> Verdict:
        """A node's verdict as this plan knows it: what the plan decided, else what the
        store held when it was loaded (`stored` knows only the doc ids of this call's
        records; a record of an earlier call is known from the region it came from)."""
        return self.stored.get(node.doc_id, (node.hash, node.verdict))[1]

    def _release(self, entry: _Early) -> None:
        if entry.row_id is not None:
            if entry.row_id not in self.plan.pending_remove:
                self.plan.pending_remove.append(entry.row_id)
        else:
            self._unplan_pending(entry)

    def _attack_alert(self, sequences: list[int], checkpoint: int) -> None:
        span = f"{sequences[0]}" if len(sequences) == 1 else f"{sequences[0]}..{sequences[-1]}"
        self.plan.alerts.append(
            PlannedAlert(
                RuleId.CHAIN_ATTACK,
                f"forged records in stream {self.stream} (sequences {span}): the "
                f"checkpoint at {checkpoint} proves other records; kept aside as evidence",
                group=self.stream,
                detail={
                    "kind": FORGED.value,
                    "sequences": sequences[:100],
                    "count": len(sequences),
                    "checkpoint": checkpoint,
                },
            )
        )

    def _flag_stale_gaps(self) -> None:
        while self.early:
            lowest = min(self.early)
            waiting = self.early[lowest]
            oldest = min(e.received_at for e in waiting)
            count = sum(len(v) for v in self.early.values())
            if count <= self.window and self.now - oldest < self.gap_timeout:
                return
            head = self.plan.head
            first, last = head.sequence + 1, lowest - 1
            self._gap_alert(
                first, last, f"records {first}..{last} of stream {self.stream} never arrived"
            )
            head.hash = waiting[0].prev  # continue after the gap; the link cannot be checked
            head.sequence = lowest - 1
            self._drain(linked=False)

    # -- signatures -----------------------------------------------------------------------

    def _signature_failure(self, item: Incoming) -> IngestFailure | None:
        if item.index in self._signatures:
            return self._signatures[item.index]
        failure = self._signature_check(item.record, item.event_hash)
        if item.index >= 0:  # adopted records share index -1: not cached
            self._signatures[item.index] = failure
        return failure

    def _signature_check(self, record: dict[str, Any], event_hash: str) -> IngestFailure | None:
        problem = checkpoint_signature(
            record.get(f.SIGNATURE), record.get(f.CP_SIGNER), event_hash, self.verifier
        )
        return None if problem is None else IngestFailure.of_signature(problem.kind)

    def _check_signature(self, item: Incoming) -> None:
        failure = self._signature_failure(item)
        if failure is not None:
            # Only verified checkpoints are recorded: a forged one at the sequence of a
            # genuine one must not replace its row (one per stream and sequence).
            self._alert(item, failure, f"checkpoint signature: {failure}")
            return
        self.plan.checkpoints.append(
            Checkpoint(
                tenant_id=self.tenant,
                stream_id=self.stream,
                sequence=item.sequence,
                event_hash=item.event_hash,
                signature=item.record.get(f.SIGNATURE)
                if isinstance(item.record.get(f.SIGNATURE), str)
                else None,
                signer=str(item.record.get(f.CP_SIGNER))[:64]
                if item.record.get(f.CP_SIGNER)
                else None,
                closing=item.record.get(f.CP_CLOSING) is True,
                verified=True,
                received_at=self.now,
            )
        )

    # -- outputs --------------------------------------------------------------------------

    def _write(self, item: Incoming, doc: str, outcome: Verdict, failures: Failures) -> None:
        if item.stored_as is not None:
            doc = item.stored_as
        self.stored[doc] = (item.event_hash, outcome)  # the id is taken: a rival needs its own
        self._doc_of[item.index] = doc
        self.plan.writes.append(
            StoredEvent(
                doc_id=doc,
                tenant=self.tenant,
                stream=self.stream,
                sequence=item.sequence,
                event_hash=item.event_hash,
                timestamp=item.timestamp,
                record=item.record,
                verdict=outcome,
                failure=joined(failures),
                received_at=self.now,
            )
        )

    def _alert(self, item: Incoming, kind: IngestFailure, title: str) -> None:
        self._integrity_alert(kind, title, item.sequence, item.event_hash)

    def _integrity_alert(
        self, kind: IngestFailure, title: str, sequence: int, event_hash: str
    ) -> None:
        """One incident per stream and kind; a fork is a rule of its own, one per stream."""
        detail: dict[str, JsonValue] = {
            "kind": kind.value,
            "sequence": sequence,
            "event_hash": event_hash,
        }
        if kind is FORK:
            alert = PlannedAlert(RuleId.FORK, title, group=self.stream, detail=detail)
        else:
            alert = PlannedAlert(
                RuleId.INTEGRITY_FAILURE, title, group=f"{self.stream}:{kind}", detail=detail
            )
        self.plan.alerts.append(alert)

    def _gap_alert(self, first: int, last: int, title: str) -> None:
        self.plan.alerts.append(
            PlannedAlert(
                RuleId.SEQUENCE_GAP,
                title,
                group=self.stream,
                detail={"first_missing": first, "last_missing": last},
            )
        )


def _with_verdict(event: StoredEvent, outcome: Verdict, failures: Failures) -> StoredEvent:
    return replace(event, verdict=outcome, failure=joined(failures))


def _sound(event: StoredEvent) -> bool:
    """A stored record whose content still hashes to its event.hash."""
    try:
        return record_hash(event.record) == event.event_hash
    except CanonicalizationError:
        return False
