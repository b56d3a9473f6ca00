"""Retention runs: plan, archive, sign retention checkpoints, then delete, day by day.

Order per purged day, each step durable before the next: the archive (file fsynced, or the
snapshot confirmed SUCCESS); the archive row and the signed retention checkpoints committed
to the control database; the store's records of the day deleted, only if exactly the
archived number is there; the RETENTION_PURGED record in the log of the logs. A crash at
any point leaves either the records or their archive and checkpoints, never neither: a
checkpoint whose records are still stored is ignored by verification, and the next run
archives the day again.

One run at a time across replicas: a lease row taken by compare-and-set and renewed after
each day; scheduled runs are spaced by the last finished run of any replica, so a restart
does not run again early.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.kinds import RuleId
from audit.alerts.service import raise_event_alert
from audit.auth.tokens import Principal
from audit.db.base import utcnow
from audit.errors import BusyError, IntegrityError
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Signer
from audit.models import LegalHold, RetentionArchive, RetentionCheckpoint, RetentionRun
from audit.retention import checkpoints
from audit.retention.classes import ActionClass
from audit.retention.planner import DayPlan, plan_days
from audit.retention.repository import RetentionRepository
from audit.retention.schemas import DayOut, RunOut, TenantRunOut
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings
from audit.store.archive import Archiver, DayArchive, StreamRun
from audit.store.protocol import EventStore
from audit.tlog.service import note_purged

log = logging.getLogger("audit.retention")
SYSTEM_ACTOR = "ffaudit-retention"  # who the log of the logs names for scheduled runs


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    now: datetime
    dry_run: bool
    who: Principal | None


def _holder() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class RetentionRunner:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        store: EventStore,
        archiver: Archiver,
        servicelog: ServiceLog,
        signer: Signer,
        *,
        policies: Callable[[str], dict[ActionClass, int]],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.archiver = archiver
        self.servicelog = servicelog
        self.signer = signer
        self.policies = policies
        self.clock = clock
        self.holder = _holder()

    # -- scheduling -------------------------------------------------------------------------

    async def loop(self) -> None:
        """The service's scheduled runs (FFAUDIT_RETENTION_INTERVAL_S; 0: never started)."""
        interval = self.settings.retention_interval_s
        while True:
            await asyncio.sleep(min(interval, 60.0))
            try:
                await self.tick()
            except Exception:  # keep scheduling; the failure is in the log and an alert
                log.exception("scheduled retention run failed")

    async def tick(self) -> RunOut | None:
        """Run if no replica finished a run within the interval and none is running."""
        last = await asyncio.to_thread(self._last_finished)
        due = last is None or (self.clock() - last).total_seconds() >= (
            self.settings.retention_interval_s
        )
        if not due:
            return None
        try:
            return await self.run(trigger="schedule")
        except BusyError:
            return None  # another replica is running it

    def _last_finished(self) -> datetime | None:
        with self.sessions() as session:
            return RetentionRepository(session).last_finished()

    def _lease(self, take: bool, *, finished: bool = False) -> bool:
        with self.sessions.begin() as session:
            repo = RetentionRepository(session)
            if take:
                return repo.take_lease(self.holder, self.clock(), self.settings.retention_lease_s)
            repo.drop_lease(self.holder, self.clock(), finished=finished)
            return True

    async def _renew(self) -> None:
        if not await asyncio.to_thread(self._lease, True):
            raise BusyError("the retention lease was lost (a run took longer than its lease)")

    # -- one run ----------------------------------------------------------------------------

    async def run(
        self,
        *,
        tenant: str | None = None,
        dry_run: bool = False,
        trigger: str = "api",
        who: Principal | None = None,
    ) -> RunOut:
        """Every tenant (or one); BusyError when another run holds the lease. A dry run
        plans only: it changes nothing and needs no lease."""
        now = self.clock()
        ctx = RunContext(f"{now:%Y%m%dt%H%M%S}z-{secrets.token_hex(4)}", now, dry_run, who)
        if not dry_run and not await asyncio.to_thread(self._lease, True):
            raise BusyError("another retention run is in progress: retry later")
        try:
            row = RetentionRun(
                id=ctx.run_id,
                tenant_id=tenant,
                trigger=trigger,
                dry_run=dry_run,
                holder=self.holder,
                status="running",
                started_at=now,
            )
            await asyncio.to_thread(self._save_run, row)
            tenants = [tenant] if tenant is not None else await asyncio.to_thread(self._tenants)
            reports = []
            for name in tenants:
                try:
                    reports.append(await self._run_tenant(name, ctx))
                except Exception as exc:  # one tenant's failure does not stop the others
                    log.exception("retention run %s failed for tenant %s", ctx.run_id, name)
                    error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                    reports.append(TenantRunOut(tenant=name, days=[], error=error))
                    await self._failed(name, ctx, error)
            out = RunOut(
                run_id=ctx.run_id,
                dry_run=dry_run,
                status="failed" if any(r.error for r in reports) else "succeeded",
                tenants=reports,
            )
            row.status, row.finished_at = out.status, self.clock()
            row.summary = out.model_dump(mode="json")
            await asyncio.to_thread(self._save_run, row)
            return out
        finally:
            if not dry_run:
                await asyncio.to_thread(self._lease, False, finished=True)

    def _save_run(self, row: RetentionRun) -> None:
        with self.sessions.begin() as session:
            session.merge(row)

    def _tenants(self) -> list[str]:
        with self.sessions() as session:
            return RetentionRepository(session).tenants()

    def _holds(self, tenant: str) -> list[LegalHold]:
        with self.sessions() as session:
            return RetentionRepository(session).holds(tenant, active_only=True)

    async def _run_tenant(self, tenant: str, ctx: RunContext) -> TenantRunOut:
        holds = await asyncio.to_thread(self._holds, tenant)
        policies = await asyncio.to_thread(self.policies, tenant)
        plans = await plan_days(self.store, tenant, policies, holds, ctx.now)
        report = TenantRunOut(tenant=tenant, days=[_day_out(p) for p in plans])
        due = [p for p in plans if p.purgeable]
        if ctx.dry_run or not due:
            return report
        await self._renew()  # a long plan must not let the lease lapse before any change
        known = {h.id for h in holds}
        by_day = {d.day: d for d in report.days}
        for archived in await self.archiver.archive(tenant, [p.day for p in due], ctx.run_id):
            # A hold placed while this run archived still stops the delete.
            late = [h for h in await asyncio.to_thread(self._holds, tenant) if h.id not in known]
            if late and any(
                p.holds
                for p in await plan_days(self.store, tenant, policies, late, ctx.now)
                if p.day == archived.day
            ):
                by_day[archived.day].purgeable = False
                continue
            archive_id = await asyncio.to_thread(self._commit_archive, tenant, archived, ctx)
            await self.store.delete_day(tenant, archived.day, expected=archived.records)
            await asyncio.to_thread(self._purged, archive_id)
            day = by_day[archived.day]
            day.purged, day.archive_id, day.streams = True, archive_id, archived.per_stream
            report.purged_records += archived.records
            await self.servicelog.record(
                ctx.who or _system(tenant),
                tenant,
                EventAction.RETENTION_PURGED,
                metadata={
                    "run_id": ctx.run_id,
                    "day": archived.day.isoformat(),
                    "records": archived.records,
                    "archive_id": archive_id,
                    "streams": [
                        {"stream": stream, "records": count}
                        for stream, count in sorted(archived.per_stream.items())
                    ],
                    "ranges": [
                        {"stream": r.stream, "first": r.first, "last": r.last}
                        for r in archived.runs
                    ],
                },
            )
            await self._renew()
        return report

    def _commit_archive(self, tenant: str, archived: DayArchive, ctx: RunContext) -> int:
        """The archive row and its signed retention checkpoints, in one transaction."""
        stamp = ctx.now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self.sessions.begin() as session:
            repo = RetentionRepository(session)
            archive = repo.add_archive(
                RetentionArchive(
                    run_id=ctx.run_id,
                    tenant_id=tenant,
                    day=archived.day.isoformat(),
                    kind=archived.kind.value,
                    location=archived.location,
                    index_name=archived.index_name,
                    records=archived.records,
                    sha256=archived.sha256,
                    created_at=ctx.now,
                )
            )
            ref: dict[str, object] = {
                "id": archive.id,
                "kind": archived.kind.value,
                "location": archived.location,
            }
            if archived.sha256 is not None:
                ref["sha256"] = archived.sha256
            for run in archived.runs:
                note_purged(session, tenant, run.stream, run.first, run.last)
                existing = repo.same_checkpoint(tenant, run.stream, run.first, run.last)
                if existing is not None:
                    _same_run(existing, tenant, run)
                    continue  # purged before (then restored): the old checkpoint stands
                body = checkpoints.payload(
                    tenant,
                    run,
                    day=archived.day.isoformat(),
                    archive=ref,
                    purged_at=stamp,
                    signer=self.signer.verifier,
                )
                text, signature = checkpoints.sign(self.signer, body)
                repo.add_checkpoint(
                    RetentionCheckpoint(
                        tenant_id=tenant,
                        stream_id=run.stream,
                        first_sequence=run.first,
                        last_sequence=run.last,
                        archive_id=archive.id,
                        payload=text,
                        signature=signature,
                        signer=self.signer.verifier.fingerprint,
                        created_at=ctx.now,
                    )
                )
            return archive.id

    def _purged(self, archive_id: int) -> None:
        with self.sessions.begin() as session:
            archive = session.get(RetentionArchive, archive_id)
            if archive is not None:
                archive.purged_at = self.clock()

    async def _failed(self, tenant: str, ctx: RunContext, error: str) -> None:
        """RETENTION_FAILED in the log of the logs, and an alert for the security team."""
        await asyncio.to_thread(self._alert, tenant, ctx.run_id, error)
        try:
            await self.servicelog.record(
                ctx.who or _system(tenant),
                tenant,
                EventAction.RETENTION_FAILED,
                outcome=Outcome.FAILURE,
                metadata={"run_id": ctx.run_id, "error": error[:500]},
            )
        except Exception:  # the store may be what failed; the alert is already raised
            log.exception("could not record the failed retention run %s", ctx.run_id)

    def _alert(self, tenant: str, run_id: str, error: str) -> None:
        with self.sessions.begin() as session:
            raise_event_alert(
                session,
                self.settings,
                rule=RuleId.RETENTION_FAILED,
                title=f"retention run failed for tenant {tenant}",
                tenant_id=tenant,
                stream_id=None,
                group="run",
                detail={"run_id": run_id, "error": error[:500]},
            )


def _system(tenant: str) -> Principal:
    return Principal(subject=SYSTEM_ACTOR, tenant=tenant, roles=frozenset(), amr=frozenset())


def _same_run(existing: RetentionCheckpoint, tenant: str, run: StreamRun) -> None:
    old = orjson.loads(existing.payload)
    if (
        existing.tenant_id != tenant
        or old.get("first_prev") != run.first_prev
        or old.get("last_hash") != run.last_hash
    ):
        raise IntegrityError(
            f"stream {run.stream!r} sequences {run.first}..{run.last} were purged before with "
            "other boundary hashes: the stored records changed since"
        )


def _day_out(plan: DayPlan) -> DayOut:
    return DayOut(
        day=plan.day,
        records=plan.records,
        classes=plan.classes,
        keep_days=plan.keep_days,
        expires_at=plan.expires_at,
        holds=plan.holds,
        purgeable=plan.purgeable,
    )
