from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow


class Alert(Base):
    """An incident for security teams. One row per incident: repeats bump `count`."""

    __tablename__ = "alerts"
    __table_args__ = (
        # At most one unresolved alert per incident, whatever replica raises it
        # (AlertRepository.raise_alert); a resolved one may be followed by a new one.
        Index(
            "uq_alerts_open_dedup_key",
            "dedup_key",
            unique=True,
            postgresql_where=text("state != 'resolved'"),
            sqlite_where=text("state != 'resolved'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(63), index=True)
    stream_id: Mapped[str | None] = mapped_column(String(256))
    rule: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))  # critical | high | medium | low
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    title: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedup_key: Mapped[str] = mapped_column(String(256), index=True)
    count: Mapped[int] = mapped_column(default=1)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    # Who acknowledged or resolved is in the log of the logs (pseudonymised), not here.
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)


class AlertRule(Base):
    """A tenant's custom threshold rule: more than `threshold` records matching `filters` per
    value of `group_by` in a window of `window_s` seconds; windows end every `step_s`."""

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63), index=True)
    name: Mapped[str] = mapped_column(String(128))
    severity: Mapped[str] = mapped_column(String(16))
    # EventQuery fields: actions, outcomes, streams, verdicts (lists) and text.
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    group_by: Mapped[str] = mapped_column(String(64))
    window_s: Mapped[int]
    step_s: Mapped[int]
    threshold: Mapped[int]
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertWatermark(Base):
    """How far a scheduled rule has been evaluated for a tenant: every window ending at or
    before `evaluated_through` was evaluated once. Advanced by compare-and-set in the
    transaction that records the window's alerts, so no window fires twice."""

    __tablename__ = "alert_watermarks"

    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    evaluated_through: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertLease(Base):
    """Which replica runs the alert scheduler, until when (renewed while it runs)."""

    __tablename__ = "alert_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
