"""Transparency logs over the streams: appending at ingest, signing checkpoints, proofs.

One RFC 6962 tree per (tenant, stream). Leaves are the accepted (`ok`) records' event.hash
values (32 raw bytes) in sequence order, appended by ingest in the transaction that
advances the chain head (`append_accepted`), so the tree and the head never disagree and
two replicas cannot fork it. No PII is in the tree: erasure and retention never touch it.

Checkpoints are C2SP signed notes by the service key under the log's origin
`<tlog_name>/<tenant>/<stream>`, signed every `tlog_checkpoint_every` leaves or
`tlog_checkpoint_interval_s` seconds (audit.tlog.checkpointer runs that) and on demand.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from audit.errors import ConflictError, InvalidInputError, NotFoundError
from audit.integrity.merkle import (
    TILE_WIDTH,
    consistency_plan,
    entry_bundle,
    inclusion_plan,
    materialize,
    needed,
    tile_nodes,
    tile_width,
)
from audit.integrity.notes import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    TlogProof,
    sign_checkpoint,
)
from audit.models.tlog import TlogCheckpoint, TlogLog
from audit.settings import AuditSettings
from audit.tlog.repository import TlogRepository

log = logging.getLogger("audit.tlog")


def origin_of(settings: AuditSettings, tenant: str, stream: str) -> str:
    return f"{settings.tlog_name}/{tenant}/{stream}"


def append_accepted(
    session: Session,
    settings: AuditSettings,
    tenant: str,
    stream: str,
    accepted: Sequence[tuple[int, str]],
) -> bool:
    """Append the records ingest accepted, (sequence, event.hash hex) in sequence order,
    inside the caller's transaction. False: another writer moved the log (a lost race; the
    caller re-plans). A first append creates the log; two replicas creating it at once
    collide on its unique key, which the caller also treats as a lost race."""
    if not accepted:
        return True
    repo = TlogRepository(session)
    row = repo.log(tenant, stream) or repo.create_log(
        tenant, stream, origin_of(settings, tenant, stream)
    )
    return repo.append(row, [(sequence, bytes.fromhex(digest)) for sequence, digest in accepted])


def note_purged(session: Session, tenant: str, stream: str, first: int, last: int) -> None:
    """Retention purged the records `first`..`last` of a stream: stop serving their leaves'
    proofs and entries by raising the log's minimum index past them, but only where every
    leaf below is purged too (a held record earlier in the stream keeps its proof). The
    tree itself is untouched: other records' proofs need only node hashes."""
    repo = TlogRepository(session)
    row = repo.log(tenant, stream)
    if row is None:
        return
    lowest = repo.leaf(row.id, row.min_index)
    if lowest is None or lowest.sequence < first:
        return
    repo.raise_min_index(row.id, repo.last_leaf_before(row.id, last + 1))


@dataclass(frozen=True, slots=True)
class Inclusion:
    sequence: int
    index: int
    size: int
    entry: bytes
    hashes: list[bytes]
    checkpoint: str  # the note at `size`

    def tlog_proof(self) -> bytes:
        return TlogProof(
            index=self.index, hashes=tuple(self.hashes), checkpoint=self.checkpoint.encode()
        ).encode()


@dataclass(frozen=True, slots=True)
class Consistency:
    old_size: int
    new_size: int
    hashes: list[bytes]
    checkpoint: str | None


class TlogService:
    def __init__(
        self, settings: AuditSettings, sessions: sessionmaker[Session], key: Ed25519PrivateKey
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._key = key

    # -- keys --------------------------------------------------------------------------------

    def signer(self, origin: str) -> NoteSigner:
        return NoteSigner(origin, self._key)

    def verifier(self, tenant: str, stream: str) -> NoteVerifier:
        return self.signer(origin_of(self.settings, tenant, stream)).verifier

    # -- signing -----------------------------------------------------------------------------

    def sign_due(self, now: datetime | None = None) -> list[tuple[int, int]]:
        """Sign a checkpoint for every log with `tlog_checkpoint_every` unsigned leaves or
        an unsigned leaf older than `tlog_checkpoint_interval_s`; (log id, size) signed."""
        now = now or datetime.now(UTC)
        interval = timedelta(seconds=self.settings.tlog_checkpoint_interval_s)
        with self._sessions() as session:
            repo = TlogRepository(session)
            due = []
            for row, signed, _ in repo.due():
                if row.size - signed >= self.settings.tlog_checkpoint_every:
                    due.append(row.id)
                    continue
                oldest = repo.oldest_unsigned_leaf(row.id, signed)
                if oldest is None or now - oldest >= interval:
                    due.append(row.id)
        done = []
        for log_id in due:
            size = self._sign(log_id)
            if size is not None:
                done.append((log_id, size))
        return done

    def sign_now(self, tenant: str, stream: str) -> TlogCheckpoint:
        with self._sessions() as session:
            row = self._log(TlogRepository(session), tenant, stream)
            log_id = row.id
        self._sign(log_id)
        with self._sessions() as session:
            latest = TlogRepository(session).latest_checkpoint(log_id)
            if latest is None:
                raise NotFoundError("the log has no leaves to sign yet")
            session.expunge(latest)
            return latest

    def _sign(self, log_id: int) -> int | None:
        """Sign the log at its current size; None when that size is signed already (by
        this or another replica) or the log is empty."""
        try:
            with self._sessions.begin() as session:
                repo = TlogRepository(session)
                row = session.get(TlogLog, log_id)
                if row is None or row.size == 0 or repo.checkpoint(log_id, row.size):
                    return None
                checkpoint = Checkpoint(row.origin, row.size, bytes(row.root_hash))
                note = sign_checkpoint(checkpoint, self.signer(row.origin))
                repo.add_checkpoint(log_id, row.size, bytes(row.root_hash), note.encode().decode())
                return row.size
        except IntegrityError:
            return None  # another replica signed this size first: the same bytes

    # -- reads -------------------------------------------------------------------------------

    def info(
        self, tenant: str
    ) -> list[tuple[TlogLog, TlogCheckpoint | None, TlogCheckpoint | None]]:
        with self._sessions() as session:
            repo = TlogRepository(session)
            out = []
            for row in repo.logs(tenant):
                signed = repo.latest_checkpoint(row.id)
                cosigned = repo.latest_checkpoint(row.id, cosigned=True)
                # The newest checkpoint may be the newest cosigned one too: one object.
                for obj in {id(o): o for o in (row, signed, cosigned) if o is not None}.values():
                    session.expunge(obj)
                out.append((row, signed, cosigned))
            return out

    def checkpoint(self, tenant: str, stream: str, *, cosigned: bool | None = None) -> str:
        """The newest checkpoint note: cosigned when witnesses are configured (or asked
        for), else the newest signed one."""
        want = self.settings.tlog_policy_file is not None if cosigned is None else cosigned
        with self._sessions() as session:
            repo = TlogRepository(session)
            row = self._log(repo, tenant, stream)
            latest = repo.latest_checkpoint(row.id, cosigned=want)
            if latest is None:
                raise NotFoundError(
                    "no cosigned checkpoint yet" if want else "no signed checkpoint yet"
                )
            return _note(latest)

    def inclusion(
        self,
        tenant: str,
        stream: str,
        *,
        sequence: int | None = None,
        index: int | None = None,
        size: int | None = None,
        event_hash: str | None = None,
    ) -> Inclusion:
        """An inclusion proof for one leaf, named by its record's sequence or by its index,
        against the checkpoint at `size` (default: the newest one that covers it, cosigned
        when witnesses are configured). `event_hash` (hex), when given, must be the leaf's."""
        with self._sessions() as session:
            repo = TlogRepository(session)
            row = self._log(repo, tenant, stream)
            entry = bytes.fromhex(event_hash) if event_hash is not None else None
            leaf = (
                repo.leaf_at_sequence(row.id, sequence, entry)
                if sequence is not None
                else repo.leaf(row.id, index if index is not None else -1)
            )
            if leaf is None or (entry is not None and leaf.entry != entry):
                raise NotFoundError("no such leaf: the record is not in the stream's log")
            if leaf.index < row.min_index:
                raise NotFoundError("the record was purged: its leaf is no longer served")
            checkpoint = self._covering(repo, row, leaf.index, size)
            plan = inclusion_plan(leaf.index, checkpoint.size)
            hashes = materialize(plan, repo.nodes(row.id, needed(plan)))
            return Inclusion(
                leaf.sequence,
                leaf.index,
                checkpoint.size,
                bytes(leaf.entry),
                hashes,
                _note(checkpoint),
            )

    def consistency(self, tenant: str, stream: str, old_size: int, new_size: int) -> Consistency:
        with self._sessions() as session:
            repo = TlogRepository(session)
            row = self._log(repo, tenant, stream)
            if not 0 <= old_size <= new_size <= row.size:
                raise InvalidInputError(
                    f"need 0 <= old <= new <= {row.size} (the log's size); "
                    f"got {old_size}, {new_size}"
                )
            plan = consistency_plan(old_size, new_size)
            hashes = materialize(plan, repo.nodes(row.id, needed(plan)))
            at = repo.checkpoint(row.id, new_size)
            return Consistency(old_size, new_size, hashes, _note(at) if at else None)

    def consistency_by_origin(self, origin_id: int, old_size: int, new_size: int) -> list[bytes]:
        with self._sessions() as session:
            repo = TlogRepository(session)
            plan = consistency_plan(old_size, new_size)
            return materialize(plan, repo.nodes(origin_id, needed(plan)))

    def tile(self, tenant: str, stream: str, level: int, index: int, width: int | None) -> bytes:
        with self._sessions() as session:
            repo = TlogRepository(session)
            row = self._log(repo, tenant, stream)
            have = tile_width(level, index, row.size)
            want = width if width is not None else TILE_WIDTH
            if have < want:
                raise NotFoundError("the tree has no such tile yet")
            ids = tile_nodes(level, index, want)
            held = repo.nodes(row.id, ids)
            return b"".join(held[n] for n in ids)

    def entries(self, tenant: str, stream: str, index: int, width: int | None) -> bytes:
        want = width if width is not None else TILE_WIDTH
        begin = index * TILE_WIDTH
        with self._sessions() as session:
            repo = TlogRepository(session)
            row = self._log(repo, tenant, stream)
            if begin + want > row.size:
                raise NotFoundError("the tree has no such entry bundle yet")
            if begin < row.min_index:
                raise NotFoundError("entries of purged records are no longer served")
            return entry_bundle(repo.entries(row.id, begin, begin + want))

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _log(repo: TlogRepository, tenant: str, stream: str) -> TlogLog:
        row = repo.log(tenant, stream)
        if row is None:
            raise NotFoundError(f"stream {stream!r} has no transparency log (no accepted record)")
        return row

    def _covering(
        self, repo: TlogRepository, row: TlogLog, index: int, size: int | None
    ) -> TlogCheckpoint:
        if size is not None:
            checkpoint = repo.checkpoint(row.id, size)
            if checkpoint is None:
                raise NotFoundError(f"no checkpoint was signed at size {size}")
            if index >= size:
                raise ConflictError(f"leaf {index} is not in the tree of size {size}")
            return checkpoint
        cosigned = self.settings.tlog_policy_file is not None
        checkpoint = repo.latest_checkpoint(row.id, cosigned=cosigned)
        if checkpoint is None or checkpoint.size <= index:
            raise ConflictError(
                "the record is not covered by a "
                + ("cosigned" if cosigned else "signed")
                + " checkpoint yet: retry in a few seconds"
            )
        return checkpoint


def _note(checkpoint: TlogCheckpoint) -> str:
    return checkpoint.cosigned_note or checkpoint.note


def b64(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]
