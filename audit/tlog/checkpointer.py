"""The background loop that signs due checkpoints and collects witness cosignatures.

Every replica may run it: signing is idempotent per (log, size) (the checkpoint's primary
key), and a witness refuses a size it has passed (409), after which the loop resubmits
from the size the witness reports. A witness that is down only delays cosigning: ingest
never waits for this loop, and an uncosigned checkpoint is resubmitted on the next tick.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from audit.integrity.errors import FFAuditError, UsageError
from audit.integrity.notes import (
    Note,
    NoteSignature,
    Policy,
    parse_note,
    parse_policy,
    verify_checkpoint,
)
from audit.settings import AuditSettings
from audit.tlog.repository import TlogRepository
from audit.tlog.service import TlogService
from audit.witness.client import WitnessClient, WitnessOutcome

log = logging.getLogger("audit.tlog")


@dataclass(frozen=True, slots=True)
class Witnessing:
    """The witnesses the service asks to cosign, and the quorum its cosigned checkpoints
    must meet (the C2SP tlog-policy of `tlog_policy_file`)."""

    policy: Policy
    clients: tuple[WitnessClient, ...]


@dataclass(slots=True)
class _Submission:
    origin: str
    log_id: int
    size: int
    note: Note
    cosignatures: dict[str, NoteSignature] = field(default_factory=dict)


class Checkpointer:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        tlog: TlogService,
        witnessing: Witnessing | None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._tlog = tlog
        self._witnessing = witnessing
        # What each witness last told us it holds, per origin: the old size of the next
        # submission (a 409 corrects it, so a restart or another replica costs one retry).
        self._sizes: dict[tuple[str, str], int] = {}

    async def run(self) -> None:
        tick = min(self.settings.tlog_checkpoint_interval_s / 4, 0.25)
        while True:
            try:
                await self.tick()
            except Exception:  # keep signing; the failure is visible in the log
                log.exception("transparency-log checkpoint tick failed")
            await asyncio.sleep(tick)

    async def tick(self) -> None:
        await asyncio.to_thread(self._tlog.sign_due)
        if self._witnessing is not None:
            await self.cosign_pending()

    async def cosign_pending(self) -> int:
        """Submit each log's newest uncosigned checkpoint to the witnesses; returns how
        many reached the quorum."""
        if self._witnessing is None:
            return 0
        pending = await asyncio.to_thread(self._pending)
        done = 0
        for submission in pending:
            if await self._cosign(self._witnessing, submission):
                done += 1
        return done

    def _pending(self) -> list[_Submission]:
        with self._sessions() as session:
            repo = TlogRepository(session)
            out = []
            for row in repo.all_logs():
                for checkpoint in repo.uncosigned(row.id):
                    out.append(
                        _Submission(
                            row.origin, row.id, checkpoint.size, parse_note(checkpoint.note)
                        )
                    )
            return out

    async def _cosign(self, witnessing: Witnessing, sub: _Submission) -> bool:
        results = await asyncio.gather(
            *(self._submit(client, sub) for client in witnessing.clients)
        )
        for name, signatures in results:
            for signature in signatures:
                sub.cosignatures[name] = signature
        cosigned = Note(sub.note.text, (*sub.note.signatures, *sub.cosignatures.values()))
        data = cosigned.encode()
        # Every log is signed by the one service key under its own origin, and a policy may
        # not list one key twice: the policy gives the witnesses and quorum, the log key is
        # this log's.
        policy = replace(
            witnessing.policy, logs=(self._tlog.signer(sub.origin).verifier,), log_urls={}
        )
        try:
            verify_checkpoint(data, policy)
        except FFAuditError as exc:
            log.info("%s size %d: not cosigned yet (%s)", sub.origin, sub.size, exc)
            return False
        await asyncio.to_thread(self._store, sub, data.decode())
        return True

    async def _submit(
        self, client: WitnessClient, sub: _Submission
    ) -> tuple[str, tuple[NoteSignature, ...]]:
        key = (client.name, sub.origin)
        for _ in range(2):  # once more after a 409 names the witness's size
            old = min(self._sizes.get(key, 0), sub.size)
            proof = await asyncio.to_thread(
                self._tlog.consistency_by_origin, sub.log_id, old, sub.size
            )
            reply = await client.add_checkpoint(old, proof, sub.note.encode())
            if reply.outcome == WitnessOutcome.COSIGNED:
                self._sizes[key] = sub.size
                return client.name, reply.signatures
            if reply.outcome == WitnessOutcome.CONFLICT and reply.size is not None:
                if reply.size > sub.size:
                    # The witness has seen a newer checkpoint (another replica's): this
                    # one will not be cosigned by it; a later one will.
                    self._sizes[key] = reply.size
                    break
                self._sizes[key] = reply.size
                continue
            log.warning(
                "witness %s refused %s size %d: %s %s",
                client.name,
                sub.origin,
                sub.size,
                reply.outcome,
                reply.detail,
            )
            break
        return client.name, ()

    def _store(self, sub: _Submission, note: str) -> None:
        with self._sessions.begin() as session:
            TlogRepository(session).set_cosigned(sub.log_id, sub.size, note, datetime.now(UTC))


def load_witnessing(settings: AuditSettings) -> Witnessing | None:
    """The witnesses of `tlog_policy_file` that have a URL, with its quorum; None when no
    policy is configured (checkpoints are then published signed but uncosigned)."""
    if settings.tlog_policy_file is None:
        return None
    try:
        text = settings.tlog_policy_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"tlog policy {settings.tlog_policy_file}: {exc}") from exc
    policy = parse_policy(text)
    clients = tuple(
        WitnessClient(name, url, policy.witnesses[name], timeout_s=settings.tlog_witness_timeout_s)
        for name, url in policy.witness_urls.items()
    )
    if not clients:
        raise UsageError(f"tlog policy {settings.tlog_policy_file}: no witness has a URL")
    return Witnessing(policy, clients)
