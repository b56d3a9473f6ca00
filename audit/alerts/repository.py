"""Every query on alerts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.db.base import utcnow
from audit.models import Alert


class AlertRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

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
    ) -> Alert:
        """One open alert per incident: a repeat of an open one bumps its count."""
        alert = self.session.scalars(
            select(Alert).where(Alert.dedup_key == dedup_key, Alert.state != "resolved").limit(1)
        ).first()
        now = utcnow()
        if alert is not None:
            alert.count += 1
            alert.last_seen = now
            if detail:
                alert.detail = {**alert.detail, "last": detail}
            return alert
        alert = Alert(
            rule=rule,
            severity=severity,
            title=title,
            dedup_key=dedup_key,
            tenant_id=tenant_id,
            stream_id=stream_id,
            detail=detail or {},
            first_seen=now,
            last_seen=now,
        )
        self.session.add(alert)
        return alert

    def list(self, *, tenant_id: str | None = None, rule: str | None = None) -> list[Alert]:
        query = select(Alert).order_by(Alert.id)
        if tenant_id is not None:
            query = query.where(Alert.tenant_id == tenant_id)
        if rule is not None:
            query = query.where(Alert.rule == rule)
        return list(self.session.scalars(query))
