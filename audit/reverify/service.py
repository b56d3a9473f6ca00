"""Continuous re-verification: the store is checked against what ingest accepted, without
anyone asking.

Ingest verifies each record once, as it arrives. A row edited, deleted or re-hashed in the
event store afterwards is found only by verifying again; this job does so on its own:

* every `reverify_tick_s`, each stream's records after its mark (the last sequence found
  intact) are verified, the chain continuing from the mark's hash (incremental);
* every `reverify_full_interval_s`, a stream is verified whole (edits to old records);
* a failure ingest did not already know of, or a stored chain that no longer ends at the
  accepted head, opens a critical `store_tampered` alert naming the records (and so fires
  the webhooks); the mark does not advance past it.

Failures ingest flagged (a gap, an unsettled fork: records stored with verdict `broken`) are
learnt once, when a pass first meets them, into the mark's baseline in the control database:
editing a verdict in the store later cannot hide a change. Records kept aside at ingest
(verdict `rejected`) are evidence, not damage, and never raise this alert.

One replica at a time does the work (a lease in the control database, as for the alert
scheduler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.kinds import RuleId
from audit.alerts.repository import AlertRepository
from audit.alerts.service import raise_event_alert
from audit.db.base import utcnow
from audit.errors import FFAuditError
from audit.integrity.verify import Failure
from audit.query.service import QueryService, StreamVerification
from audit.reverify.repository import ReverifyRepository
from audit.reverify.schemas import MarkOut
from audit.settings import AuditSettings

log = logging.getLogger("audit.reverify")
LEASE = "reverify"
_NAMED = 20  # failures an alert lists
# Records after a stream's mark from which worker processes read and verify them. This job
# runs on a replica that is also ingesting: in its own process the verification ran on
# the event loop that ingest needs, and a full pass (the soak: 50 streams of ~16k records)
# held ingest back until producers' backlog grew and the replica's memory with it. A
# process start per stream costs nothing that background work has to answer for; small
# increments stay here, where a page of them is a few milliseconds of the loop.
OFFLOAD_FROM = 2_000
# And those workers run niced: on a machine whose cores ingest and Elasticsearch already
# use, a full pass in workers at equal priority still slowed ingest (soak, 60 % load on two
# cores: backlog up to 12,491 records while the pass ran). Behind, the pass only ends later.
WORKER_NICE = 10


@dataclass(slots=True)
class ReverifyReport:
    leader: bool = True
    streams: int = 0
    full: int = 0
    records: int = 0
    tampered: list[str] = field(default_factory=list)  # "tenant/stream"
    failed: int = 0  # streams that could not be read (retried next tick)
    offloaded: int = 0  # streams verified by worker processes


class Reverifier:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        queries: QueryService,
        *,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        offload_from: int = OFFLOAD_FROM,
    ) -> None:
        self._settings = settings
        self._offload_from = offload_from
        self._sessions = sessions
        self._queries = queries
        self._clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._ttl = timedelta(seconds=settings.reverify_lease_s)

    async def run(self) -> None:
        try:
            while True:
                # Sleep first: a starting service has ingest and migrations to settle.
                await asyncio.sleep(self._settings.reverify_tick_s)
                try:
                    await self.tick()
                except Exception:  # keep going; the failure is visible in the log
                    log.exception("re-verification failed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._release)

    async def tick(self, *, full: bool = False, lease: bool = True) -> ReverifyReport:
        """One pass over every stream: incremental, or whole where due (or `full`)."""
        now = self._clock()
        if lease and not await asyncio.to_thread(self._take_lease, now):
            return ReverifyReport(leader=False)
        report = ReverifyReport()
        interval = timedelta(seconds=self._settings.reverify_full_interval_s)
        for tenant, stream, mark in await asyncio.to_thread(self._load):
            whole = full or mark is None or mark.full_at is None or now - mark.full_at >= interval
            after = None if whole or mark is None else (mark.sequence, mark.hash)
            try:
                result = await self._queries.verify_stream(
                    tenant,
                    stream,
                    after=after,
                    through_head=True,
                    parallel_from=self._offload_from,
                    worker_nice=WORKER_NICE,
                )
            except FFAuditError as exc:
                report.failed += 1
                log.warning("re-verify %s/%s: %s", tenant, stream, exc.message)
                continue
            report.streams += 1
            report.full += whole
            report.records += result.records
            report.offloaded += result.workers > 0
            tampered = await asyncio.to_thread(
                self._record, tenant, stream, result, whole=whole, now=now
            )
            if tampered:
                report.tampered.append(f"{tenant}/{stream}")
            if lease and not await asyncio.to_thread(self._take_lease, self._clock()):
                report.leader = False
                return report
        return report

    def marks(self, tenant: str) -> list[MarkOut]:
        with self._sessions() as session:
            return [
                MarkOut(
                    stream=m.stream_id,
                    verified_through=m.sequence,
                    checked_at=m.checked_at,
                    full_at=m.full_at,
                    ok=m.ok,
                )
                for m in ReverifyRepository(session).marks(tenant)
            ]

    # -- control database (worker threads) --------------------------------------------------

    def _load(self) -> list[tuple[str, str, _Mark | None]]:
        with self._sessions() as session:
            repo = ReverifyRepository(session)
            marks = {
                (m.tenant_id, m.stream_id): _Mark(m.sequence, m.hash, m.full_at)
                for m in repo.marks()
            }
            return [(t, s, marks.get((t, s))) for t, s in repo.streams()]

    def _record(
        self,
        tenant: str,
        stream: str,
        result: StreamVerification,
        *,
        whole: bool,
        now: datetime,
    ) -> bool:
        """Move the mark, learn what ingest already knew, raise the alert; True if the
        store no longer holds what ingest accepted."""
        with self._sessions.begin() as session:
            mark = ReverifyRepository(session).mark(tenant, stream)
            known = {(k, r) for k, r in mark.known}
            damage: list[Failure] = []
            evidence = set(map(id, result.evidence))
            for f in result.failures:
                if id(f) in evidence:
                    continue
                key = (f.kind.value, f.record_id)
                if key in known:
                    continue
                first_sight = (f.sequence or 0) > mark.sequence
                if first_sight and f.record_id and result.verdicts.get(f.record_id) == "broken":
                    known.add(key)  # ingest flagged this record when it arrived
                else:
                    damage.append(f)
            mark.known = sorted([k, r] for k, r in known)
            mark.checked_at = now
            if whole:
                mark.full_at = now
            tampered = bool(damage) or not result.matches_head
            mark.ok = not tampered
            if not tampered and result.stored_last_hash is not None:
                mark.sequence, mark.hash = result.stored_last_sequence, result.stored_last_hash
            if tampered:
                raise_event_alert(
                    session,
                    self._settings,
                    rule=RuleId.STORE_TAMPERED,
                    title=f"stream {stream}: the event store no longer holds what ingest "
                    f"accepted ({len(damage)} failure(s)"
                    + ("" if result.matches_head else ", the chain no longer ends at the head")
                    + ")",
                    tenant_id=tenant,
                    stream_id=stream,
                    group=stream,
                    detail=_detail(result, damage, whole=whole),
                )
                log.error(
                    "re-verify %s/%s: store tampered (%d failures)", tenant, stream, len(damage)
                )
            return tampered

    def _take_lease(self, now: datetime) -> bool:
        with self._sessions.begin() as session:
            return AlertRepository(session).take_lease(LEASE, self.holder, now=now, ttl=self._ttl)

    def _release(self) -> None:
        with self._sessions.begin() as session:
            AlertRepository(session).release_lease(LEASE, self.holder, now=self._clock())


@dataclass(frozen=True, slots=True)
class _Mark:
    sequence: int
    hash: str
    full_at: datetime | None


def _detail(result: StreamVerification, damage: list[Failure], *, whole: bool) -> dict[str, Any]:
    return {
        "failures": [
            {
                "kind": f.kind.value,
                "sequence": f.sequence,
                "record_id": f.record_id,
                "detail": f.detail,
            }
            for f in damage[:_NAMED]
        ],
        "count": len(damage),
        "matches_head": result.matches_head,
        "head_sequence": result.head_sequence,
        "stored_last_sequence": result.stored_last_sequence,
        "pass": "full" if whole else "incremental",
    }
