"""Retention administration: policies, legal holds, archives, runs and restores.

Every change is recorded in the log of the logs before the API answers: policy changes
with the old and new days, holds placed and released, runs (RETENTION_PURGED per day,
RETENTION_FAILED) and restores (ARCHIVE_RESTORED).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import orjson
from sqlalchemy.orm import Session, sessionmaker

from audit.auth.tokens import Principal
from audit.db.base import utcnow
from audit.errors import ConflictError, InvalidInputError, NotFoundError, UsageError
from audit.integrity.events import EventAction
from audit.integrity.pseudonym import PiiKind
from audit.models import LegalHold, RetentionArchive
from audit.query.keyrings import TenantKeyrings
from audit.retention.checkpoints import PurgedRanges
from audit.retention.classes import ActionClass, actions_of
from audit.retention.repository import RetentionRepository
from audit.retention.runner import RetentionRunner
from audit.retention.schemas import (
    ArchiveOut,
    CheckpointOut,
    HoldCreate,
    HoldOut,
    PoliciesOut,
    PolicyOut,
    RestoreOut,
    RunOut,
)
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings
from audit.store.archive import Archiver, ArchiveSettings
from audit.store.protocol import EventStore
from audit.streams.service import StreamService


def make_archiver(settings: AuditSettings, store: EventStore, servicelog: ServiceLog) -> Archiver:
    """The store's own archiver (snapshots for Elasticsearch, signed files for SQL): each
    backend knows how its days are best kept."""
    return store.archiver(ArchiveSettings.of(settings, servicelog.keys.signer))


class RetentionService:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        store: EventStore,
        servicelog: ServiceLog,
        keyrings: TenantKeyrings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if settings.retention_default_days < settings.retention_min_days:
            raise UsageError(
                "FFAUDIT_RETENTION_DEFAULT_DAYS is below FFAUDIT_RETENTION_MIN_DAYS, the floor"
            )
        self.settings = settings
        self.sessions = sessions
        self.servicelog = servicelog
        self.keyrings = keyrings
        self.streams = StreamService(sessions)
        self.archiver = make_archiver(settings, store, servicelog)
        self.purged = PurgedRanges(sessions, servicelog.keys.signer.verifier)
        self.runner = RetentionRunner(
            settings,
            sessions,
            store,
            self.archiver,
            servicelog,
            servicelog.keys.signer,
            policies=self.policies,
            clock=clock,
        )

    # -- policies ---------------------------------------------------------------------------

    def policies(self, tenant: str) -> dict[ActionClass, int]:
        """Days each class is kept: the tenant's policy, else the default."""
        with self.sessions() as session:
            set_ = RetentionRepository(session).policies(tenant)
        default = self.settings.retention_default_days
        return {cls: set_.get(cls.value, default) for cls in ActionClass}

    def view(self, tenant: str) -> PoliciesOut:
        with self.sessions() as session:
            set_ = RetentionRepository(session).policies(tenant)
        default = self.settings.retention_default_days
        return PoliciesOut(
            tenant=tenant,
            default_days=default,
            min_days=self.settings.retention_min_days,
            policies=[
                PolicyOut(
                    action_class=cls,
                    days=set_.get(cls.value, default),
                    default=cls.value not in set_,
                    actions=list(actions_of(cls)),
                )
                for cls in ActionClass
            ],
        )

    async def set_policy(
        self, who: Principal | None, tenant: str, cls: ActionClass, days: int
    ) -> PolicyOut:
        floor = self.settings.retention_min_days
        if days < floor:
            raise InvalidInputError(
                f"{days} days is below the retention floor of {floor} days "
                "(FFAUDIT_RETENTION_MIN_DAYS)"
            )
        old = await asyncio.to_thread(self._set_policy, tenant, cls, days)
        await self.servicelog.record(
            who,
            tenant,
            EventAction.RETENTION_POLICY_CHANGED,
            metadata={
                "action_class": cls.value,
                "old_days": self.settings.retention_default_days if old is None else old,
                "new_days": days,
            },
        )
        return PolicyOut(action_class=cls, days=days, default=False, actions=list(actions_of(cls)))

    def _set_policy(self, tenant: str, cls: ActionClass, days: int) -> int | None:
        with self.sessions.begin() as session:
            return RetentionRepository(session).set_policy(tenant, cls.value, days, utcnow())

    # -- legal holds ------------------------------------------------------------------------

    async def place_hold(self, who: Principal | None, tenant: str, body: HoldCreate) -> HoldOut:
        values: list[str] = []
        if body.scope == "stream" and body.stream is not None:
            self.streams.read(body.stream, tenant_id=tenant)  # NotFoundError: not the tenant's
            values = [body.stream]
        elif body.scope == "job" and body.job is not None:
            values = [body.job]
        elif body.scope == "actor":
            if body.actor is not None:
                # Under every active key: records sealed before a rotation are held too.
                values = list(self.keyrings.candidates(tenant, PiiKind.USER, body.actor))
            elif body.actor_hash is not None:
                values = [body.actor_hash]
        hold = await asyncio.to_thread(self._add_hold, tenant, body, values)
        await self.servicelog.record(
            who,
            tenant,
            EventAction.HOLD_PLACED,
            metadata={
                "hold_id": hold.id,
                "scope": hold.scope,
                "values": hold.values,
                "reason": hold.reason,
            },
        )
        return _hold_out(hold)

    def _add_hold(self, tenant: str, body: HoldCreate, values: list[str]) -> LegalHold:
        with self.sessions.begin() as session:
            return RetentionRepository(session).add_hold(
                LegalHold(
                    tenant_id=tenant,
                    scope=body.scope,
                    values=values,
                    reason=body.reason,
                    placed_at=utcnow(),
                )
            )

    async def release_hold(
        self, who: Principal | None, tenant: str, hold_id: int, reason: str
    ) -> HoldOut:
        hold = await asyncio.to_thread(self._release, tenant, hold_id, reason)
        await self.servicelog.record(
            who,
            tenant,
            EventAction.HOLD_RELEASED,
            metadata={"hold_id": hold.id, "scope": hold.scope, "reason": reason},
        )
        return _hold_out(hold)

    def _release(self, tenant: str, hold_id: int, reason: str) -> LegalHold:
        with self.sessions.begin() as session:
            hold = RetentionRepository(session).get_hold(tenant, hold_id)
            if hold is None:
                raise NotFoundError(f"no legal hold {hold_id}")
            if hold.released_at is not None:
                raise ConflictError(f"legal hold {hold_id} was released already")
            hold.released_at, hold.release_reason = utcnow(), reason
            return hold

    def holds(self, tenant: str, *, active_only: bool) -> list[HoldOut]:
        with self.sessions() as session:
            rows = RetentionRepository(session).holds(tenant, active_only=active_only)
            return [_hold_out(h) for h in rows]

    # -- runs, archives, restores -------------------------------------------------------------

    async def run(
        self, who: Principal | None, tenant: str | None, *, dry_run: bool, trigger: str = "api"
    ) -> RunOut:
        return await self.runner.run(tenant=tenant, dry_run=dry_run, trigger=trigger, who=who)

    def archives(self, tenant: str) -> list[ArchiveOut]:
        with self.sessions() as session:
            rows = RetentionRepository(session).archives(tenant)
            return [ArchiveOut.model_validate(row, from_attributes=True) for row in rows]

    def checkpoints(self, tenant: str, stream: str | None) -> list[CheckpointOut]:
        with self.sessions() as session:
            rows = RetentionRepository(session).checkpoints(tenant, stream)
            return [
                CheckpointOut(
                    stream=row.stream_id,
                    first_sequence=row.first_sequence,
                    last_sequence=row.last_sequence,
                    archive_id=row.archive_id,
                    payload=orjson.loads(row.payload),
                    signature=row.signature,
                )
                for row in rows
            ]

    async def restore(self, who: Principal | None, tenant: str, archive_id: int) -> RestoreOut:
        """Bring an archived day back for an investigation (place a legal hold first, or
        the next run purges it again)."""
        archive = await asyncio.to_thread(self._archive, tenant, archive_id)
        ours = self.archiver.kind
        if archive.kind != ours:
            raise ConflictError(
                f"archive {archive_id} is a {archive.kind}; this service's store restores "
                f"{ours.value} archives"
            )
        restored = await self.archiver.restore(archive)
        await asyncio.to_thread(self._restored, archive_id)
        await self.servicelog.record(
            who,
            tenant,
            EventAction.ARCHIVE_RESTORED,
            metadata={"archive_id": archive_id, "day": archive.day, "records": restored},
        )
        return RestoreOut(archive_id=archive_id, day=archive.day, restored=restored)

    def _archive(self, tenant: str, archive_id: int) -> RetentionArchive:
        with self.sessions() as session:
            archive = RetentionRepository(session).get_archive(tenant, archive_id)
            if archive is None:
                raise NotFoundError(f"no archive {archive_id}")
            return archive

    def _restored(self, archive_id: int) -> None:
        with self.sessions.begin() as session:
            archive = session.get(RetentionArchive, archive_id)
            if archive is not None:
                archive.restored_at = utcnow()


def _hold_out(hold: LegalHold) -> HoldOut:
    return HoldOut(
        id=hold.id,
        scope=hold.scope,
        values=list(hold.values),
        reason=hold.reason,
        placed_at=hold.placed_at,
        released_at=hold.released_at,
        release_reason=hold.release_reason,
    )
