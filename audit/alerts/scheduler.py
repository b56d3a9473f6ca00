"""The alert scheduler: evaluates every scheduled rule for every tenant, window by window.

Exactly once per window, across restarts and replicas:

* Windows end at aligned times (multiples of the rule's step since the epoch), so every
  evaluator agrees on what "the next window" is.
* Each rule and tenant has a watermark, the end of the last window evaluated. A window's
  alerts and the move of the watermark past it commit in one transaction, with a
  compare-and-set on the old watermark: of two evaluators of one window only one commits,
  and a crash before the commit leaves the window to be evaluated again.
* A lease in the control database lets one replica at a time do the work (the others wait;
  the compare-and-set stays the guarantee when a lease runs out mid-tick).
* A restarted service continues from the watermarks: it catches up the windows it missed,
  at most `alert_max_catchup_windows` per rule (older ones are skipped, with a warning).

A window is evaluated `alert_delay_s` after it ends, so records that arrive a little late
(network, producer buffers, Elasticsearch's refresh) are in it; later ones are missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.repository import AlertRepository
from audit.alerts.rules import (
    CUSTOM_PREFIX,
    Finding,
    WindowRule,
    builtin_window_rules,
    custom_rule,
    dedup_key,
)
from audit.db.base import utcnow
from audit.errors import FFAuditError
from audit.settings import AuditSettings
from audit.store.protocol import EventStore
from audit.store.query import EPOCH

log = logging.getLogger("audit.alerts")
LEASE = "alert-scheduler"


class _LostRace(Exception):
    pass


@dataclass(slots=True)
class TickReport:
    leader: bool = True  # False: another replica holds the lease; nothing was done
    windows: int = 0  # windows evaluated and committed
    by_rule: dict[str, int] = field(default_factory=dict)  # rule -> windows (all tenants)
    alerts: int = 0  # alerts raised or repeated
    skipped: int = 0  # windows skipped (older than the catch-up bound)
    failed: int = 0  # rule evaluations that failed (retried next tick)


def align_down(when: datetime, step: timedelta) -> datetime:
    """The latest window end at or before `when`."""
    return EPOCH + ((when - EPOCH) // step) * step


class AlertScheduler:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        store: EventStore,
        *,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._builtin: Sequence[WindowRule] = builtin_window_rules(settings)
        self._ttl = timedelta(seconds=settings.alert_lease_s)
        self._renew_at: datetime | None = None  # until then the lease is surely still ours

    async def run(self) -> None:
        """The service's loop; hands the lease back when cancelled (shutdown)."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception:  # keep evaluating; the failure is visible in the log
                    log.exception("alert evaluation failed")
                await asyncio.sleep(self._settings.alert_tick_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._release)

    async def release(self) -> None:
        await asyncio.to_thread(self._release)

    async def _hold_lease(self) -> bool:
        now = self._clock()
        if self._renew_at is not None and now < self._renew_at:
            return True
        held = await asyncio.to_thread(self._take_lease)
        # Renewed at a third of its life: it cannot run out between two renewals.
        self._renew_at = now + self._ttl / 3 if held else None
        return held

    async def tick(self, now: datetime | None = None, *, lease: bool = True) -> TickReport:
        """Evaluate every window closed by `now` (default: the clock) and not yet evaluated.
        With `lease`, only while this scheduler holds the lease."""
        now = now or self._clock()
        if lease and not await self._hold_lease():
            return TickReport(leader=False)
        tenants, custom, marks = await asyncio.to_thread(self._load)
        report = TickReport()
        for tenant in tenants:
            for rule in [*self._builtin, *custom.get(tenant, ())]:
                mark = marks.get((rule.rule, tenant))
                try:
                    await self._catch_up(rule, tenant, mark, now, report, lease=lease)
                except FFAuditError as exc:  # e.g. the store is down: next tick retries
                    report.failed += 1
                    log.warning("alert rule %s, tenant %s: %s", rule.rule, tenant, exc.message)
                if not report.leader:
                    return report
        return report

    async def _catch_up(
        self,
        rule: WindowRule,
        tenant: str,
        mark: datetime | None,
        now: datetime,
        report: TickReport,
        *,
        lease: bool,
    ) -> None:
        step = rule.step
        last = align_down(now - timedelta(seconds=self._settings.alert_delay_s), step)
        if mark is not None:
            start = mark
        elif rule.since is not None:
            start = align_down(rule.since, step)
        else:
            start = last - step  # first sight of a built-in rule: the latest window only
        floor = last - step * self._settings.alert_max_catchup_windows
        if start < floor:
            skipped = (floor - start) // step
            report.skipped += skipped
            log.warning(
                "alert rule %s, tenant %s: %d window(s) too old to catch up, skipped",
                rule.rule,
                tenant,
                skipped,
            )
            start = floor
        end = start + step
        while end <= last:
            # Checked per window: a long catch-up must not outlive the lease.
            if lease and not await self._hold_lease():
                report.leader = False
                return
            findings = await rule.evaluate(self._store, tenant, end - rule.window, end)
            committed = await asyncio.to_thread(self._commit, rule, tenant, mark, end, findings)
            if committed is None:
                return  # another evaluator took this window: it owns the rest too
            report.windows += 1
            report.by_rule[rule.rule] = report.by_rule.get(rule.rule, 0) + 1
            report.alerts += committed
            mark, end = end, end + step

    # -- control database (worker threads) --------------------------------------------------

    def _load(
        self,
    ) -> tuple[list[str], dict[str, list[WindowRule]], dict[tuple[str, str], datetime]]:
        with self._sessions() as session:
            repo = AlertRepository(session)
            custom: dict[str, list[WindowRule]] = defaultdict(list)
            for row in repo.enabled_rules():
                custom[row.tenant_id].append(custom_rule(row))
            return repo.tenants(), custom, repo.watermarks()

    def _commit(
        self,
        rule: WindowRule,
        tenant: str,
        expected: datetime | None,
        through: datetime,
        findings: list[Finding],
    ) -> int | None:
        """The window's alerts and the watermark's move, together; None if lost."""
        ranked = sorted(findings, key=lambda f: (-f.count, f.group))
        most = self._settings.alert_max_groups_per_window
        if len(ranked) > most:
            log.warning(
                "alert rule %s, tenant %s: %d groups over the threshold, alerting the %d largest",
                rule.rule,
                tenant,
                len(ranked),
                most,
            )
        suppression = timedelta(seconds=self._settings.alert_suppression_s)
        try:
            with self._sessions.begin() as session:
                repo = AlertRepository(session)
                if rule.rule.startswith(CUSTOM_PREFIX) and not self._current(repo, rule, tenant):
                    raise _LostRace
                if not repo.advance_watermark(
                    rule.rule, tenant, expected=expected, through=through
                ):
                    raise _LostRace
                for finding in ranked[:most]:
                    repo.raise_alert(
                        rule=rule.rule,
                        severity=rule.severity,
                        title=finding.title,
                        dedup_key=dedup_key(rule.rule, tenant, finding.group),
                        tenant_id=tenant,
                        stream_id=finding.stream_id,
                        detail=finding.detail,
                        at=through,
                        suppression=suppression,
                    )
        except (_LostRace, IntegrityError):
            return None
        return len(ranked[:most])

    @staticmethod
    def _current(repo: AlertRepository, rule: WindowRule, tenant: str) -> bool:
        # A custom rule changed or deleted while its window was evaluated: drop the result.
        row = repo.get_rule(tenant, int(rule.rule[len(CUSTOM_PREFIX) :]))
        return row is not None and row.enabled and row.updated_at == rule.since

    def _take_lease(self) -> bool:
        try:
            with self._sessions.begin() as session:
                return AlertRepository(session).take_lease(
                    LEASE, self.holder, now=self._clock(), ttl=self._ttl
                )
        except IntegrityError:  # another replica created the lease first
            return False

    def _release(self) -> None:
        self._renew_at = None
        with self._sessions.begin() as session:
            AlertRepository(session).release_lease(LEASE, self.holder, now=self._clock())
