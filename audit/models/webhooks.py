"""Webhook endpoints of tenants and the delivery log (the outbox of alert notifications)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow


class Webhook(Base):
    """A tenant's receiver of alerts. Deleting one only marks it: its delivery log stays."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex, not guessable
    tenant_id: Mapped[str] = mapped_column(String(63), index=True)
    url: Mapped[str] = mapped_column(Text)
    min_severity: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    # Signing needs the secret itself (a hash of it could not sign): kept as a Fernet token
    # under the service's secret key (audit.secretbox), decrypted only to sign a delivery.
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One notification to one webhook, with its attempts; written in the transaction that
    opens the alert, so it survives crashes and restarts until it is delivered or failed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    alert_id: Mapped[int | None] = mapped_column(default=None)  # None for test deliveries
    event_id: Mapped[str] = mapped_column(String(36), unique=True)  # receivers dedupe on it
    kind: Mapped[str] = mapped_column(String(32))  # alert.opened | webhook.test
    # The exact body bytes (UTF-8 JSON), frozen at enqueue: every attempt sends the same.
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    # Lease of the replica sending the current attempt: nobody else claims the row before
    # `claimed_until`, and only the holder of `claim_token` may record the attempt's outcome.
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    last_status_code: Mapped[int | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
