"""Every query on retention policies, legal holds, runs, the run lease, archives and
retention checkpoints."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from audit.models import (
    LegalHold,
    RetentionArchive,
    RetentionCheckpoint,
    RetentionLease,
    RetentionPolicy,
    RetentionRun,
    Tenant,
)
from audit.streams.repository import StreamRepository

LEASE = "retention"


class RetentionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def tenants(self) -> list[str]:
        return list(self.session.scalars(select(Tenant.id).order_by(Tenant.id)))

    # -- policies ---------------------------------------------------------------------------

    def policies(self, tenant: str) -> dict[str, int]:
        rows = self.session.scalars(
            select(RetentionPolicy).where(RetentionPolicy.tenant_id == tenant)
        )
        return {row.action_class: row.days for row in rows}

    def set_policy(self, tenant: str, action_class: str, days: int, now: datetime) -> int | None:
        """Sets the class's days; returns the previous policy's (None: it was the default)."""
        row = self.session.get(RetentionPolicy, (tenant, action_class))
        if row is None:
            StreamRepository(self.session).ensure_tenant(tenant)
            self.session.add(
                RetentionPolicy(
                    tenant_id=tenant, action_class=action_class, days=days, updated_at=now
                )
            )
            return None
        old = row.days
        row.days, row.updated_at = days, now
        return old

    # -- legal holds ------------------------------------------------------------------------

    def add_hold(self, hold: LegalHold) -> LegalHold:
        StreamRepository(self.session).ensure_tenant(hold.tenant_id)
        self.session.add(hold)
        self.session.flush()  # its id goes into the log of the logs
        return hold

    def get_hold(self, tenant: str, hold_id: int) -> LegalHold | None:
        hold = self.session.get(LegalHold, hold_id)
        return hold if hold is not None and hold.tenant_id == tenant else None

    def holds(self, tenant: str, *, active_only: bool) -> list[LegalHold]:
        query = select(LegalHold).where(LegalHold.tenant_id == tenant).order_by(LegalHold.id)
        if active_only:
            query = query.where(LegalHold.released_at.is_(None))
        return list(self.session.scalars(query))

    # -- the run lease ----------------------------------------------------------------------

    def take_lease(self, holder: str, now: datetime, ttl_s: float) -> bool:
        """Compare-and-set: free or expired (or already ours) becomes ours until now + ttl."""
        if self.session.get(RetentionLease, LEASE) is None:
            # Migration 0004 creates the row; a database built otherwise gets it here.
            self.session.add(RetentionLease(name=LEASE, expires_at=now))
            self.session.flush()
        result = self.session.execute(
            update(RetentionLease)
            .where(
                RetentionLease.name == LEASE,
                or_(RetentionLease.expires_at <= now, RetentionLease.holder == holder),
            )
            .values(holder=holder, expires_at=now + timedelta(seconds=ttl_s))
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def drop_lease(self, holder: str, now: datetime, *, finished: bool) -> None:
        values: dict[str, object] = {"holder": None, "expires_at": now}
        if finished:
            values["last_finished_at"] = now
        self.session.execute(
            update(RetentionLease)
            .where(RetentionLease.name == LEASE, RetentionLease.holder == holder)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    def last_finished(self) -> datetime | None:
        lease = self.session.get(RetentionLease, LEASE)
        return lease.last_finished_at if lease is not None else None

    # -- runs -------------------------------------------------------------------------------

    def add_run(self, run: RetentionRun) -> None:
        self.session.add(run)

    def get_run(self, run_id: str) -> RetentionRun | None:
        return self.session.get(RetentionRun, run_id)

    # -- archives and checkpoints -----------------------------------------------------------

    def add_archive(self, archive: RetentionArchive) -> RetentionArchive:
        self.session.add(archive)
        self.session.flush()  # checkpoints name it
        return archive

    def get_archive(self, tenant: str, archive_id: int) -> RetentionArchive | None:
        archive = self.session.get(RetentionArchive, archive_id)
        return archive if archive is not None and archive.tenant_id == tenant else None

    def archives(self, tenant: str) -> list[RetentionArchive]:
        query = (
            select(RetentionArchive)
            .where(RetentionArchive.tenant_id == tenant)
            .order_by(RetentionArchive.id)
        )
        return list(self.session.scalars(query))

    def same_checkpoint(
        self, tenant: str, stream: str, first: int, last: int
    ) -> RetentionCheckpoint | None:
        return self.session.scalars(
            select(RetentionCheckpoint).where(
                RetentionCheckpoint.tenant_id == tenant,
                RetentionCheckpoint.stream_id == stream,
                RetentionCheckpoint.first_sequence == first,
                RetentionCheckpoint.last_sequence == last,
            )
        ).first()

    def add_checkpoint(self, checkpoint: RetentionCheckpoint) -> None:
        self.session.add(checkpoint)

    def checkpoints(self, tenant: str, stream: str | None = None) -> list[RetentionCheckpoint]:
        query = (
            select(RetentionCheckpoint)
            .where(RetentionCheckpoint.tenant_id == tenant)
            .order_by(RetentionCheckpoint.stream_id, RetentionCheckpoint.first_sequence)
        )
        if stream is not None:
            query = query.where(RetentionCheckpoint.stream_id == stream)
        return list(self.session.scalars(query))
