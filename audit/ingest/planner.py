"""Verification at ingest: classify a batch of one stream's records against its chain head.

Pure: no I/O. The service loads the head, the stream's pending (early) records and the
stored hashes of sequences the batch repeats, and afterwards writes what the plan says.
The rules are those of `ffaudit verify` (docs/record-spec.md §7) applied incrementally:

* next sequence, linking to the head: **ok**; not linking: **broken** (`broken_link`);
* content not matching its event.hash: **broken** (`modified`) — still stored and placed;
* a sequence already accepted with the same hash: **duplicate** (idempotent, not rewritten);
  with another hash: a **fork** — both records kept and flagged;
* ahead of the head: **pending** until the gap fills; a gap still open after the reorder
  window or the gap timeout is flagged (`gap`) and the chain continues after it;
* checkpoints: the signature is checked against the stream's registered key on arrival.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from audit.integrity import record as f
from audit.integrity.chain import checkpoint_message
from audit.integrity.keys import Verifier
from audit.models import Checkpoint, PendingRecord
from audit.store.protocol import StoredEvent

OK, DUPLICATE, PENDING, BROKEN = "ok", "duplicate", "pending", "broken"


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


@dataclass(slots=True)
class Result:
    index: int
    sequence: int
    outcome: str  # ok | duplicate | pending | broken
    failure: str | None = None
    detail: str = ""


@dataclass(slots=True)
class Head:
    sequence: int
    hash: str
    signed_through: int
    last_checkpoint: int
    closed: bool


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
    verdicts: list[tuple[str, datetime, str, str | None]] = field(default_factory=list)
    pending_add: list[PendingRecord] = field(default_factory=list)
    pending_remove: list[int] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)


def doc_id(stream: str, sequence: int, event_hash: str | None = None) -> str:
    """The first record at a sequence owns `stream:seq`; any rival gets a hash suffix."""
    base = f"{stream}:{sequence}"
    return base if event_hash is None else f"{base}:{event_hash[:16]}"


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
        stored: dict[str, str],
        now: datetime,
        window: int,
        gap_timeout: timedelta,
    ) -> None:
        self.stream, self.tenant, self.verifier = stream, tenant, verifier
        self.now, self.window, self.gap_timeout = now, window, gap_timeout
        self.stored = stored  # doc_id -> event_hash, for the doc ids this batch may repeat
        self.checkpoints = verified_checkpoints  # sequence -> checkpoint row (pending ones)
        self.plan = Plan(head=head)
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
        self._flag_stale_gaps()
        return self.plan

    # -- classification -------------------------------------------------------------------

    def _one(self, item: Incoming) -> None:
        head = self.plan.head
        if self._is_duplicate(item):
            self.plan.results.append(Result(item.index, item.sequence, DUPLICATE))
            return
        if not item.content_ok:
            self._alert(
                "integrity_failure",
                "critical",
                "record content does not match its hash",
                item,
                kind="modified",
            )
        if item.checkpoint:
            self._check_signature(item)
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

    def _failures(self, item: Incoming, *, linked: bool) -> list[str]:
        failures = []
        if not item.content_ok:
            failures.append("modified")
        if linked and item.prev != self.plan.head.hash:
            failures.append("broken_link")
        if self.plan.head.closed:
            failures.append("after_close")
        sig = self._signature_failure(item) if item.checkpoint else None
        if sig:
            failures.append(sig)
        return failures

    def _accept_new(self, item: Incoming, *, linked: bool = True) -> None:
        failures = self._failures(item, linked=linked)
        if "broken_link" in failures:
            self._alert(
                "integrity_failure",
                "critical",
                "record does not link to the accepted head",
                item,
                kind="broken_link",
            )
        if "after_close" in failures:
            self._alert(
                "integrity_failure",
                "critical",
                "record after the stream's closing checkpoint",
                item,
                kind="after_close",
            )
        outcome, failure = (BROKEN, ",".join(failures)) if failures else (OK, None)
        self._write(item, doc_id(self.stream, item.sequence), outcome, failure)
        self.plan.results.append(Result(item.index, item.sequence, outcome, failure))
        self._advance(item.sequence, item.event_hash, checkpoint=item if item.checkpoint else None)

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
                head.signed_through = sequence
            head.closed = head.closed or closing

    def _is_duplicate(self, item: Incoming) -> bool:
        if item.sequence > self.plan.head.sequence:
            waiting = self.early.get(item.sequence, ())
            return any(e.event_hash == item.event_hash for e in waiting)
        first = doc_id(self.stream, item.sequence)
        rival = doc_id(self.stream, item.sequence, item.event_hash)
        return self.stored.get(first) == item.event_hash or rival in self.stored

    def _repeat(self, item: Incoming) -> None:
        first = doc_id(self.stream, item.sequence)
        rival = doc_id(self.stream, item.sequence, item.event_hash)
        if first not in self.stored:
            # Its place was given up when a gap was flagged: keep it, flagged as late.
            self._write(item, first, BROKEN, "late")
            self.plan.results.append(Result(item.index, item.sequence, BROKEN, "late"))
            self.stored[first] = item.event_hash
            return
        self._fork(item, first, rival)

    def _fork(self, item: Incoming, first: str, rival: str) -> None:
        self._write(item, rival, BROKEN, "fork")
        self.stored[rival] = item.event_hash
        self.plan.verdicts.append((first, item.timestamp, BROKEN, "fork"))
        self.plan.results.append(
            Result(item.index, item.sequence, BROKEN, "fork", "another record holds this sequence")
        )
        self._alert(
            "integrity_failure",
            "critical",
            "two records claim one sequence (fork)",
            item,
            kind="fork",
        )

    def _hold(self, item: Incoming) -> None:
        waiting = self.early.setdefault(item.sequence, [])
        doc = doc_id(self.stream, item.sequence, item.event_hash if waiting else None)
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
        self._write(item, doc, PENDING, None)
        self.plan.pending_add.append(
            PendingRecord(
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
            chosen = next((e for e in waiting if e.prev == head.hash), waiting[0])
            for entry in waiting:
                # Its doc id is taken now: a later rival for this sequence is a fork.
                self.stored[entry.doc_id] = entry.event_hash
                if entry.row_id is not None:
                    self.plan.pending_remove.append(entry.row_id)
                else:
                    self._unplan_pending(entry)
                if entry is not chosen:
                    self._settle(entry, BROKEN, "fork")
            failures = []
            if linked and chosen.prev != head.hash:
                failures.append("broken_link")
            if not linked:
                failures.append("gap")
            if len(waiting) > 1:
                failures.append("fork")
            if head.closed:
                failures.append("after_close")
            if chosen.incoming is not None and chosen.incoming.checkpoint:
                sig = self._signature_failure(chosen.incoming)
                if sig:
                    failures.append(sig)
            if chosen.incoming is not None and not chosen.incoming.content_ok:
                failures.append("modified")
            outcome = BROKEN if failures else OK
            self._settle(chosen, outcome, ",".join(failures) or None)
            self._advance(
                chosen.sequence,
                chosen.event_hash,
                checkpoint=chosen.incoming
                if chosen.incoming and chosen.incoming.checkpoint
                else None,
            )
            linked = True

    def _settle(self, entry: _Early, outcome: str, failure: str | None) -> None:
        """A waiting record gets its final verdict."""
        if entry.incoming is not None:
            # Written in this batch: write it with the final verdict directly.
            for i, ev in enumerate(self.plan.writes):
                if ev.doc_id == entry.doc_id:
                    self.plan.writes[i] = _with_verdict(ev, outcome, failure)
            for r in self.plan.results:
                if r.index == entry.incoming.index:
                    r.outcome, r.failure = outcome, failure
        else:
            self.plan.verdicts.append((entry.doc_id, entry.timestamp, outcome, failure))

    def _unplan_pending(self, entry: _Early) -> None:
        self.plan.pending_add = [p for p in self.plan.pending_add if p.doc_id != entry.doc_id]

    def _flag_stale_gaps(self) -> None:
        while self.early:
            lowest = min(self.early)
            waiting = self.early[lowest]
            oldest = min(e.received_at for e in waiting)
            count = sum(len(v) for v in self.early.values())
            if count <= self.window and self.now - oldest < self.gap_timeout:
                return
            head = self.plan.head
            missing = (head.sequence + 1, lowest - 1)
            self.plan.alerts.append(
                {
                    "rule": "sequence_gap",
                    "severity": "high",
                    "title": f"records {missing[0]}..{missing[1]} of stream {self.stream} "
                    "never arrived",
                    "dedup_key": f"gap:{self.stream}:{missing[0]}",
                    "detail": {"first_missing": missing[0], "last_missing": missing[1]},
                }
            )
            head.hash = waiting[0].prev  # continue after the gap; the link cannot be checked
            head.sequence = lowest - 1
            self._drain(linked=False)

    # -- signatures -----------------------------------------------------------------------

    def _signature_failure(self, item: Incoming) -> str | None:
        signature = item.record.get(f.SIGNATURE)
        if not isinstance(signature, str):
            return "missing_signature"
        if item.record.get(f.CP_SIGNER) != self.verifier.fingerprint:
            return "wrong_key"
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return "bad_signature"
        if len(raw) != 64 or not self.verifier.verify(raw, checkpoint_message(item.event_hash)):
            return "bad_signature"
        return None

    def _check_signature(self, item: Incoming) -> None:
        failure = self._signature_failure(item)
        self.plan.checkpoints.append(
            Checkpoint(
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
                verified=failure is None,
                received_at=self.now,
            )
        )
        if failure is not None:
            self._alert(
                "integrity_failure",
                "critical",
                f"checkpoint signature: {failure}",
                item,
                kind=failure,
            )

    # -- outputs --------------------------------------------------------------------------

    def _write(self, item: Incoming, doc: str, outcome: str, failure: str | None) -> None:
        self.stored[doc] = item.event_hash  # the id is taken: a rival must use its own
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
                failure=failure,
                received_at=self.now,
            )
        )

    def _alert(self, rule: str, severity: str, title: str, item: Incoming, *, kind: str) -> None:
        self.plan.alerts.append(
            {
                "rule": rule,
                "severity": severity,
                "title": title,
                "dedup_key": f"{rule}:{self.stream}:{kind}:{item.sequence}",
                "detail": {"kind": kind, "sequence": item.sequence, "event_hash": item.event_hash},
            }
        )


def _with_verdict(event: StoredEvent, outcome: str, failure: str | None) -> StoredEvent:
    from dataclasses import replace

    return replace(event, verdict=outcome, failure=failure)
