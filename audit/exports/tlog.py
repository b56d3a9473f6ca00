"""Transparency-log evidence in export bundles (docs/record-spec.md §10, format v3).

A v3 bundle carries `tlog.ndjson`: per stream, the checkpoint (a C2SP signed note by the
service key under the log's origin `<name>/<tenant>/<stream>`, cosigned when witnesses are
configured) and, per full record whose leaf the log holds, its RFC 6962 inclusion proof
against that one checkpoint. The leaf is recomputed from the record's content, so a
record edited after it was logged fails its proof even when its event.hash, the chain
links and the manifest were all recomputed: what §10.4 left to the service's signature
alone (a selected record re-linked across a stub) is then proven by the log.

The checkpoint's log key is the service key, so the log adds to the manifest signature
only what others hold of it: the witnesses' cosignatures (which a verifier requires with a
tlog-policy) and the checkpoints the service has published. Records the log does not
hold (accepted before it existed, placed in the chain as broken) are listed in the manifest
with the service's reason: never left out silently.

One check, `check_log`, for both sides: the writer runs it over the lines it is about to
write, to declare what it finds (a stored record that is not the logged leaf), and the
verifier over what it read; both therefore locate each failure identically.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.exports.chain import MANIFEST, ExportFailureKind, Fail, LogReport
from audit.integrity.merkle import EMPTY_ROOT, HASH_SIZE
from audit.integrity.notes import (
    MAX_PROOF_HASHES,
    MAX_UINT63,
    QUORUM_NONE,
    Note,
    NoteError,
    NoteFailure,
    NoteVerifier,
    Policy,
    VerifiedCheckpoint,
    parse_checkpoint,
    parse_note,
    valid_key_name,
    verify_checkpoint,
    vkey_for,
)
from audit.integrity.transparency import TransparencyError, check_inclusion

TLOG: Final = "tlog.ndjson"
CHECKPOINT_LINE: Final = "checkpoint"
INCLUSION_LINE: Final = "inclusion"
CHECKPOINT_MEMBERS: Final = frozenset({"type", "stream", "origin", "size", "note"})
INCLUSION_MEMBERS: Final = frozenset({"type", "stream", "sequence", "index", "hashes"})
DECLARATION_MEMBERS: Final = frozenset(
    {"stream", "origin", "size", "root", "cosigned", "not_in_log"}
)
# The first part of an origin: the service's `tlog_name` (one path segment).
_LOG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_:]{0,100}")
K = ExportFailureKind


@dataclass(frozen=True, slots=True)
class LogProof:
    """A leaf's index and inclusion proof (RFC 9162 §2.1.3.1, leaf side first)."""

    index: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StreamLog:
    """What the service gives the writer of one stream's log: the checkpoint every proof
    is against (None: the stream has no log, or no checkpoint), a proof per sequence whose
    leaf the log holds, and for the others why it does not hold them."""

    origin: str
    note: str | None
    proofs: Mapping[int, LogProof] = field(default_factory=dict)
    absent: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointLine:
    line: int
    stream: str
    origin: str
    size: int
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": CHECKPOINT_LINE,
            "stream": self.stream,
            "origin": self.origin,
            "size": self.size,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class ProofLine:
    line: int
    stream: str
    sequence: int
    index: int
    hashes: tuple[bytes, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": INCLUSION_LINE,
            "stream": self.stream,
            "sequence": self.sequence,
            "index": self.index,
            "hashes": [b64(h) for h in self.hashes],
        }


@dataclass(frozen=True, slots=True)
class LogDeclaration:
    """A stream's entry in the manifest's `tlog` section."""

    stream: str
    origin: str
    size: int  # 0: no checkpoint in the bundle (root is then the empty tree's)
    root: bytes
    cosigned: bool
    not_in_log: tuple[tuple[int, str], ...]  # (sequence, the service's reason), ascending

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "origin": self.origin,
            "size": self.size,
            "root": b64(self.root),
            "cosigned": self.cosigned,
            "not_in_log": [{"sequence": s, "reason": why} for s, why in self.not_in_log],
        }


@dataclass(frozen=True, slots=True)
class Leaf:
    """A full record of the bundle, as the log check needs it."""

    hash: str | None  # its content's hash (hex), recomputed; None when it cannot be
    selected: bool
    # The content hashes to the record's event.hash. A record that does not is already a
    # modified_record failure: its proof is not checked, so one damage is one failure.
    intact: bool = True


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, size: int = HASH_SIZE) -> bytes | None:
    """The bytes of canonical standard base64 of `size` bytes, or None: one encoding per
    value, so that what was verified is what the line says."""
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size and b64(raw) == value else None


def log_verifier(origin: str, key: Ed25519PublicKey) -> NoteVerifier | None:
    """The log's note key: the service key under the origin's name (None when the origin
    is no key name)."""
    if not valid_key_name(origin):
        return None
    return vkey_for(origin, key)


def is_cosigned(note: Note, log: NoteVerifier) -> bool:
    """Whether the note carries any signature besides the log's own (what the manifest's
    `cosigned` states; whose, and whether they verify, only a policy can say)."""
    return any(not log.matches(sig) for sig in note.signatures)


def origin_ok(origin: str, tenant: str, stream: str) -> bool:
    name, sep, rest = origin.partition("/")
    # Tenant and stream are the range's: only the name is free, and it is one segment.
    return bool(sep) and rest == f"{tenant}/{stream}" and _LOG_NAME.fullmatch(name) is not None


def parse_line(doc: Any, line: int) -> CheckpointLine | ProofLine | str:
    """A tlog.ndjson line's object, or what is wrong with it."""
    if type(doc) is not dict:
        return "not a JSON object"
    kind = doc.get("type")
    if kind == CHECKPOINT_LINE:
        if set(doc) != CHECKPOINT_MEMBERS:
            return (
                f"a checkpoint line has exactly the members {', '.join(sorted(CHECKPOINT_MEMBERS))}"
            )
        stream, origin, size, note = doc["stream"], doc["origin"], doc["size"], doc["note"]
        if not (isinstance(stream, str) and isinstance(origin, str) and isinstance(note, str)):
            return "stream, origin and note are not strings"
        if not (_is_int(size) and 1 <= size <= MAX_UINT63):
            return "size is not an integer 1..2^63-1"
        return CheckpointLine(line, stream, origin, size, note)
    if kind == INCLUSION_LINE:
        if set(doc) != INCLUSION_MEMBERS:
            return (
                f"an inclusion line has exactly the members {', '.join(sorted(INCLUSION_MEMBERS))}"
            )
        stream, seq, index, hashes = doc["stream"], doc["sequence"], doc["index"], doc["hashes"]
        if not isinstance(stream, str):
            return "stream is not a string"
        if not (_is_int(seq) and seq >= 1):
            return "sequence is not an integer >= 1"
        if not (_is_int(index) and 0 <= index <= MAX_UINT63):
            return "index is not an integer 0..2^63-1"
        if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
            return f"hashes is not a list of at most {MAX_PROOF_HASHES}"
        raw = [unb64(h) for h in hashes]
        if any(h is None for h in raw):
            return "a proof hash is not the canonical base64 of 32 bytes"
        return ProofLine(line, stream, seq, index, tuple(h for h in raw if h is not None))
    return f"type is {kind!r}, not {CHECKPOINT_LINE!r} or {INCLUSION_LINE!r}"


def parse_declaration(item: Any) -> LogDeclaration | str:
    """A manifest `tlog` entry, or what is wrong with it."""
    if type(item) is not dict or set(item) != DECLARATION_MEMBERS:
        return f"not an object of exactly {', '.join(sorted(DECLARATION_MEMBERS))}"
    stream, origin, size, cosigned = item["stream"], item["origin"], item["size"], item["cosigned"]
    if not (isinstance(stream, str) and isinstance(origin, str)):
        return "stream and origin are not strings"
    if not (_is_int(size) and 0 <= size <= MAX_UINT63):
        return "size is not an integer 0..2^63-1"
    root = unb64(item["root"])
    if root is None:
        return "root is not the canonical base64 of 32 bytes"
    if size == 0 and root != EMPTY_ROOT:
        return "size 0 with a root other than the empty tree's"
    if type(cosigned) is not bool or (size == 0 and cosigned):
        return "cosigned is not a boolean (false when size is 0)"
    absent = item["not_in_log"]
    if not isinstance(absent, list):
        return "not_in_log is not a list"
    pairs: list[tuple[int, str]] = []
    for entry in absent:
        if type(entry) is not dict or set(entry) != {"sequence", "reason"}:
            return "a not_in_log entry is not {sequence, reason}"
        seq, reason = entry["sequence"], entry["reason"]
        if not (_is_int(seq) and seq >= 1 and isinstance(reason, str)):
            return "a not_in_log entry is not an integer sequence >= 1 and a reason"
        if pairs and seq <= pairs[-1][0]:
            return "not_in_log is not in ascending sequence order"
        pairs.append((seq, reason))
    return LogDeclaration(stream, origin, size, root, cosigned, tuple(pairs))


def check_log(
    decl: LogDeclaration,
    tenant: str,
    checkpoint: CheckpointLine | None,
    proofs: Sequence[ProofLine],
    leaves: Mapping[int, Leaf],
    key: Ed25519PublicKey,
    fail: Fail,
    *,
    policy: Policy | None = None,
    require_log: bool = False,
) -> LogReport:
    """Check one stream's log evidence: `checkpoint` and `proofs` (its tlog.ndjson lines,
    in file order) against its manifest entry `decl`, the bundle's full records of the
    stream (`leaves`, by sequence) and the service key. `policy`: also require its
    witnesses' quorum (its log lines are not used: the log key is `key` under the origin).
    `require_log`: a selected record the log does not prove is a failure."""
    stream = decl.stream
    good_origin = origin_ok(decl.origin, tenant, stream)
    if not good_origin:
        fail(
            K.LOG_ORIGIN,
            f"origin {decl.origin!r} is not <log name>/{tenant}/{stream}",
            MANIFEST,
            None,
            stream,
            None,
        )
    verified: VerifiedCheckpoint | None = None
    witnesses: tuple[str, ...] = ()
    quorum = policy is None
    unverified = "the stream's checkpoint does not verify"
    if decl.size == 0:
        unverified = "the bundle has no checkpoint of the stream's log"
        if checkpoint is not None:
            fail(
                K.LOG_CHECKPOINT,
                "a checkpoint of a stream whose manifest entry has size 0 (no checkpoint)",
                TLOG,
                checkpoint.line,
                stream,
                None,
            )
        for p in proofs:
            # A proof against no checkpoint proves nothing: a bundle claiming size 0 while
            # carrying proofs would otherwise pass --require-log with nothing proven.
            fail(
                K.INCLUSION,
                "an inclusion proof in a range whose manifest entry has no checkpoint",
                TLOG,
                p.line,
                stream,
                p.sequence,
            )
        if policy is not None:
            fail(
                K.LOG_QUORUM,
                "no checkpoint of the stream's log: the policy's witness quorum cannot be met",
                MANIFEST,
                None,
                stream,
                None,
            )
    elif checkpoint is None:
        fail(K.LOG_CHECKPOINT, "no checkpoint line for the stream", TLOG, None, stream, None)
    elif not good_origin:
        unverified = "the manifest names a log of another stream or tenant"
    else:
        verified = _checkpoint(decl, checkpoint, key, fail)
        if verified is not None and policy is not None:
            witnesses, quorum = _quorum(decl, checkpoint, key, policy, fail)
    not_proven: dict[int, str] = {}
    proven: set[int] = set()
    _proofs(decl, proofs, leaves, verified, quorum, unverified, fail, proven, not_proven)
    for seq, _ in decl.not_in_log:
        if seq not in leaves:
            fail(
                K.MALFORMED,
                "not_in_log names a sequence that is no full record of the bundle",
                MANIFEST,
                None,
                stream,
                seq,
            )
    selected = sorted(seq for seq, leaf in leaves.items() if leaf.selected)
    absent = dict(decl.not_in_log)
    if require_log:
        for seq in selected:
            if seq in absent:
                fail(
                    K.NOT_IN_LOG,
                    f"the log does not hold it (the service states: {absent[seq]}), and the "
                    "log was required",
                    TLOG,
                    None,
                    stream,
                    seq,
                )
            elif decl.size == 0:
                fail(
                    K.NOT_IN_LOG,
                    "no checkpoint of the stream's log proves it, and the log was required",
                    TLOG,
                    None,
                    stream,
                    seq,
                )
    return LogReport(
        origin=decl.origin,
        size=decl.size,
        cosigned=decl.cosigned,
        witnesses=witnesses,
        proven=tuple(seq for seq in selected if seq in proven),
        unproven=tuple((seq, not_proven[seq]) for seq in selected if seq not in proven),
    )


def _checkpoint(
    decl: LogDeclaration, cp: CheckpointLine, key: Ed25519PublicKey, fail: Fail
) -> VerifiedCheckpoint | None:
    """The checkpoint verified under the service key as the origin's log key (no
    witnesses), or None with the failure reported."""
    stream = decl.stream

    def bad(kind: ExportFailureKind, detail: str) -> None:
        fail(kind, detail, TLOG, cp.line, stream, None)

    if cp.origin != decl.origin or cp.size != decl.size:
        bad(
            K.LOG_CHECKPOINT,
            f"the line names {cp.origin!r} at size {cp.size}, the manifest "
            f"{decl.origin!r} at size {decl.size}",
        )
        return None
    try:
        note = parse_note(cp.note)
        body = parse_checkpoint(note.text)
    except NoteError as exc:
        bad(K.LOG_CHECKPOINT, f"not a checkpoint note: {exc.kind.value}: {exc.detail}")
        return None
    if body.origin != decl.origin:
        # Checked before the signature: a checkpoint of another log fails as that, even
        # when the service key signed it.
        bad(K.LOG_ORIGIN, f"a checkpoint of {body.origin!r}, not of {decl.origin!r}")
        return None
    if body.size != decl.size or body.root_hash != decl.root:
        bad(
            K.LOG_CHECKPOINT,
            f"the note's tree (size {body.size}, root {b64(body.root_hash)}) is not the "
            f"manifest's (size {decl.size}, root {b64(decl.root)})",
        )
        return None
    log = log_verifier(decl.origin, key)
    if log is None:  # origin_ok admits key names only; kept for the type
        bad(K.LOG_ORIGIN, f"{decl.origin!r} is no note key name")
        return None
    try:
        verified = verify_checkpoint(cp.note.encode("utf-8"), Policy((log,), {}, QUORUM_NONE))
    except NoteError as exc:
        bad(
            K.LOG_CHECKPOINT,
            f"not signed by the service key as log {decl.origin}: {exc.kind.value}: {exc.detail}",
        )
        return None
    if is_cosigned(note, log) != decl.cosigned:
        bad(
            K.LOG_CHECKPOINT,
            f"the manifest says cosigned: {str(decl.cosigned).lower()}, the note carries "
            + ("other signatures" if not decl.cosigned else "the log's signature alone"),
        )
    return verified


def _quorum(
    decl: LogDeclaration, cp: CheckpointLine, key: Ed25519PublicKey, policy: Policy, fail: Fail
) -> tuple[tuple[str, ...], bool]:
    """(witnesses whose cosignature verified, whether the policy's quorum is met)."""
    log = vkey_for(decl.origin, key)
    try:
        trusted = Policy((log,), policy.witnesses, policy.quorum, policy.groups)
        verified = verify_checkpoint(cp.note.encode("utf-8"), trusted)
    except NoteError as exc:
        cosigners = tuple(sorted(exc.cosigners))
        why = (
            exc.detail
            if exc.kind in (NoteFailure.QUORUM_NOT_MET, NoteFailure.BAD_COSIGNATURE)
            else f"the policy cannot be applied: {exc.detail}"
        )
        fail(K.LOG_QUORUM, f"{exc.kind.value}: {why}", TLOG, cp.line, decl.stream, None)
        return cosigners, False
    return tuple(sorted(verified.cosigners)), True


def _proofs(
    decl: LogDeclaration,
    proofs: Sequence[ProofLine],
    leaves: Mapping[int, Leaf],
    verified: VerifiedCheckpoint | None,
    quorum: bool,
    unverified: str,
    fail: Fail,
    proven: set[int],
    not_proven: dict[int, str],
) -> None:
    stream = decl.stream
    absent = dict(decl.not_in_log)
    seen: set[int] = set()
    last_index = -1
    for p in proofs:
        leaf = leaves.get(p.sequence)
        if leaf is None:
            problem = "proves no full record of the bundle (none has this stream and sequence)"
        elif p.sequence in seen:
            problem = "a second proof for the record"
        elif p.sequence in absent:
            problem = "the manifest lists the record as not in the log"
        else:
            problem = None
        if problem is not None:
            fail(K.INCLUSION, problem, TLOG, p.line, stream, p.sequence)
            continue
        seen.add(p.sequence)
        if verified is None:
            not_proven[p.sequence] = unverified
            continue
        if leaf is None or leaf.hash is None:  # leaf: never None here (problem above)
            not_proven[p.sequence] = "its content cannot be hashed"
            continue
        if not leaf.intact:
            not_proven[p.sequence] = "its content does not hash to its event.hash"
            continue
        try:
            # The leaf is the hash of the content as it is in the bundle, never the
            # record's stated event.hash: an edited record cannot be proven.
            check_inclusion(bytes.fromhex(leaf.hash), p.index, p.hashes, verified)
        except TransparencyError as exc:
            fail(
                K.INCLUSION,
                f"{exc.detail}: the record's content is not the leaf the log holds there",
                TLOG,
                p.line,
                stream,
                p.sequence,
            )
            not_proven[p.sequence] = "its inclusion proof does not verify"
            continue
        if p.index <= last_index:
            # Leaves are appended in chain order: a record proven at an earlier index than
            # a record before it is not where the chain puts it.
            fail(
                K.INCLUSION,
                f"leaf index {p.index} does not follow the previous proof's {last_index}: "
                "the log's order is not the chain's",
                TLOG,
                p.line,
                stream,
                p.sequence,
            )
            not_proven[p.sequence] = "its leaf is out of the chain's order"
            continue
        last_index = p.index
        if quorum:
            proven.add(p.sequence)
        else:
            not_proven[p.sequence] = "its checkpoint lacks the policy's witness quorum"
    for seq in sorted(leaves):
        if seq in seen:
            continue
        if seq in absent:
            not_proven[seq] = f"not in the log (the service states: {absent[seq]})"
            continue
        fail(
            K.NOT_IN_LOG,
            "no inclusion proof, and the manifest does not list the record as not in the log",
            TLOG,
            None,
            stream,
            seq,
        )
        not_proven[seq] = "no inclusion proof in the bundle"


def _is_int(value: Any) -> bool:
    return type(value) is int
