"""Every query on alerts, alert rules, the scheduler's watermarks and its lease."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from audit.db.base import utcnow
from audit.models import Alert, AlertLease, AlertRule, AlertWatermark, Tenant
from audit.webhooks.service import enqueue_deliveries

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"


class AlertRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # -- alerts -----------------------------------------------------------------------------

    def raise_alert(
        self,
        *,
        rule: str,
        severity: str,
        title: str,
        dedup_key: str,
        tenant_id: str | None = None,
        stream_id: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
        suppression: timedelta | None = None,
    ) -> Alert:
        """One alert per incident, and the one place alerts are opened (and webhooks queued).

        A repeat of an unresolved alert with the same `dedup_key` bumps its count and
        last_seen and notifies nobody, unless it comes more than `suppression` after the
        alert was last seen (None: never): then it is a new occurrence, and the alert is
        re-opened and notified again. A repeat of a resolved alert opens a new one. `at` is
        when the incident was observed (default now; a window's end for scheduled rules)."""
        now = at or utcnow()
        # Locked: two replicas raising the same incident at once must not both read one
        # count and write back count + 1 (a lost sighting); the second waits and re-reads.
        alert = self.session.scalars(
            select(Alert)
            .where(Alert.dedup_key == dedup_key, Alert.state != RESOLVED)
            .order_by(Alert.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        if alert is not None:
            quiet = now - alert.last_seen
            alert.count += 1
            alert.last_seen = max(alert.last_seen, now)
            if detail:
                alert.detail = {**alert.detail, "last": detail}
            if suppression is not None and quiet > suppression:
                alert.state = OPEN
                alert.acknowledged_at = None
                alert.detail = {**alert.detail, "reopened_at": now.isoformat()}
                self.session.flush()
                enqueue_deliveries(self.session, alert)
            return alert
        alert = Alert(
            rule=rule,
            severity=severity,
            state=OPEN,
            title=title,
            dedup_key=dedup_key,
            tenant_id=tenant_id,
            stream_id=stream_id,
            detail=detail or {},
            count=1,
            first_seen=now,
            last_seen=now,
        )
        self.session.add(alert)
        self.session.flush()  # the id, for the deliveries that name it
        enqueue_deliveries(self.session, alert)
        return alert

    def list(self, *, tenant_id: str | None = None, rule: str | None = None) -> list[Alert]:
        query = select(Alert).order_by(Alert.id)
        if tenant_id is not None:
            query = query.where(Alert.tenant_id == tenant_id)
        if rule is not None:
            query = query.where(Alert.rule == rule)
        return list(self.session.scalars(query))

    def page(
        self,
        tenant_id: str,
        *,
        limit: int,
        before: int | None = None,
        states: Sequence[str] = (),
        rules: Sequence[str] = (),
        severities: Sequence[str] = (),
    ) -> builtins.list[Alert]:
        """Newest first: up to `limit` alerts with an id below `before`."""
        query = select(Alert).where(Alert.tenant_id == tenant_id)
        if before is not None:
            query = query.where(Alert.id < before)
        if states:
            query = query.where(Alert.state.in_(states))
        if rules:
            query = query.where(Alert.rule.in_(rules))
        if severities:
            query = query.where(Alert.severity.in_(severities))
        return list(self.session.scalars(query.order_by(Alert.id.desc()).limit(limit)))

    def get(self, tenant_id: str, alert_id: int) -> Alert | None:
        return self.session.scalars(
            select(Alert).where(Alert.id == alert_id, Alert.tenant_id == tenant_id)
        ).first()

    def transition(
        self, tenant_id: str, alert_id: int, *, to: str, allowed_from: Sequence[str], at: datetime
    ) -> bool:
        """Compare-and-set on the state: False when the alert is no longer in `allowed_from`."""
        values: dict[str, Any] = {"state": to}
        values["acknowledged_at" if to == ACKNOWLEDGED else "resolved_at"] = at
        result = self.session.execute(
            update(Alert)
            .where(
                Alert.id == alert_id,
                Alert.tenant_id == tenant_id,
                Alert.state.in_(allowed_from),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    # -- custom rules -----------------------------------------------------------------------

    def rules(self, tenant_id: str) -> builtins.list[AlertRule]:
        return list(
            self.session.scalars(
                select(AlertRule).where(AlertRule.tenant_id == tenant_id).order_by(AlertRule.id)
            )
        )

    def enabled_rules(self) -> builtins.list[AlertRule]:
        return list(
            self.session.scalars(
                select(AlertRule).where(AlertRule.enabled.is_(True)).order_by(AlertRule.id)
            )
        )

    def get_rule(self, tenant_id: str, rule_id: int) -> AlertRule | None:
        return self.session.scalars(
            select(AlertRule).where(AlertRule.id == rule_id, AlertRule.tenant_id == tenant_id)
        ).first()

    def add_rule(self, rule: AlertRule) -> AlertRule:
        self.session.add(rule)
        self.session.flush()
        return rule

    def delete_rule(self, rule: AlertRule) -> None:
        self.session.delete(rule)

    # -- scheduler state --------------------------------------------------------------------

    def tenants(self) -> builtins.list[str]:
        return list(self.session.scalars(select(Tenant.id).order_by(Tenant.id)))

    def watermarks(self) -> dict[tuple[str, str], datetime]:
        rows = self.session.execute(
            select(AlertWatermark.rule, AlertWatermark.tenant_id, AlertWatermark.evaluated_through)
        )
        return {(rule, tenant): through for rule, tenant, through in rows}

    def advance_watermark(
        self, rule: str, tenant_id: str, *, expected: datetime | None, through: datetime
    ) -> bool:
        """Compare-and-set: False when another evaluator moved the watermark since it was read.
        (A first watermark is an insert: a rival's raises IntegrityError at commit.)"""
        if expected is None:
            self.session.add(
                AlertWatermark(
                    rule=rule, tenant_id=tenant_id, evaluated_through=through, updated_at=utcnow()
                )
            )
            self.session.flush()
            return True
        result = self.session.execute(
            update(AlertWatermark)
            .where(
                AlertWatermark.rule == rule,
                AlertWatermark.tenant_id == tenant_id,
                AlertWatermark.evaluated_through == expected,
            )
            .values(evaluated_through=through, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def forget_watermarks(self, rule: str) -> None:
        self.session.execute(delete(AlertWatermark).where(AlertWatermark.rule == rule))

    def take_lease(self, name: str, holder: str, *, now: datetime, ttl: timedelta) -> bool:
        """Take or renew the lease unless another holder's is still running. (A first lease
        is an insert: a rival's raises IntegrityError at commit.)"""
        result = self.session.execute(
            update(AlertLease)
            .where(
                AlertLease.name == name,
                or_(AlertLease.holder == holder, AlertLease.expires_at <= now),
            )
            .values(holder=holder, expires_at=now + ttl)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return True
        if self.session.get(AlertLease, name) is not None:
            return False
        self.session.add(AlertLease(name=name, holder=holder, expires_at=now + ttl))
        self.session.flush()
        return True

    def release_lease(self, name: str, holder: str, *, now: datetime) -> None:
        self.session.execute(
            update(AlertLease)
            .where(AlertLease.name == name, AlertLease.holder == holder)
            .values(expires_at=now)
            .execution_options(synchronize_session=False)
        )
