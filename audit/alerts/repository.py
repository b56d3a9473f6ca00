"""Every query on alerts, alert rules, the scheduler's watermarks and its lease."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from audit.db.base import utcnow
from audit.errors import BusyError
from audit.models import Alert, AlertLease, AlertRule, AlertWatermark, Tenant
from audit.webhooks.service import enqueue_deliveries

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
# The predicate of the partial unique index uq_alerts_open_dedup_key (models.alerts).
_UNRESOLVED = text("state != 'resolved'")
_RAISE_ATTEMPTS = 5


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
        # Two replicas may raise the same incident at once. The partial unique index
        # uq_alerts_open_dedup_key (one unresolved alert per dedup_key) decides which insert
        # opens the alert; the other finds the row the winner opened and counts its
        # sighting there. The select is locked, so two sightings of one open alert never
        # read one count and both write back count + 1; the second waits and re-reads.
        for _ in range(_RAISE_ATTEMPTS):
            alert = self._unresolved(dedup_key)
            if alert is not None:
                self._sighting(alert, now=now, detail=detail, suppression=suppression)
                return alert
            alert = self._open(
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
            if alert is not None:
                # Only the insert that opened the alert notifies: a rival's sighting doesn't.
                enqueue_deliveries(self.session, alert)
                return alert
            # Lost the race to another replica's insert: its row is committed now (the
            # insert waited for it), so the next select finds it, unless it was resolved
            # in between: then this sighting opens a new alert after all.
        raise BusyError(f"alert {dedup_key!r}: gave up after {_RAISE_ATTEMPTS} contended raises")

    def _unresolved(self, dedup_key: str) -> Alert | None:
        return self.session.scalars(
            select(Alert)
            .where(Alert.dedup_key == dedup_key, Alert.state != RESOLVED)
            .order_by(Alert.id.desc())
            .limit(1)
            .with_for_update()
            # Another replica may have bumped the row since this session last loaded it.
            .execution_options(populate_existing=True)
        ).first()

    def _sighting(
        self,
        alert: Alert,
        *,
        now: datetime,
        detail: dict[str, Any] | None,
        suppression: timedelta | None,
    ) -> None:
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

    def _open(self, **values: Any) -> Alert | None:
        """Insert an alert of these column values unless an unresolved alert with its
        dedup_key exists (or is being inserted by a concurrent transaction: the insert waits
        for it): the stored row, or None when another transaction's alert holds the key.

        INSERT ... ON CONFLICT DO NOTHING rather than an insert in a SAVEPOINT that is
        rolled back on IntegrityError: on SQLite the pysqlite driver only begins its
        transaction at the first INSERT/UPDATE/DELETE, so a SAVEPOINT issued before any
        write starts the transaction itself and its RELEASE commits everything, the
        caller's transaction included. The upsert aborts nothing on either backend."""
        self.session.flush()
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            statement: Any = postgresql_insert(Alert)
        elif dialect == "sqlite":
            statement = sqlite_insert(Alert)
        else:  # pragma: no cover - the control database is PostgreSQL or SQLite
            raise NotImplementedError(f"alerts on {dialect}")
        inserted = self.session.execute(
            statement.values(**values)
            .on_conflict_do_nothing(index_elements=["dedup_key"], index_where=_UNRESOLVED)
            .returning(Alert.id)
        ).scalar_one_or_none()
        if inserted is None:
            return None
        return self.session.get(Alert, inserted)

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
