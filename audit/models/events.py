"""The SQL event store's table: one row per stored record.

`record` holds the record's RFC 8785 text, the authoritative copy. The other columns are
copies of a few record fields, kept only so that common queries (by time, user, session,
job) use an index instead of parsing JSON, `search_text`, the record's non-PII words for
free-text search (audit.store.query.search_text), and `file_hashes`, the SHA-256 digests of
the files it names (audit.store.query.file_hashes_of).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base

HASH = String(64)


class Event(Base):
    """A stored record. Doc ids are unique per tenant, as in the Elasticsearch store (one
    index family per tenant), so one tenant's ids can neither block nor reveal another's."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_timestamp", "tenant", "timestamp"),
        Index("ix_events_stream_sequence", "stream", "sequence"),
        Index("ix_events_tenant_user_hash", "tenant", "user_hash"),
        Index("ix_events_tenant_trace_id", "tenant", "trace_id"),
    )

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    stream: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    event_hash: Mapped[str] = mapped_column(HASH)
    timestamp: Mapped[datetime]
    action: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(String(16))
    user_hash: Mapped[str | None] = mapped_column(HASH)
    session_hash: Mapped[str | None] = mapped_column(HASH)
    client_ip_hash: Mapped[str | None] = mapped_column(HASH)
    target_hash: Mapped[str | None] = mapped_column(HASH)
    trace_id: Mapped[str | None] = mapped_column(String(256))
    verdict: Mapped[str] = mapped_column(String(16))
    failure: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime]
    record: Mapped[str] = mapped_column(Text)
    # Read only by the free-text filter: deferred so loading a record never fetches it.
    search_text: Mapped[str | None] = mapped_column(Text, deferred=True)
    # Read only by the file-hash filter, likewise: space-separated digests, NULL for none.
    file_hashes: Mapped[str | None] = mapped_column(Text, deferred=True)
