"""Alerts for security teams: raising event-driven alerts, the alert workflow (open ->
acknowledged -> resolved) and custom threshold rules. Every change people make is recorded
in the log of the logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.kinds import JsonValue, PlannedAlert, RuleId
from audit.alerts.repository import ACKNOWLEDGED, OPEN, RESOLVED, AlertRepository
from audit.alerts.rules import BUILTIN_RULES, CUSTOM_PREFIX, dedup_key
from audit.alerts.schemas import (
    AlertOut,
    AlertPageOut,
    BuiltinRuleOut,
    RuleIn,
    RuleOut,
    RulesOut,
)
from audit.auth.tokens import Principal
from audit.db.base import utcnow
from audit.errors import ConflictError, InvalidInputError, NotFoundError
from audit.integrity.events import EventAction, Outcome
from audit.models import Alert, AlertRule
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings

log = logging.getLogger(__name__)

_CURSOR_MAX = 2**31 - 1
# Target state -> the states it may be reached from.
_TRANSITIONS = {ACKNOWLEDGED: (OPEN,), RESOLVED: (OPEN, ACKNOWLEDGED)}


def raise_event_alert(
    session: Session,
    settings: AuditSettings,
    *,
    rule: RuleId,
    title: str,
    tenant_id: str | None,
    stream_id: str | None,
    group: str,
    detail: Mapping[str, JsonValue] | None = None,
) -> Alert:
    """An event-driven built-in rule fired (ingest, retention), in the caller's transaction:
    severity from the catalogue, deduplicated on rule + tenant + group."""
    spec = BUILTIN_RULES[rule]
    return AlertRepository(session).raise_alert(
        rule=rule,
        severity=spec.severity.value,
        title=title,
        dedup_key=dedup_key(rule, tenant_id, group),
        tenant_id=tenant_id,
        stream_id=stream_id,
        detail=dict(detail) if detail is not None else None,
        suppression=timedelta(seconds=settings.alert_suppression_s),
    )


def raise_planned_alert(
    session: Session,
    settings: AuditSettings,
    *,
    tenant_id: str,
    stream_id: str,
    planned: PlannedAlert,
) -> Alert:
    """An alert the ingest planner asked for (audit.ingest.planner), raised as it was
    planned: its rule and group say which incident it is."""
    return raise_event_alert(
        session,
        settings,
        rule=planned.rule,
        title=planned.title,
        tenant_id=tenant_id,
        stream_id=stream_id,
        group=planned.group,
        detail=planned.detail,
    )


class AlertService:
    def __init__(
        self, settings: AuditSettings, sessions: sessionmaker[Session], servicelog: ServiceLog
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._servicelog = servicelog

    # -- alerts -----------------------------------------------------------------------------

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        cursor: str | None = None,
        states: Sequence[str] = (),
        rules: Sequence[str] = (),
        severities: Sequence[str] = (),
    ) -> AlertPageOut:
        before = _decode_cursor(cursor)

        def read() -> list[Alert]:
            with self._sessions() as session:
                return AlertRepository(session).page(
                    tenant,
                    limit=limit + 1,
                    before=before,
                    states=states,
                    rules=rules,
                    severities=severities,
                )

        found = await asyncio.to_thread(read)
        page = found[:limit]
        more = len(found) > limit
        return AlertPageOut(
            alerts=[AlertOut.of(a) for a in page],
            next_cursor=str(page[-1].id) if more and page else None,
        )

    async def inbox(
        self,
        tenant: str,
        *,
        limit: int,
        cursor: str | None = None,
        states: Sequence[str] = (),
        severities: Sequence[str] = (),
        streams: Sequence[str] = (),
    ) -> tuple[AlertPageOut, dict[str, int]]:
        """A page as `list` gives it, narrowed to `streams` too (the console's inbox), and
        how many alerts of each state the same severity and stream filters hold."""
        before = _decode_cursor(cursor)

        def read() -> tuple[list[Alert], dict[str, int]]:
            where = [Alert.tenant_id == tenant]
            if severities:
                where.append(Alert.severity.in_(severities))
            if streams:
                where.append(Alert.stream_id.in_(streams))
            with self._sessions() as session:
                counts = {
                    str(state): int(n)
                    for state, n in session.execute(
                        select(Alert.state, func.count()).where(*where).group_by(Alert.state)
                    )
                }
                query = select(Alert).where(*where)
                if states:
                    query = query.where(Alert.state.in_(states))
                if before is not None:
                    query = query.where(Alert.id < before)
                rows = list(session.scalars(query.order_by(Alert.id.desc()).limit(limit + 1)))
            return rows, counts

        found, counts = await asyncio.to_thread(read)
        page = found[:limit]
        more = len(found) > limit
        out = AlertPageOut(
            alerts=[AlertOut.of(a) for a in page],
            next_cursor=str(page[-1].id) if more and page else None,
        )
        return out, {state: counts.get(state, 0) for state in (OPEN, ACKNOWLEDGED, RESOLVED)}

    async def get(self, tenant: str, alert_id: int) -> AlertOut:
        return AlertOut.of(await asyncio.to_thread(self._get, tenant, alert_id))

    def _get(self, tenant: str, alert_id: int) -> Alert:
        with self._sessions() as session:
            alert = AlertRepository(session).get(tenant, alert_id)
        if alert is None:
            raise NotFoundError(f"no alert {alert_id}")
        return alert

    async def transition(
        self,
        who: Principal | None,
        tenant: str,
        alert_id: int,
        to: str,
        *,
        client_ip: str | None = None,
        reason: str | None = None,
    ) -> AlertOut:
        """open -> acknowledged, open|acknowledged -> resolved; anything else is a 409.

        Evidence first: the transition is checked, recorded in the log of the logs, and only
        then committed, so no alert changes state without its record (a log that cannot be
        written is a 503 and changes nothing). The record is therefore of an attempt: if
        the commit then fails (someone else moved the alert in between, or the database
        went away), a second record with outcome failure says so, as far as it can."""
        allowed = _TRANSITIONS[to]
        alert = await asyncio.to_thread(self._get, tenant, alert_id)
        if alert.state not in allowed:
            raise ConflictError(f"alert {alert_id} is {alert.state}: it cannot become {to}")
        action = (
            EventAction.ALERT_ACKNOWLEDGED if to == ACKNOWLEDGED else EventAction.ALERT_RESOLVED
        )
        metadata: dict[str, Any] = {
            "alert_id": alert.id,
            "rule": alert.rule,
            "severity": alert.severity,
            "from": alert.state,
        }
        if reason is not None:
            metadata["reason"] = reason
        await self._servicelog.record(who, tenant, action, metadata=metadata, client_ip=client_ip)
        try:
            changed = await asyncio.to_thread(self._transition, tenant, alert_id, to)
        except Exception as exc:
            await self._record_failure(who, tenant, action, metadata, exc, client_ip)
            raise
        return AlertOut.of(changed)

    def _transition(self, tenant: str, alert_id: int, to: str) -> Alert:
        allowed = _TRANSITIONS[to]
        with self._sessions.begin() as session:
            repo = AlertRepository(session)
            # The compare-and-set settles a race between two people acting at once.
            if not repo.transition(tenant, alert_id, to=to, allowed_from=allowed, at=utcnow()):
                current = repo.get(tenant, alert_id)
                if current is None:
                    raise NotFoundError(f"no alert {alert_id}")
                raise ConflictError(f"alert {alert_id} is {current.state}: it cannot become {to}")
            alert = repo.get(tenant, alert_id)
            assert alert is not None
            return alert

    async def _record_failure(
        self,
        who: Principal | None,
        tenant: str,
        action: EventAction,
        metadata: dict[str, Any],
        exc: Exception,
        client_ip: str | None,
    ) -> None:
        """The change just recorded was not committed: say so (best effort; the caller
        answers with the original error either way)."""
        try:
            await self._servicelog.record(
                who,
                tenant,
                action,
                outcome=Outcome.FAILURE,
                metadata={**metadata, "error": f"{type(exc).__name__}: {exc}"[:500]},
                client_ip=client_ip,
            )
        except Exception:
            log.exception("could not record that %s (tenant %s) failed", action, tenant)

    # -- custom rules -----------------------------------------------------------------------

    async def rules(self, tenant: str) -> RulesOut:
        def read() -> list[AlertRule]:
            with self._sessions() as session:
                return AlertRepository(session).rules(tenant)

        rows = await asyncio.to_thread(read)
        return RulesOut(
            builtin=[
                BuiltinRuleOut(
                    rule=r.id.value,
                    severity=r.severity.value,
                    source=r.source.value,
                    description=r.description,
                )
                for r in BUILTIN_RULES.values()
            ],
            custom=[_out(row) for row in rows],
        )

    async def rule(self, tenant: str, rule_id: int) -> RuleOut:
        def read() -> AlertRule:
            with self._sessions() as session:
                return _existing_rule(AlertRepository(session), tenant, rule_id)

        return _out(await asyncio.to_thread(read))

    async def create_rule(
        self, who: Principal | None, tenant: str, body: RuleIn, *, client_ip: str | None = None
    ) -> RuleOut:
        """The one change recorded after it is committed: the record names the rule's id,
        which only the insert assigns. A record that cannot be written deletes the rule
        again (a 503); only a crash between the commit and the record leaves a rule without
        one."""

        def write() -> AlertRule:
            with self._sessions.begin() as session:
                repo = AlertRepository(session)
                if len(repo.rules(tenant)) >= self._settings.alert_max_rules_per_tenant:
                    raise ConflictError(
                        f"at most {self._settings.alert_max_rules_per_tenant} rules per tenant"
                    )
                now = utcnow()
                row = AlertRule(tenant_id=tenant, created_at=now, **_columns(body), updated_at=now)
                return repo.add_rule(row)

        def undo(rule_id: int) -> None:
            with self._sessions.begin() as session:
                repo = AlertRepository(session)
                row = repo.get_rule(tenant, rule_id)
                if row is not None:
                    repo.forget_watermarks(f"{CUSTOM_PREFIX}{row.id}")
                    repo.delete_rule(row)

        row = await asyncio.to_thread(write)
        try:
            await self._servicelog.record(
                who,
                tenant,
                EventAction.ALERT_RULE_CHANGED,
                metadata=_change(row.id, "created", _columns(body)),
                client_ip=client_ip,
            )
        except BaseException:
            try:
                await asyncio.to_thread(undo, row.id)
            except Exception:
                log.exception(
                    "alert rule %s of %s created but neither recorded nor undone", row.id, tenant
                )
            raise
        return _out(row)

    async def update_rule(
        self,
        who: Principal | None,
        tenant: str,
        rule_id: int,
        body: RuleIn,
        *,
        client_ip: str | None = None,
    ) -> RuleOut:
        """Recorded first, committed after (as transition)."""
        await asyncio.to_thread(self._rule, tenant, rule_id)  # 404 before any record
        columns = _columns(body)
        metadata = _change(rule_id, "updated", columns)

        def write() -> AlertRule:
            with self._sessions.begin() as session:
                repo = AlertRepository(session)
                row = _existing_rule(repo, tenant, rule_id)
                for name, value in columns.items():
                    setattr(row, name, value)
                row.updated_at = utcnow()
                # Windows change shape: the rule starts again from now (rules.custom_rule).
                repo.forget_watermarks(f"{CUSTOM_PREFIX}{row.id}")
                return row

        row = await self._record_then(who, tenant, metadata, write, client_ip)
        return _out(row)

    async def delete_rule(
        self, who: Principal | None, tenant: str, rule_id: int, *, client_ip: str | None = None
    ) -> None:
        """Recorded first, committed after (as transition)."""
        existing = await asyncio.to_thread(self._rule, tenant, rule_id)
        metadata = _change(rule_id, "deleted", _row_columns(existing))

        def write() -> AlertRule:
            with self._sessions.begin() as session:
                repo = AlertRepository(session)
                row = _existing_rule(repo, tenant, rule_id)
                repo.forget_watermarks(f"{CUSTOM_PREFIX}{row.id}")
                repo.delete_rule(row)
                return row

        await self._record_then(who, tenant, metadata, write, client_ip)

    def _rule(self, tenant: str, rule_id: int) -> AlertRule:
        with self._sessions() as session:
            return _existing_rule(AlertRepository(session), tenant, rule_id)

    async def _record_then(
        self,
        who: Principal | None,
        tenant: str,
        metadata: dict[str, Any],
        write: Callable[[], AlertRule],
        client_ip: str | None,
    ) -> AlertRule:
        """Record the rule change, then commit it; a failed commit is recorded as such."""
        action = EventAction.ALERT_RULE_CHANGED
        await self._servicelog.record(who, tenant, action, metadata=metadata, client_ip=client_ip)
        try:
            return await asyncio.to_thread(write)
        except Exception as exc:
            await self._record_failure(who, tenant, action, metadata, exc, client_ip)
            raise


def _change(rule_id: int, change: str, columns: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "change": change,
        "rule_id": rule_id,
        "name": columns["name"],
        "group_by": columns["group_by"],
        "window_s": columns["window_s"],
        "step_s": columns["step_s"],
        "threshold": columns["threshold"],
        "enabled": columns["enabled"],
    }


def _row_columns(row: AlertRule) -> dict[str, Any]:
    return {
        "name": row.name,
        "group_by": row.group_by,
        "window_s": row.window_s,
        "step_s": row.step_s,
        "threshold": row.threshold,
        "enabled": row.enabled,
    }


def _existing_rule(repo: AlertRepository, tenant: str, rule_id: int) -> AlertRule:
    row = repo.get_rule(tenant, rule_id)
    if row is None:
        raise NotFoundError(f"no alert rule {rule_id}")
    return row


def _columns(body: RuleIn) -> dict[str, Any]:
    return {
        "name": body.name,
        "severity": body.severity,
        "filters": body.filter.stored(),
        "group_by": body.group_by,
        "window_s": body.window_s,
        "step_s": body.step_s or body.window_s,
        "threshold": body.threshold,
        "enabled": body.enabled,
    }


def _out(row: AlertRule) -> RuleOut:
    return RuleOut.of(row, f"{CUSTOM_PREFIX}{row.id}")


def _decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 10):
        raise InvalidInputError("malformed cursor")
    if not 0 < int(cursor) <= _CURSOR_MAX:
        raise InvalidInputError("malformed cursor")
    return int(cursor)
