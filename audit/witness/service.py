"""The witness: checks a submitted checkpoint against the log's keys and what it cosigned
before, records it, and cosigns it (C2SP tlog-witness, tlog-cosignature).

Every check the protocol orders is here, in its order: the origin must be a configured log
(404), a signature of one of its keys must verify and none may fail (403), the old size
may not exceed the new one (400), the old size must be the one last cosigned (409), and
the checkpoint must extend that tree (422: the empty tree has the empty root and needs no
proof, a tree of the same size the same root, a larger one a consistency proof that
verifies). The last two, and the store of the new size and root, are one compare-and-set
per origin (WitnessRepository), so nothing is cosigned that a concurrent call has already
moved past, and no size ever rolls back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from audit.errors import BusyError, ForbiddenError, NotFoundError, UsageError
from audit.integrity.keys import Signer
from audit.integrity.merkle import EMPTY_ROOT, ProofError, verify_consistency
from audit.integrity.notes import (
    SIG_ED25519,
    Checkpoint,
    CosignatureSigner,
    NoteError,
    NoteFailure,
    NoteSignature,
    NoteVerifier,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_vkey,
)
from audit.witness.repository import TreeHead, WitnessRepository
from audit.witness.schemas import (
    AddCheckpoint,
    InconsistentCheckpointError,
    MalformedRequestError,
    SizeConflictError,
)

log = logging.getLogger("audit.witness")

MAX_ORIGIN_LENGTH = 255  # witness_logs.origin
_CAS_ATTEMPTS = 3
# tlog-policy's lexical rules: fields split on spaces and tabs; no other control character.
_POLICY_FIELD_SEP = re.compile(r"[ \t]+")
_POLICY_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SKIPPED = frozenset({"witness", "group", "quorum"})
# A signature of a configured key that does not verify, or none at all: 403 (tlog-witness).
_FORBIDDEN = frozenset({NoteFailure.UNKNOWN_LOG, NoteFailure.BAD_SIGNATURE})


class WitnessService:
    """Cosigns checkpoints of `logs` (vkeys whose names are the logs' origins) with
    `cosigner`, keeping what it cosigned in the database behind `sessions`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        cosigner: CosignatureSigner,
        logs: Sequence[NoteVerifier],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._cosigner = cosigner
        self._clock = clock
        self._logs: dict[str, tuple[NoteVerifier, ...]] = {}
        for verifier in logs:
            self._logs[verifier.name] = (*self._logs.get(verifier.name, ()), verifier)

    @property
    def verifier(self) -> NoteVerifier:
        """The witness's cosignature key (what clients configure)."""
        return self._cosigner.verifier

    def add_checkpoint(self, request: AddCheckpoint) -> list[NoteSignature]:
        """The cosignature(s) of the request's checkpoint, once it is recorded as the
        newest the witness has seen of its log; raises the protocol's refusals."""
        checkpoint, text = self._open(request.note)
        origin = checkpoint.origin
        if request.old_size > checkpoint.size:
            raise MalformedRequestError(
                f"old size {request.old_size} exceeds the checkpoint's size {checkpoint.size}"
            )
        new = TreeHead(checkpoint.size, checkpoint.root_hash)
        for _ in range(_CAS_ATTEMPTS):
            if self._record(origin, request, new):
                break
            log.debug("%s: a concurrent call moved the log first; reading it again", origin)
        else:  # lost every race: someone else is advancing this log as fast as it can
            raise BusyError(f"log {origin!r} is being advanced concurrently: retry")
        return [self._cosigner.cosign(text, max(1, int(self._clock())))]

    def _open(self, note: bytes) -> tuple[Checkpoint, str]:
        """The checkpoint in `note`, once a key configured for its origin has verified it."""
        try:
            text = parse_note(note).text
            origin = parse_checkpoint(text).origin
        except NoteError as exc:
            raise MalformedRequestError(f"not a checkpoint note: {exc}") from None
        keys = self._logs.get(origin)
        if keys is None:
            raise NotFoundError(f"unknown log {origin!r}")
        try:
            checkpoint, _ = open_checkpoint(note, keys)
        except NoteError as exc:
            if exc.kind in _FORBIDDEN:
                raise ForbiddenError(f"checkpoint of {origin!r} not signed by its key") from None
            raise MalformedRequestError(f"not a checkpoint note: {exc}") from None
        return checkpoint, text

    def _record(self, origin: str, request: AddCheckpoint, new: TreeHead) -> bool:
        """Compare-and-set `origin` from the request's old size to `new`: False when a
        concurrent call changed it between the read and the write (try again)."""
        try:
            with self._sessions.begin() as session:
                repository = WitnessRepository(session)
                stored = repository.head(origin)
                current = stored.size if stored is not None else 0
                if request.old_size != current:
                    raise SizeConflictError(
                        f"old size {request.old_size} is not {current}, the size last "
                        f"cosigned for {origin!r}",
                        size=current,
                    )
                self._check_consistency(origin, stored, new, request.proof)
                if stored is None:
                    repository.first_sighting(origin, new)
                    return True
                return repository.advance(origin, stored, new)
        except IntegrityError:
            return False  # a concurrent first sighting inserted the row first

    def _check_consistency(
        self, origin: str, stored: TreeHead | None, new: TreeHead, proof: Sequence[bytes]
    ) -> None:
        """That `new` extends `stored` (None: the empty tree), as `proof` shows."""
        if new.size == 0 and new.root_hash != EMPTY_ROOT:
            self._refuse(origin, "a checkpoint of size 0 must have the empty tree's root")
        if stored is None or stored.size == 0:
            if proof:
                self._refuse(origin, "no consistency proof is due from size 0")
            return  # the empty tree is consistent with every tree
        if stored.size == new.size:
            if stored.root_hash != new.root_hash:
                self._refuse(
                    origin, f"another root at size {new.size} than the one cosigned: a fork"
                )
            if proof:
                self._refuse(origin, "no consistency proof is due between equal sizes")
            return
        try:
            verify_consistency(stored.size, new.size, proof, stored.root_hash, new.root_hash)
        except ProofError as exc:
            self._refuse(
                origin,
                f"the consistency proof from size {stored.size} to {new.size} does not "
                f"verify: {exc}",
            )

    @staticmethod
    def _refuse(origin: str, reason: str) -> NoReturn:
        # Validly signed (the note was opened first), so possibly evidence of a misbehaving
        # log: kept in the witness's own log, never cosigned.
        log.warning("refused a checkpoint of %s: %s", origin, reason)
        raise InconsistentCheckpointError(reason)


def load_cosigner(name: str | None, key_file: Path) -> CosignatureSigner:
    """The witness's cosignature signer: key name `name`, Ed25519 key from `key_file`."""
    if not name:
        raise UsageError("the witness needs a name (FFWITNESS_NAME or --name)")
    try:
        return CosignatureSigner(name, Signer.load(key_file).key)
    except NoteError as exc:
        raise UsageError(f"witness name {name!r}: {exc}") from None


def load_logs(path: Path) -> tuple[NoteVerifier, ...]:
    """The logs configured in `path`: its `log <vkey> [url]` lines (C2SP tlog-policy
    syntax). A whole policy file will do: its `witness`, `group` and `quorum` lines are
    skipped (the kernel's parse_policy demands a quorum, which a witness has no use for),
    as are comments and blank lines. Each vkey's name is its log's origin."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the logs file {path}: {exc}") from None
    logs: list[NoteVerifier] = []
    names: set[str] = set()
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{path}:{number}"
        if _POLICY_FORBIDDEN.search(line):
            raise UsageError(f"{where}: a control character")
        words = _POLICY_FIELD_SEP.split(line.strip(" \t"))
        if words == [""] or words[0].startswith("#") or words[0] in _SKIPPED:
            continue
        if words[0] != "log" or len(words) not in (2, 3):
            raise UsageError(f"{where}: expected `log <vkey> [url]`")
        try:
            verifier = parse_vkey(words[1])
        except NoteError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if verifier.sig_type != SIG_ED25519:
            raise UsageError(f"{where}: a log key is an Ed25519 note key (type 0x01)")
        if len(verifier.name.encode()) > MAX_ORIGIN_LENGTH:
            raise UsageError(f"{where}: origins are at most {MAX_ORIGIN_LENGTH} bytes")
        # One key may sign many logs (an audit service signs every stream's log with its
        # one key, under each origin); one origin has one key.
        if verifier.name in names:
            raise UsageError(f"{where}: origin {verifier.name!r} listed twice")
        names.add(verifier.name)
        logs.append(verifier)
    if not logs:
        raise UsageError(f"{path}: no `log <vkey>` line: the witness would witness nothing")
    return tuple(logs)
