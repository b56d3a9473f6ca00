"""The chain walk over a bundle's elements (docs/record-spec.md §10.3 steps 6 and 7).

One implementation, used twice: the writer walks the elements it is about to write, so the
manifest can state every failure of the range it signs (an export is evidence either way),
and the verifier walks what it read, so a bundle's declared failures can be compared with
what anybody finds. Both must locate each failure identically, so neither carries a copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from audit.integrity import record as f
from audit.integrity.keys import Verifier
from audit.integrity.signatures import checkpoint_signature

MANIFEST: Final = "manifest.json"
MODIFIED_DETAIL: Final = "content does not match its event.hash"


class ExportFailureKind(StrEnum):
    MANIFEST_SIGNATURE = "manifest_signature"
    WRONG_KEY = "wrong_key"
    FILE_HASH = "file_hash"
    MODIFIED_RECORD = "modified_record"
    MISSING_RECORD = "missing_record"
    EXTRA_RECORD = "extra_record"
    BROKEN_LINK = "broken_link"
    RANGE_MISMATCH = "range_mismatch"
    BAD_CHECKPOINT = "bad_checkpoint"
    CSV_MISMATCH = "csv_mismatch"
    MALFORMED = "malformed"
    # The transparency log (v3 bundles, audit.exports.tlog):
    # a full record with no inclusion proof that the manifest does not list as not logged
    # (or, asked to require the log, any selected record the log does not prove);
    NOT_IN_LOG = "not_in_log"
    # a proof that does not lead from the record's recomputed leaf to the checkpoint's
    # root, proves nothing of the bundle, or is out of the chain's order;
    INCLUSION = "inclusion"
    # a checkpoint missing, malformed, not signed by the service key under its origin,
    # or not what the manifest states;
    LOG_CHECKPOINT = "log_checkpoint"
    # a checkpoint of another log than <name>/<tenant>/<stream> of the range;
    LOG_ORIGIN = "log_origin"
    # the verifier's witness policy: quorum not met, or a cosignature that does not verify.
    LOG_QUORUM = "log_quorum"

    @property
    def declarable(self) -> bool:
        """A failure of the exported chain itself, which the writer finds and states in
        the manifest; the others are failures of the bundle, which no writer can declare."""
        return self in _CHAIN_KINDS


_CHAIN_KINDS: Final = frozenset(
    {
        ExportFailureKind.MODIFIED_RECORD,
        ExportFailureKind.MISSING_RECORD,
        ExportFailureKind.EXTRA_RECORD,
        ExportFailureKind.BROKEN_LINK,
        ExportFailureKind.RANGE_MISMATCH,
        ExportFailureKind.BAD_CHECKPOINT,
        # The log against the store: a stored record that is not the leaf the log holds
        # is evidence of tampering the writer finds, as is a stored checkpoint that does
        # not verify. A record missing from the log is stated in the manifest's tlog
        # section instead, and a witness quorum is the verifier's requirement, not the
        # writer's: neither is declarable.
        ExportFailureKind.INCLUSION,
        ExportFailureKind.LOG_CHECKPOINT,
        ExportFailureKind.LOG_ORIGIN,
    }
)


class FindingKind(StrEnum):
    """What the service knows of a range and the bundle cannot show (spec §10.2
    `findings`): stated under its signature, not checkable offline."""

    # A record exported as a link stub whose stored content no longer hashes to its
    # event.hash: the stub carries the stored hashes, the content stays in the service.
    MODIFIED_IN_STORE = "modified_in_store"
    # A second record claims the sequence in the store (a fork); the bundle holds the one
    # the writer was given first.
    FORK = "fork"
    # A record claiming the sequence was kept as evidence at ingest (forged, unlinked, an
    # altered re-send), never part of the chain: the attack was seen and refused.
    REJECTED_AT_INGEST = "rejected_at_ingest"

    @property
    def damage(self) -> bool:
        """The stored chain itself is damaged (as opposed to an attempt that was refused)."""
        return self is not FindingKind.REJECTED_AT_INGEST


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    stream: str
    sequence: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "stream": self.stream,
            "sequence": self.sequence,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ExportFailure:
    kind: ExportFailureKind
    file: str | None  # a bundle file name; None when nothing in the bundle is at fault
    line: int | None  # 1-based physical line (records.csv: the line its row starts on)
    stream: str | None
    sequence: int | None
    detail: str
    # Stated in the signed manifest by the service that wrote the bundle.
    declared: bool = False

    @property
    def location(self) -> tuple[str, str | None, int | None, str | None, int | None]:
        """What identifies a failure between writer and verifier (the detail's wording may
        differ between versions)."""
        return (self.kind.value, self.file, self.line, self.stream, self.sequence)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "file": self.file,
            "line": self.line,
            "stream": self.stream,
            "sequence": self.sequence,
            "detail": self.detail,
            "declared": self.declared,
        }

    def declaration(self) -> dict[str, Any]:
        """How the manifest states it (no `declared` flag: stating it is declaring it)."""
        out = self.as_dict()
        del out["declared"]
        return out

    def describe(self) -> str:
        where = [self.file or "bundle"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.sequence is not None:
            where.append(f"seq {self.sequence}")
        if self.stream is not None:
            where.append(f"stream {self.stream}")
        said = " (declared by the service)" if self.declared else ""
        return f"FAIL {self.kind.value}: {', '.join(where)}: {self.detail}{said}"


@dataclass(frozen=True, slots=True)
class LogReport:
    """What a range's transparency log proves (v3 bundles)."""

    origin: str
    size: int  # the checkpoint's tree size; 0 when the stream has none in the bundle
    cosigned: bool  # the manifest's statement, checked against the note
    # Witnesses whose cosignature verified under the verifier's policy; () without one.
    witnesses: tuple[str, ...]
    # Selected records whose inclusion proof verifies against a checkpoint that verifies
    # (and meets the policy's quorum, when one is given).
    proven: tuple[int, ...]
    # Every other selected record, with why the log does not prove it.
    unproven: tuple[tuple[int, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "cosigned": self.cosigned,
            "witnesses": list(self.witnesses),
            "proven": list(self.proven),
            "unproven": [{"sequence": s, "reason": why} for s, why in self.unproven],
        }


@dataclass(frozen=True, slots=True)
class RangeReport:
    stream: str
    first_sequence: int
    last_sequence: int
    records: int  # selected records (full) in the range
    links: int
    checkpoints: int  # checkpoints in the range, selected or not
    signed_through: int  # highest checkpoint whose signature verifies; 0 when none
    # Selected records joined to a verifying checkpoint through full records only: those
    # the producer's key proves. The others rest on the service's signature alone.
    producer_signed: tuple[int, ...]
    # Every other selected record, with why the producer's key does not reach it.
    unproven: tuple[tuple[int, str], ...] = ()
    # The range's transparency log; None for v1 and v2 bundles, which carry none.
    log: LogReport | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "stream": self.stream,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "records": self.records,
            "links": self.links,
            "checkpoints": self.checkpoints,
            "signed_through": self.signed_through,
            "producer_signed": list(self.producer_signed),
            "unproven": [{"sequence": s, "reason": why} for s, why in self.unproven],
        }
        if self.log is not None:
            # Only v3 reports have it: the report of an older bundle keeps its shape.
            out["log"] = self.log.as_dict()
        return out


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """A range as the manifest declares it."""

    stream: str
    first: int
    last: int
    first_prev: str
    last_hash: str
    signed_through: int
    key: Verifier | None  # None when the manifest's key is unusable (already reported)


@dataclass(frozen=True, slots=True)
class Element:
    """A record, checkpoint or stub, reduced to what the chain walk needs."""

    file: str
    line: int
    stream: str
    seq: int
    hash: str
    prev: str
    full: bool  # content present: the hash was recomputed from it
    intact: bool  # full and the content matches its hash
    selected: bool
    record: Mapping[str, Any] | None  # checkpoints only: to check their signatures


def checkpoint_signature_ok(record: Mapping[str, Any], key: Verifier) -> str | None:
    """None when the checkpoint is signed by `key` over its stored hash, else why not (the
    kernel's one verdict, audit.integrity.signatures)."""
    problem = checkpoint_signature(
        record.get(f.SIGNATURE), record.get(f.CP_SIGNER), str(record[f.EVENT_HASH]), key
    )
    return None if problem is None else f"{problem.kind.value}: {problem.detail}"


def verified_checkpoints(checkpoints: Iterable[Element], key: Verifier) -> set[int]:
    """Sequences of the intact checkpoints whose signature verifies under `key`."""
    return {
        cp.seq
        for cp in checkpoints
        if cp.record is not None and cp.intact and checkpoint_signature_ok(cp.record, key) is None
    }


Fail = Callable[[ExportFailureKind, str, str | None, int | None, str | None, int | None], None]


def walk(r: RangeSpec, elements: Iterable[Element], fail: Fail) -> RangeReport:
    """Walk one range over its stream's elements, reporting each failure through `fail`
    (kind, detail, file, line, stream, sequence), and summarise what is proven."""
    at: dict[int, list[Element]] = {}
    for el in elements:
        if r.first <= el.seq <= r.last:
            at.setdefault(el.seq, []).append(el)
        else:
            fail(
                ExportFailureKind.EXTRA_RECORD,
                f"outside the exported range {r.first}..{r.last}",
                el.file,
                el.line,
                el.stream,
                el.seq,
            )
    chosen: dict[int, Element] = {}
    for seq, candidates in sorted(at.items()):
        best = max(candidates, key=lambda c: _fit(c, at, r))  # max keeps the first tie
        chosen[seq] = best
        for other in candidates:
            if other is not best:
                fail(
                    ExportFailureKind.EXTRA_RECORD,
                    f"a second element claims the sequence (the chain continues through "
                    f"{best.file} line {best.line})",
                    other.file,
                    other.line,
                    other.stream,
                    other.seq,
                )
    _holes(r, chosen, fail)
    for seq in range(r.first + 1, r.last + 1):
        a, b = chosen.get(seq - 1), chosen.get(seq)
        if a is not None and b is not None and b.prev != a.hash:
            # A stub's hash and prev are unverifiable, a full record's are not: blame
            # the side where the disagreeing value cannot have been checked.
            blamed = a if b.full and not a.full else b
            fail(
                ExportFailureKind.BROKEN_LINK,
                f"sequence {seq} ({b.file} line {b.line}) links to {b.prev[:16]}…, "
                f"sequence {seq - 1} ({a.file} line {a.line}) has hash {a.hash[:16]}…",
                blamed.file,
                blamed.line,
                r.stream,
                blamed.seq,
            )
    closing = min(
        (seq for seq, el in chosen.items() if el.record and el.record.get(f.CP_CLOSING) is True),
        default=None,
    )
    for seq in sorted(chosen):
        if closing is not None and seq > closing:
            # Anyone can link a record to the closing checkpoint's public hash; the
            # producer never writes after it.
            el = chosen[seq]
            fail(
                ExportFailureKind.EXTRA_RECORD,
                f"follows the stream's closing checkpoint (sequence {closing})",
                el.file,
                el.line,
                r.stream,
                seq,
            )
    if r.first == 1 and r.first_prev != f.ZERO_HASH:
        fail(
            ExportFailureKind.RANGE_MISMATCH,
            "the range starts the stream, so its first_prev must be 64 zeros",
            MANIFEST,
            None,
            r.stream,
            1,
        )
    first, last = chosen.get(r.first), chosen.get(r.last)
    if first is not None and first.prev != r.first_prev:
        fail(
            ExportFailureKind.RANGE_MISMATCH,
            f"links to {first.prev[:16]}…, the manifest's first_prev is {r.first_prev[:16]}…",
            first.file,
            first.line,
            r.stream,
            r.first,
        )
    if last is not None and last.hash != r.last_hash:
        fail(
            ExportFailureKind.RANGE_MISMATCH,
            f"has hash {last.hash[:16]}…, the manifest's last_hash is {r.last_hash[:16]}…",
            last.file,
            last.line,
            r.stream,
            r.last,
        )
    signed = _checkpoints(r, [c for c in chosen.values() if c.record is not None], fail)
    return _summary(r, chosen, signed)


def _holes(r: RangeSpec, chosen: dict[int, Element], fail: Fail) -> None:
    missing = [seq for seq in range(r.first, r.last + 1) if seq not in chosen]
    for _, run in itertools.groupby(enumerate(missing), key=lambda p: p[1] - p[0]):
        seqs = [seq for _, seq in run]
        span = f"sequence {seqs[0]}" if len(seqs) == 1 else f"sequences {seqs[0]}..{seqs[-1]}"
        fail(
            ExportFailureKind.MISSING_RECORD,
            f"{span} of the exported range: neither a record nor a stub in the bundle",
            None,
            None,
            r.stream,
            seqs[0],
        )


def _checkpoints(r: RangeSpec, checkpoints: list[Element], fail: Fail) -> set[int]:
    if r.key is None:
        return set()  # the range's key is unusable, which is already a failure
    for cp in checkpoints:
        assert cp.record is not None
        problem = checkpoint_signature_ok(cp.record, r.key)
        if problem is not None:
            fail(ExportFailureKind.BAD_CHECKPOINT, problem, cp.file, cp.line, r.stream, cp.seq)
    signed = verified_checkpoints(checkpoints, r.key)
    honest = max(signed, default=0)
    if r.signed_through != honest:
        fail(
            ExportFailureKind.BAD_CHECKPOINT,
            f"signed_through is {r.signed_through}, but the highest checkpoint whose "
            f"signature verifies is {honest or 'none'}",
            MANIFEST,
            None,
            r.stream,
            r.signed_through,
        )
    return signed


def _summary(r: RangeSpec, chosen: dict[int, Element], signed: set[int]) -> RangeReport:
    # Walk down from each verifying checkpoint while the chain stays made of intact,
    # linked full records: a stub's hash cannot be recomputed, so the producer's
    # signature stops there.
    proven: list[int] = []
    anchored = False
    for seq in range(r.last, r.first - 1, -1):
        el = chosen.get(seq)
        nxt = chosen.get(seq + 1)
        if el is None or not el.intact:
            anchored = False
        elif seq in signed:
            anchored = True
        elif anchored and (nxt is None or nxt.prev != el.hash):
            anchored = False
        if anchored and el is not None and el.selected:
            proven.append(seq)
    values = chosen.values()
    last_signed = max(signed, default=0)
    taken = set(proven)
    unproven = []
    for seq in range(r.first, r.last + 1):
        el = chosen.get(seq)
        if el is None or not el.selected or seq in taken:
            continue
        if not el.intact:
            why = "its content does not hash to its event.hash"
        elif seq > last_signed:
            why = "after the range's last verifying checkpoint: the service's signature alone"
        else:
            why = _gap_reason(chosen, seq, min(s for s in signed if s > seq))
        unproven.append((seq, why))
    return RangeReport(
        stream=r.stream,
        first_sequence=r.first,
        last_sequence=r.last,
        records=sum(1 for el in values if el.selected),
        links=sum(1 for el in values if not el.full),
        checkpoints=sum(1 for el in values if el.record is not None),
        signed_through=max(signed, default=0),
        producer_signed=tuple(sorted(proven)),
        unproven=tuple(unproven),
    )


def _gap_reason(chosen: dict[int, Element], seq: int, checkpoint: int) -> str:
    between = [chosen.get(s) for s in range(seq + 1, checkpoint)]
    if any(el is None for el in between):
        return "a missing record lies between it and its checkpoint"
    if any(el is not None and not el.full for el in between):
        return "an unselected record (a stub) lies between it and its checkpoint"
    if any(el is not None and not el.intact for el in between):
        return "an altered record lies between it and its checkpoint"
    return "a broken link lies between it and its checkpoint"


def _fit(candidate: Element, at: dict[int, list[Element]], r: RangeSpec) -> tuple[bool, ...]:
    """How well one of several elements claiming a sequence fits the chain, best first.

    What follows decides first (the chain continues through the genuine one: anybody can
    make a record that links back, or hash its own content), then what precedes, then
    whether its content matches its hash.
    """
    seq = candidate.seq
    if seq == r.last:
        onward = candidate.hash == r.last_hash
    else:
        onward = any(n.prev == candidate.hash for n in at.get(seq + 1, ()))
    if seq == r.first:
        backward = candidate.prev == r.first_prev
    else:
        backward = any(p.hash == candidate.prev for p in at.get(seq - 1, ()))
    return (onward, backward, candidate.intact)


def record_verdict(
    stream: str,
    seq: int,
    failures: Iterable[ExportFailure],
    findings: Iterable[Finding],
) -> str:
    """The `verdict` cell of a selected record in records.csv: `ok`, or the kinds of the
    declared failures and findings located at it, sorted and space-separated."""
    kinds = {x.kind.value for x in failures if x.stream == stream and x.sequence == seq}
    kinds |= {x.kind.value for x in findings if x.stream == stream and x.sequence == seq}
    return " ".join(sorted(kinds)) or "ok"
