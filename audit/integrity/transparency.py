"""Offline checks of the transparency log: a record's C2SP tlog-proof against a policy,
and the consistency of every checkpoint a verifier has seen (its state file).

One implementation for `ffaudit verify-proof`, `ffaudit verify-export` and the tests. The
leaf of a record is its event.hash (32 raw bytes, docs/record-spec.md §14): the verifier
recomputes it from the record's content, so a proof for an edited record fails.

The state file is what makes a log that rewrites history visible: it keeps, per origin,
the largest checkpoint seen. A new checkpoint of the same size must have the same root; a
larger one needs a consistency proof from the kept one (then replaces it); a smaller one
needs a consistency proof to the kept one. Sizes kept never shrink.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from audit.common.files import write_atomic
from audit.integrity.errors import FFAuditError
from audit.integrity.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.integrity.notes import (
    NoteError,
    Policy,
    TlogProof,
    VerifiedCheckpoint,
    parse_tlog_proof,
    verify_checkpoint,
)

STATE_FORMAT = "ffaudit.tlog-state.v1"


class TransparencyFailure(StrEnum):
    LEAF_MISMATCH = "leaf_mismatch"  # the record does not hash to the leaf proven
    NOT_INCLUDED = "not_included"  # the inclusion proof does not reach the root
    CHECKPOINT = "checkpoint"  # signature, cosignature or quorum (detail says which)
    FORKED = "forked"  # same size, another root: the log showed two histories
    INCONSISTENT = "inconsistent"  # a consistency proof that does not connect the two
    CONSISTENCY_UNPROVEN = "consistency_unproven"  # sizes differ and no proof was given
    WRONG_ORIGIN = "wrong_origin"
    MALFORMED = "malformed"


class TransparencyError(FFAuditError):
    exit_code = 1
    http_status = 422

    def __init__(self, kind: TransparencyFailure, detail: str, *, origin: str | None = None):
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail
        self.origin = origin


@dataclass(frozen=True, slots=True)
class Seen:
    """The largest checkpoint a verifier has accepted for one origin."""

    size: int
    root: bytes
    note: str


@dataclass(slots=True)
class State:
    logs: dict[str, Seen]

    @classmethod
    def empty(cls) -> State:
        return cls({})

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls.empty()
        try:
            doc = orjson.loads(path.read_bytes())
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"format is not {STATE_FORMAT}")
            logs = {
                origin: Seen(int(v["size"]), base64.b64decode(v["root"], validate=True), v["note"])
                for origin, v in doc["logs"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise TransparencyError(
                TransparencyFailure.MALFORMED, f"state file {path}: {exc}"
            ) from None
        return cls(logs)

    def save(self, path: Path) -> None:
        doc: dict[str, Any] = {
            "format": STATE_FORMAT,
            "logs": {
                origin: {
                    "size": seen.size,
                    "root": base64.b64encode(seen.root).decode(),
                    "note": seen.note,
                }
                for origin, seen in sorted(self.logs.items())
            },
        }
        write_atomic(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n", mode=0o600)


def open_checkpoint(data: bytes, policy: Policy, origin: str | None = None) -> VerifiedCheckpoint:
    """The checkpoint note, verified under `policy` (log signature, cosignatures, quorum)."""
    try:
        verified = verify_checkpoint(data, policy)
    except NoteError as exc:
        raise TransparencyError(
            TransparencyFailure.CHECKPOINT, f"{exc.kind.value}: {exc.detail}", origin=origin
        ) from None
    if origin is not None and verified.checkpoint.origin != origin:
        raise TransparencyError(
            TransparencyFailure.WRONG_ORIGIN,
            f"checkpoint of {verified.checkpoint.origin!r}, expected {origin!r}",
            origin=origin,
        )
    return verified


def check_inclusion(
    entry: bytes, index: int, hashes: Sequence[bytes], checkpoint: VerifiedCheckpoint
) -> None:
    """`entry` (a record's 32-byte event.hash) is leaf `index` of the checkpointed tree."""
    cp = checkpoint.checkpoint
    try:
        verify_inclusion(leaf_hash(entry), index, cp.size, hashes, cp.root_hash)
    except ProofError as exc:
        raise TransparencyError(
            TransparencyFailure.NOT_INCLUDED,
            f"leaf {index} of {cp.origin} at size {cp.size}: {exc.kind.value} ({exc.detail})",
            origin=cp.origin,
        ) from None


def verify_proof(
    data: bytes, entry: bytes, policy: Policy, *, origin: str | None = None
) -> tuple[TlogProof, VerifiedCheckpoint]:
    """A C2SP tlog-proof for the record whose event.hash is `entry`."""
    try:
        proof = parse_tlog_proof(data)
    except NoteError as exc:
        raise TransparencyError(TransparencyFailure.MALFORMED, exc.detail) from None
    checkpoint = open_checkpoint(proof.checkpoint, policy, origin)
    check_inclusion(entry, proof.index, proof.hashes, checkpoint)
    return proof, checkpoint


def observe(
    state: State,
    checkpoint: VerifiedCheckpoint,
    consistency: Mapping[tuple[int, int], Sequence[bytes]] | None = None,
) -> None:
    """Fold a verified checkpoint into `state`, proving it consistent with what was seen
    before. `consistency` maps (old size, new size) to a consistency proof."""
    cp = checkpoint.checkpoint
    seen = state.logs.get(cp.origin)
    note = checkpoint.note.encode().decode()
    if seen is None:
        state.logs[cp.origin] = Seen(cp.size, cp.root_hash, note)
        return
    if cp.size == seen.size:
        if cp.root_hash != seen.root:
            raise TransparencyError(
                TransparencyFailure.FORKED,
                f"{cp.origin} at size {cp.size}: root {_b64(cp.root_hash)} but "
                f"{_b64(seen.root)} was seen before",
                origin=cp.origin,
            )
        return
    old, new = sorted(((seen.size, seen.root), (cp.size, cp.root_hash)))
    proof = (consistency or {}).get((old[0], new[0]))
    if proof is None:
        raise TransparencyError(
            TransparencyFailure.CONSISTENCY_UNPROVEN,
            f"{cp.origin}: size {seen.size} was seen before, this checkpoint has {cp.size}; "
            f"no consistency proof {old[0]} -> {new[0]} was given",
            origin=cp.origin,
        )
    try:
        verify_consistency(old[0], new[0], proof, old[1], new[1])
    except ProofError as exc:
        raise TransparencyError(
            TransparencyFailure.INCONSISTENT,
            f"{cp.origin}: sizes {old[0]} -> {new[0]}: {exc.kind.value} ({exc.detail})",
            origin=cp.origin,
        ) from None
    if cp.size > seen.size:
        state.logs[cp.origin] = Seen(cp.size, cp.root_hash, note)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
