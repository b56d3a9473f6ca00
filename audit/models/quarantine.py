from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow


class QuarantinedRecord(Base):
    """Input that could not be attributed to a registered stream, kept verbatim, not dropped."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(16))  # "forward" | "http"
    peer: Mapped[str | None] = mapped_column(String(256))
    claimed_stream: Mapped[str | None] = mapped_column(String(256), index=True)
    claimed_tenant: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
