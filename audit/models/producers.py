"""Producers: the engines (or shippers) allowed to write records over the forward protocol."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow


class Producer(Base):
    """A forward-protocol identity bound to one tenant and to the streams it may write.

    `name` is the handshake's username, `<tenant>/<label>`: unique across tenants without a
    tenant ever learning another's labels. `secret` is the password as a Fernet token
    (audit.secretbox): the handshake needs the password itself, so a hash would not do.
    """

    __tablename__ = "producers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    tenant_id: Mapped[str] = mapped_column(String(63), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    secret: Mapped[str] = mapped_column(Text)
    streams: Mapped[list[str]] = mapped_column(JSON)  # exact names, or prefixes ending in '*'
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
