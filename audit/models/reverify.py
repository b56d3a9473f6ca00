from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base

HASH = String(64)


class ReverifyMark(Base):
    """How far the re-verifier has found a stream's stored chain intact, and the failures
    ingest already knew of (a gap, an unsettled fork): only new ones mean the store changed.

    Kept in the control database, not next to the records: whoever edits the event store
    cannot also move this mark or its baseline."""

    __tablename__ = "reverify_marks"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sequence: Mapped[int] = mapped_column(default=0)  # verified through
    hash: Mapped[str] = mapped_column(HASH, default="0" * 64)
    checked_at: Mapped[datetime | None] = mapped_column(default=None)
    full_at: Mapped[datetime | None] = mapped_column(default=None)
    ok: Mapped[bool] = mapped_column(default=True)
    # [kind, record id] of failures ingest had flagged when the pass first met them.
    known: Mapped[list[Any]] = mapped_column(JSON, default=list)
