"""The background loop that signs due checkpoints and collects witness cosignatures.

Every replica may run it: signing is idempotent per (log, size) (the checkpoint's primary
key), and a witness refuses a size it has passed (409), after which the loop resubmits
from the size the witness reports. A witness that is down only delays cosigning: ingest
never waits for this loop, and an uncosigned checkpoint is resubmitted later.

A witness that refuses an origin (it does not know the log, or does not accept its
checkpoints) or does not answer is asked again for that origin only after a backoff that
doubles per failure, from `BACKOFF_FIRST_S` to `BACKOFF_CAP_S`, with jitter so replicas
and origins spread their retries. A refused origin's newer checkpoint is submitted at once
(a new size may be accepted where the old was not); a witness that did not answer waits
out its backoff whatever the size, so one that is down is not hammered. While a checkpoint
awaits its quorum, a witness that has cosigned it is not asked again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from audit.integrity.errors import FFAuditError, UsageError
from audit.integrity.notes import (
    Note,
    NoteError,
    NoteSignature,
    Policy,
    parse_note,
    parse_policy,
    verify_checkpoint,
)
from audit.settings import AuditSettings
from audit.tlog.repository import TlogRepository
from audit.tlog.service import TlogService
from audit.witness.client import WitnessClient, WitnessOutcome, WitnessReply

log = logging.getLogger("audit.tlog")

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 300.0
# How often the sizes witnesses reported are pruned to the logs that still exist.
_PRUNE_EVERY_S = 60.0


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
    # Kept across ticks while the checkpoint waits for the quorum: a witness that has
    # cosigned it is not asked again.
    cosignatures: dict[str, NoteSignature] = field(default_factory=dict)
    checked: bool = False  # verified against the policy with these cosignatures


@dataclass(frozen=True, slots=True)
class _Backoff:
    """A witness refused an origin's checkpoint of `size`, or did not answer, `failures`
    times in a row: it is not asked again for that origin before `until` (clock time)."""

    size: int
    outcome: WitnessOutcome
    failures: int
    until: float

    def waiting(self, size: int, now: float) -> bool:
        if now >= self.until:
            return False
        # A newer checkpoint may be accepted where the old one was refused; a witness that
        # did not answer is no likelier to answer for it.
        return size == self.size or self.outcome == WitnessOutcome.UNREACHABLE


class Checkpointer:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        tlog: TlogService,
        witnessing: Witnessing | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._tlog = tlog
        self._witnessing = witnessing
        self._clock = clock
        # Spreads retries only; nothing secret depends on it.
        self._jitter = jitter or random.Random()  # noqa: S311
        # What each witness last told us it holds, per (witness, origin): the old size of
        # the next submission (a 409 corrects it, so a restart or another replica costs one
        # retry). Pruned to the existing logs every _PRUNE_EVERY_S.
        self._sizes: dict[tuple[str, str], int] = {}
        self._pruned_at: float | None = None
        # Per (witness, origin) that failed; only origins with a checkpoint to submit.
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        # Per origin, its newest uncosigned checkpoint and the cosignatures it has so far.
        self._submissions: dict[str, _Submission] = {}

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
        now = self._clock()
        with self._sessions() as session:
            repo = TlogRepository(session)
            heads = repo.uncosigned_heads()
            origins = None
            if self._pruned_at is None or now - self._pruned_at >= _PRUNE_EVERY_S:
                origins = repo.origins()
                self._pruned_at = now
        if origins is not None:
            self._sizes = {k: v for k, v in self._sizes.items() if k[1] in origins}
        pending = []
        for log_id, origin, size, note in heads:
            sub = self._submissions.get(origin)
            if sub is None or (sub.log_id, sub.size) != (log_id, size):
                sub = _Submission(origin, log_id, size, parse_note(note))
            pending.append(sub)
        self._submissions = {sub.origin: sub for sub in pending}
        # An origin with nothing to submit needs no backoff: its next checkpoint is new.
        self._backoff = {k: v for k, v in self._backoff.items() if k[1] in self._submissions}
        return pending

    async def _cosign(self, witnessing: Witnessing, sub: _Submission) -> bool:
        results = await asyncio.gather(
            *(
                self._submit(client, sub)
                for client in witnessing.clients
                if client.name not in sub.cosignatures
            )
        )
        fresh = False
        for name, signatures in results:
            for signature in signatures:
                sub.cosignatures[name] = signature
                fresh = True
        if sub.checked and not fresh:
            return False
        sub.checked = True
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
            log.debug("%s size %d: not cosigned yet (%s)", sub.origin, sub.size, exc)
            return False
        await asyncio.to_thread(self._store, sub, data.decode())
        return True

    async def _submit(
        self, client: WitnessClient, sub: _Submission
    ) -> tuple[str, tuple[NoteSignature, ...]]:
        key = (client.name, sub.origin)
        held = self._backoff.get(key)
        if held is not None and held.waiting(sub.size, self._clock()):
            return client.name, ()
        for _ in range(2):  # once more after a 409 names the witness's size
            old = min(self._sizes.get(key, 0), sub.size)
            proof = await asyncio.to_thread(
                self._tlog.consistency_by_origin, sub.log_id, old, sub.size
            )
            reply = await client.add_checkpoint(old, proof, sub.note.encode())
            if reply.outcome == WitnessOutcome.COSIGNED:
                self._sizes[key] = sub.size
                self._answered(key)
                return client.name, reply.signatures
            if reply.outcome == WitnessOutcome.CONFLICT and reply.size is not None:
                # Not a failure: the witness knows the log and said where it stands.
                self._answered(key)
                self._sizes[key] = reply.size
                if reply.size > sub.size:
                    # The witness has seen a newer checkpoint (another replica's): this
                    # one will not be cosigned by it; a later one will.
                    break
                continue
            self._failed(key, sub, reply)
            break
        return client.name, ()

    def _failed(self, key: tuple[str, str], sub: _Submission, reply: WitnessReply) -> None:
        held = self._backoff.get(key)
        failures = 1 if held is None else held.failures + 1
        # The exponent stops growing once the cap is reached (no float overflow).
        delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(failures - 1, 32))
        delay *= self._jitter.uniform(0.5, 1.0)
        self._backoff[key] = _Backoff(sub.size, reply.outcome, failures, self._clock() + delay)
        # One warning per transition into a failure state, not one per retry.
        report = log.warning if held is None or held.outcome != reply.outcome else log.debug
        report(
            "witness %s did not cosign %s size %d (%s, attempt %d, next try in %.0f s): %s",
            key[0],
            sub.origin,
            sub.size,
            reply.outcome,
            failures,
            delay,
            reply.detail,
        )

    def _answered(self, key: tuple[str, str]) -> None:
        held = self._backoff.pop(key, None)
        if held is not None:
            log.info(
                "witness %s answers for %s again after %d failed attempts",
                key[0],
                key[1],
                held.failures,
            )

    def _store(self, sub: _Submission, note: str) -> None:
        with self._sessions.begin() as session:
            TlogRepository(session).set_cosigned(sub.log_id, sub.size, note, datetime.now(UTC))


def load_witnessing(settings: AuditSettings) -> Witnessing | None:
    """The witnesses of `tlog_policy_file` that have a URL, with its quorum; None when no
    policy is configured (checkpoints are then published signed but uncosigned)."""
    if settings.tlog_policy_file is None:
        return None
    try:
        policy = parse_policy(settings.tlog_policy_file.read_bytes())
    except OSError as exc:
        raise UsageError(f"tlog policy {settings.tlog_policy_file}: {exc}") from exc
    except NoteError as exc:  # a configuration error, not a failed verification (exit 1)
        raise UsageError(
            f"tlog policy {settings.tlog_policy_file}: not a C2SP tlog-policy: {exc.detail}"
        ) from exc
    clients = tuple(
        WitnessClient(name, url, policy.witnesses[name], timeout_s=settings.tlog_witness_timeout_s)
        for name, url in policy.witness_urls.items()
    )
    if not clients:
        raise UsageError(f"tlog policy {settings.tlog_policy_file}: no witness has a URL")
    return Witnessing(policy, clients)
