"""Streaming chain verification with located failures.

One pass, constant memory per stream: out-of-order records wait in a bounded window, and
only (sequence → hash, line) of the last `window` records is kept for duplicate detection.

How evidence becomes a failure kind (docs/record-spec.md, "Verifying"):
* content that does not hash to its `event.hash`: **modified** at that record;
* a record whose successor links to a different hash (edited, then re-hashed): **modified**
  at that record;
* a sequence that never arrives: **gap**; one that arrives late: **reordered**;
* the same sequence again with the same hash: **duplicate**; with another hash: **inserted**,
  blaming whichever of the two the next record does not link to;
* a checkpoint without `ffaudit.signature`: **missing_signature**; signed under another key:
  **wrong_key**; a signature that does not verify: **bad_signature** if a later checkpoint
  does verify (a valid signature commits to the whole prefix, so only the signature was
  damaged), else **forged_chain** (hashes were recomputed without the key);
* with `strict`, a stream that does not end in its closing checkpoint: **truncated**.

Records purged by retention are absent on purpose: `skip_purged` hands the verifier the
ranges their signed retention checkpoints describe (docs/record-spec.md §12), and the chain
continues across each one as if its records were there, the first remaining record linking
to the range's last hash. Streams without purged ranges never reach that code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from audit.integrity import record as f
from audit.integrity.canonical import canonicalize, record_body
from audit.integrity.chain import splice_hash
from audit.integrity.digest import sha256_hex
from audit.integrity.errors import CanonicalizationError
from audit.integrity.keys import Verifier
from audit.integrity.signatures import SignatureFailure, checkpoint_signature

_CHECKPOINT = "audit.checkpoint"
_REQUIRED = frozenset(f.REQUIRED)


class FailureKind(StrEnum):
    MALFORMED = "malformed"
    MODIFIED = "modified"
    GAP = "gap"
    REORDERED = "reordered"
    DUPLICATE = "duplicate"
    INSERTED = "inserted"
    FORGED_CHAIN = "forged_chain"
    BAD_SIGNATURE = "bad_signature"
    MISSING_SIGNATURE = "missing_signature"
    WRONG_KEY = "wrong_key"
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    stream: str | None
    line: int | None
    sequence: int | None
    detail: str
    # Where the blamed record is stored, when the verifier was fed from a store (the
    # service's verification): two records may claim one sequence, the id tells which.
    record_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind.value,
            "stream": self.stream,
            "line": self.line,
            "sequence": self.sequence,
            "detail": self.detail,
        }
        if self.record_id is not None:
            out["record_id"] = self.record_id
        return out


@dataclass(frozen=True, slots=True)
class PurgedRange:
    """Sequences `first`..`last` of a stream, purged by retention: `first_prev` is what the
    first of them linked to, `last_hash` the hash the next remaining record links to."""

    first: int
    last: int
    first_prev: str
    last_hash: str


@dataclass(frozen=True, slots=True)
class _Entry:
    """What verification keeps of a record once its content hash was checked."""

    line: int
    seq: int
    hash: str
    prev: str
    checkpoint: tuple[str | None, str | None, bool] | None  # (signature, signer, closing)


@dataclass(slots=True)
class StreamReport:
    stream: str
    tenant: str
    records: int = 0
    expected: int = 1  # next sequence that extends the chain
    head_hash: str = f.ZERO_HASH
    head_line: int = 0
    linked: bool = True  # False right after a gap: the next prev cannot be checked
    signed_through: int = 0  # last sequence covered by a verified signature
    last_checkpoint: int = 0
    closed: bool = False
    pending: dict[int, _Entry] = field(default_factory=dict)
    # (sequence, hash, line) of the last `window` records, at index sequence % window.
    recent: list[tuple[int, str, int] | None] = field(default_factory=list)
    rival: _Entry | None = None  # a second record claiming head's sequence
    unredeemed: list[_Entry] = field(default_factory=list)  # failing signatures so far
    wrong_key_reported: bool = False
    purged: dict[int, PurgedRange] = field(default_factory=dict)  # by first sequence

    def summary(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "tenant": self.tenant,
            "records": self.records,
            "last_sequence": self.expected - 1,
            "signed_through": self.signed_through,
            "closed": self.closed,
        }


class ChainVerifier:
    def __init__(self, key: Verifier, *, strict: bool = False, window: int = 1024) -> None:
        self.key = key
        self.strict = strict
        self.window = window
        self.streams: dict[tuple[str, str], StreamReport] = {}
        self.counts: Counter[FailureKind] = Counter()
        self.lines = 0
        self._out: list[Failure] = []  # failures made certain by the current call

    @property
    def ok(self) -> bool:
        return not self.counts

    def feed(self, line_no: int, line: bytes | str) -> list[Failure]:
        """Check one NDJSON line; returns the failures this line made certain."""
        self._out = []
        self.lines += 1
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._fail(FailureKind.MALFORMED, None, line_no, None, f"not JSON: {exc}")
            return self._out
        return self._check(line_no, rec, line)

    def feed_record(self, line_no: int, record: dict[str, Any]) -> list[Failure]:
        """Check one record already parsed (a store's document): the same failures as
        `feed(line_no, canonicalize(record))`, without serialising the record only to parse
        it again. `record` is not modified.

        The fields the checks look at must hold values that a canonical round trip leaves
        as they are (strings, integers, booleans, null; a float `5.0` reads back as `5`);
        a record where one does not, and any record in strict mode, goes through `feed`.
        A record that has no canonical form at all (so `feed` could not be given it) is
        checked as it is: it fails as malformed or modified."""
        if self.strict or type(record) is not dict:
            return self._feed_canonical(line_no, record)
        get = record.get
        for value in (
            get(f.EVENT_SEQUENCE),
            get(f.SCHEMA),
            get(f.TENANT),
            get(f.SIGNATURE),
            get(f.CP_SIGNER),
        ):
            t = type(value)
            if t is not str and t is not int and t is not bool and value is not None:
                return self._feed_canonical(line_no, record)
        self._out = []
        self.lines += 1
        return self._check(line_no, dict(record), None)

    def _feed_canonical(self, line_no: int, record: Any) -> list[Failure]:
        try:
            line = canonicalize(record)
        except CanonicalizationError:
            self._out = []
            self.lines += 1
            return self._check(line_no, dict(record) if type(record) is dict else record, None)
        return self.feed(line_no, line)

    def _check(self, line_no: int, rec: Any, line: bytes | str | None) -> list[Failure]:
        """The checks of `feed` on its parsed record `rec` (which they modify); `line` is
        the line it was parsed from, for strict mode."""
        placed = _placement(rec)
        if placed is None:
            self._malformed(rec, line_no)
            return self._out
        key, seq, stored, prev, cp = placed
        stream = key[1]
        del rec[f.EVENT_HASH]
        signature = rec.pop(f.SIGNATURE, None)
        state = self.streams.get(key)
        if state is None:
            state = self.streams[key] = StreamReport(stream, key[0], recent=[None] * self.window)
        state.records += 1
        try:
            body: bytes | None = record_body(rec)
        except CanonicalizationError as exc:
            # Still placed in the chain by its stored hash: one bad value is one failure.
            body = None
            self._fail(FailureKind.MALFORMED, stream, line_no, seq, exc.message)
        computed = None if body is None else sha256_hex(body)
        if computed is not None and computed != stored:
            self._fail(
                FailureKind.MODIFIED, stream, line_no, seq, "content does not match its event.hash"
            )
        elif (schema := f.schema_error(rec)) is not None:
            self._fail(FailureKind.MALFORMED, stream, line_no, seq, schema)
        elif (
            self.strict
            and body is not None
            # None: a record without a canonical form (feed_record), so not canonical.
            and (line is None or not _is_canonical_line(body, rec, stored, signature, line))
        ):
            self._fail(
                FailureKind.MALFORMED,
                stream,
                line_no,
                seq,
                "line is not the canonical (RFC 8785) form of its record",
            )
        self._sequence(state, line_no, seq, stored, prev, cp)
        return self._out

    def _sequence(
        self,
        state: StreamReport,
        line_no: int,
        seq: int,
        stored: str,
        prev: str,
        cp: tuple[str | None, str | None, bool] | None,
    ) -> None:
        """Place a record whose content was checked (steps 3-5): it depends on the stream's
        state alone, so a parallel verifier can replay it from `locate`'s entries."""
        if (
            cp is None
            and seq == state.expected
            and prev == state.head_hash
            and state.linked
            and not state.pending
            and state.rival is None
            and not state.closed
        ):
            # The common case, inlined: the next record, linking to the head.
            state.expected = seq + 1
            state.head_hash, state.head_line = stored, line_no
            state.recent[seq % self.window] = (seq, stored, line_no)
        else:
            self._place(state, _Entry(line_no, seq, stored, prev, cp))

    def skip_purged(self, tenant: str, stream: str, ranges: list[PurgedRange]) -> None:
        """Before feeding: the stream's records in `ranges` were purged, so the chain jumps
        across each (checking the link into it) where its records are absent. A range whose
        records are present (restored from an archive) is verified record by record."""
        state = self.streams.get((tenant, stream))
        if state is None:
            state = self.streams[tenant, stream] = StreamReport(
                stream, tenant, recent=[None] * self.window
            )
        for r in ranges:
            state.purged[r.first] = r

    def finish(self) -> list[Failure]:
        """End of input: settle pending records, rivals and signatures."""
        self._out = []
        for state in self.streams.values():
            if state.purged:
                self._settle_purged(state)
            while state.pending:
                self._skip_gap(state)
            if state.rival is not None:
                self._fail(
                    FailureKind.INSERTED,
                    state.stream,
                    state.rival.line,
                    state.rival.seq,
                    f"a second record claims sequence {state.rival.seq} "
                    f"(first at line {state.head_line})",
                )
                state.rival = None
            if state.unredeemed:
                first = state.unredeemed[0]
                self._fail(
                    FailureKind.FORGED_CHAIN,
                    state.stream,
                    first.line,
                    first.seq,
                    f"checkpoint signature does not verify and no later checkpoint does: "
                    f"sequences {state.signed_through + 1}..{state.expected - 1} are "
                    "unproven (hashes recomputed without the signing key, or the "
                    "signature was damaged)",
                )
            if self.strict and not state.closed:
                tail = (
                    f"records {state.last_checkpoint + 1}..{state.expected - 1} follow the "
                    "last checkpoint"
                    if state.last_checkpoint
                    else "no checkpoint at all"
                )
                self._fail(
                    FailureKind.TRUNCATED,
                    state.stream,
                    None,
                    state.expected - 1,
                    f"stream has no closing checkpoint: {tail}",
                )
        return self._out

    # -- sequencing ---------------------------------------------------------------------

    def _place(self, state: StreamReport, entry: _Entry) -> None:
        seq = entry.seq
        if seq == state.expected:
            if state.pending:
                first = min(state.pending)
                self._fail(
                    FailureKind.REORDERED,
                    state.stream,
                    entry.line,
                    seq,
                    f"arrived after sequence {first} (line {state.pending[first].line})",
                )
            self._extend_and_drain(state, entry)
        elif seq > state.expected:
            if state.purged:
                # A record present inside a purged range (a restored one) stops the jump.
                before = min(seq, *state.pending) if state.pending else seq
                if self._jump_purged(state, before):
                    self._place(state, entry)
                    return
            if seq in state.pending:
                self._repeat(state, entry, state.pending[seq].hash, state.pending[seq].line)
                return
            state.pending[seq] = entry
            if len(state.pending) > self.window:
                self._skip_gap(state)
        else:
            self._late(state, entry)

    def _late(self, state: StreamReport, entry: _Entry) -> None:
        """A sequence below `expected`: judged by what the window holds for it."""
        self._judge_late(state, entry, state.recent[entry.seq % self.window])

    def _judge_late(
        self, state: StreamReport, entry: _Entry, seen: tuple[int, str, int] | None
    ) -> None:
        if seen is None or seen[0] != entry.seq:
            self._fail(
                FailureKind.REORDERED,
                state.stream,
                entry.line,
                entry.seq,
                f"arrived after sequence {state.expected - 1}, too late to place",
            )
        else:
            self._repeat(state, entry, seen[1], seen[2])

    def _jump_purged(self, state: StreamReport, before: int | None) -> bool:
        """Jump over the purged ranges that start where the chain stands and end before
        sequence `before` (any end when None); True if the chain moved."""
        for stale in [first for first in state.purged if first < state.expected]:
            del state.purged[stale]  # its records were present and placed one by one
        moved = False
        while state.expected in state.purged:
            r = state.purged[state.expected]
            if before is not None and r.last >= before:
                break  # a record inside the range is present: it is placed, not skipped
            del state.purged[r.first]
            self._jump(state, r)
            moved = True
            while state.expected in state.pending:
                self._extend(state, state.pending.pop(state.expected))
        return moved

    def _settle_purged(self, state: StreamReport) -> None:
        """End of input: purged ranges still ahead (the stream's tail was purged, or records
        between the chain and a range are missing: a gap before the range)."""
        while state.purged:
            self._jump_purged(state, min(state.pending) if state.pending else None)
            if not state.purged:
                return
            first = min(state.purged)
            if state.pending and min(state.pending) <= state.purged[first].last:
                if min(state.pending) < first:
                    self._skip_gap(state)
                else:
                    del state.purged[first]  # partly present: its holes are gaps
                continue
            if first > state.expected:
                missing = (
                    f"sequence {state.expected}"
                    if first == state.expected + 1
                    else f"sequences {state.expected}..{first - 1}"
                )
                self._fail(
                    FailureKind.GAP,
                    state.stream,
                    None,
                    first,
                    f"missing {missing}, before purged sequences {first}.."
                    f"{state.purged[first].last}",
                )
                state.linked = False
                state.expected = first

    def _jump(self, state: StreamReport, r: PurgedRange) -> None:
        if state.rival is not None:
            # As in _extend: the range links to one of the two, the other was inserted.
            rival, state.rival = state.rival, None
            blamed = rival.line
            if r.first_prev == rival.hash and r.first_prev != state.head_hash:
                blamed = state.head_line
                state.head_hash, state.head_line = rival.hash, rival.line
            self._fail(
                FailureKind.INSERTED,
                state.stream,
                blamed,
                rival.seq,
                f"a second record claims sequence {rival.seq} (the chain continues into "
                f"purged sequences {r.first}..{r.last} from the other)",
            )
        if state.linked and r.first_prev != state.head_hash:
            self._fail(
                FailureKind.MODIFIED,
                state.stream,
                state.head_line or None,
                r.first - 1,
                f"event.hash differs from the hash that the retention checkpoint of purged "
                f"sequences {r.first}..{r.last} links to: edited and re-hashed",
            )
        state.linked = True
        state.expected = r.last + 1
        state.head_hash, state.head_line = r.last_hash, 0

    def _repeat(self, state: StreamReport, entry: _Entry, hash_: str, line: int) -> None:
        if entry.hash == hash_:
            self._fail(
                FailureKind.DUPLICATE, state.stream, entry.line, entry.seq, f"copy of line {line}"
            )
        elif entry.seq == state.expected - 1 and state.rival is None:
            state.rival = entry  # decided by which of the two the next record links to
        else:
            self._fail(
                FailureKind.INSERTED,
                state.stream,
                entry.line,
                entry.seq,
                f"a second record claims sequence {entry.seq} (first at line {line})",
            )

    def _skip_gap(self, state: StreamReport) -> None:
        first = min(state.pending)
        entry = state.pending[first]
        missing = (
            f"sequence {state.expected}"
            if first == state.expected + 1
            else f"sequences {state.expected}..{first - 1}"
        )
        self._fail(FailureKind.GAP, state.stream, entry.line, first, f"missing {missing}")
        state.expected = first
        state.linked = False
        self._extend_and_drain(state, state.pending.pop(first))

    def _extend_and_drain(self, state: StreamReport, entry: _Entry) -> None:
        self._extend(state, entry)
        while state.expected in state.pending:
            self._extend(state, state.pending.pop(state.expected))

    def _extend(self, state: StreamReport, entry: _Entry) -> None:
        if state.closed:
            self._fail(
                FailureKind.INSERTED,
                state.stream,
                entry.line,
                entry.seq,
                "record after the stream's closing checkpoint",
            )
        rival = state.rival
        if rival is not None:
            state.rival = None
            if entry.prev == rival.hash and entry.prev != state.head_hash:
                self._fail(
                    FailureKind.INSERTED,
                    state.stream,
                    state.head_line,
                    rival.seq,
                    f"the chain continues from line {rival.line} instead",
                )
                state.head_hash, state.head_line = rival.hash, rival.line
            else:
                self._fail(
                    FailureKind.INSERTED,
                    state.stream,
                    rival.line,
                    rival.seq,
                    f"a second record claims sequence {rival.seq} "
                    f"(the chain continues from line {state.head_line})",
                )
        if state.linked and entry.prev != state.head_hash:
            self._fail(
                FailureKind.MODIFIED,
                state.stream,
                state.head_line,
                entry.seq - 1,
                f"event.hash differs from the hash that sequence {entry.seq} "
                f"(line {entry.line}) links to: edited and re-hashed",
            )
        state.linked = True
        state.expected = entry.seq + 1
        state.head_hash, state.head_line = entry.hash, entry.line
        state.recent[entry.seq % self.window] = (entry.seq, entry.hash, entry.line)
        if entry.checkpoint is not None:
            self._check_signature(state, entry, *entry.checkpoint)

    # -- signatures ---------------------------------------------------------------------

    def _check_signature(
        self,
        state: StreamReport,
        entry: _Entry,
        signature: str | None,
        signer: str | None,
        closing: bool,
    ) -> None:
        state.last_checkpoint = entry.seq
        state.closed = closing
        problem = checkpoint_signature(signature, signer, entry.hash, self.key)
        if problem is not None and problem.decodable:
            state.unredeemed.append(entry)  # a later verified checkpoint may prove it
            return
        if problem is not None:
            if problem.kind is SignatureFailure.WRONG_KEY and not self._first_wrong_key(state):
                return
            kind = FailureKind(problem.kind.value)
            self._fail(kind, state.stream, entry.line, entry.seq, problem.detail)
            return
        self._redeem(state, entry)
        state.signed_through = entry.seq

    def _first_wrong_key(self, state: StreamReport) -> bool:
        """Whether a wrong-key checkpoint is reported: only a stream's first one is."""
        if state.wrong_key_reported:
            return False
        state.wrong_key_reported = True
        return True

    def _redeem(self, state: StreamReport, proof: _Entry) -> None:
        """Checkpoint `proof` verified: every failing signature before it was damaged."""
        self._bad_signatures(state, proof, state.unredeemed)
        state.unredeemed.clear()

    def _bad_signatures(self, state: StreamReport, proof: _Entry, bad: list[_Entry]) -> None:
        for cp in bad:
            self._fail(
                FailureKind.BAD_SIGNATURE,
                state.stream,
                cp.line,
                cp.seq,
                f"signature does not verify; the chain through it is proven by the "
                f"checkpoint at line {proof.line}",
            )

    def _malformed(self, rec: Any, line_no: int) -> None:
        stream = rec.get(f.STREAM) if type(rec) is dict else None
        seq = rec.get(f.EVENT_SEQUENCE) if type(rec) is dict else None
        self._fail(
            FailureKind.MALFORMED,
            stream if isinstance(stream, str) else None,
            line_no,
            seq if type(seq) is int else None,
            f"not an ffaudit record: {f.shape_error(rec)}",
        )

    def _fail(
        self, kind: FailureKind, stream: str | None, line: int | None, seq: int | None, detail: str
    ) -> None:
        self.counts[kind] += 1
        self._out.append(Failure(kind, stream, line, seq, detail))


def _placement(
    rec: Any,
) -> tuple[tuple[str, str], int, str, str, tuple[str | None, str | None, bool] | None] | None:
    """Where step 1 (§7) lets a record into the chain: (stream key, sequence, stored hash,
    prev, checkpoint fields); None for a record it rejects as malformed."""
    if type(rec) is not dict or not rec.keys() >= _REQUIRED:
        return None
    seq, stored, prev, stream = rec[f.EVENT_SEQUENCE], rec[f.EVENT_HASH], rec[f.PREV], rec[f.STREAM]
    if (
        type(seq) is not int
        or seq < 1
        or type(stored) is not str
        or len(stored) != 64
        or type(prev) is not str
        or len(prev) != 64
        or type(stream) is not str
    ):
        return None
    tenant = rec[f.TENANT]
    key = (tenant if type(tenant) is str else repr(tenant), stream)
    if rec[f.EVENT_ACTION] != _CHECKPOINT:
        return key, seq, stored, prev, None
    cp = (rec.get(f.SIGNATURE), rec.get(f.CP_SIGNER), rec.get(f.CP_CLOSING) is True)
    return key, seq, stored, prev, cp


def locate(line_no: int, line: bytes) -> tuple[tuple[str, str], _Entry] | None:
    """Where a line goes in the chain, without checking its content: the stream key and the
    entry `_check` would place (None for a line it would not place). For re-sequencing a
    region whose content checks were already done elsewhere."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    placed = _placement(rec)
    if placed is None:
        return None
    key, seq, stored, prev, cp = placed
    return key, _Entry(line_no, seq, stored, prev, cp)


def _is_canonical_line(
    body: bytes, rec: dict[str, Any], stored: str, signature: Any, line: bytes | str
) -> bool:
    """`seal` writes each line as the canonical form of the full record. Requiring that in
    strict mode rules out what JSON parsers disagree on: duplicate keys, numbers one parser
    reads as integers and another as floats."""
    raw = (line.encode() if isinstance(line, str) else line).rstrip(b"\r\n")
    if signature is None and b',"event.id":' in body and raw == splice_hash(body, stored):
        return True
    full = dict(rec)
    full[f.EVENT_HASH] = stored
    if signature is not None:
        full[f.SIGNATURE] = signature
    return canonicalize(full) == raw
