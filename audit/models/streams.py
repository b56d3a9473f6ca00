from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow

HASH = String(64)


class Tenant(Base):
    __tablename__ = "tenants"

    # Lowercase slug: it becomes part of Elasticsearch index names.
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Stream(Base):
    """A producer's hash chain, registered with its tenant and Ed25519 public key.

    Names are scoped by tenant: two tenants may each have a `cam-1`, and registering a name
    never tells one tenant anything about another's."""

    __tablename__ = "streams"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    key_fingerprint: Mapped[str] = mapped_column(HASH)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChainHead(Base):
    """The last record the service accepted for a stream.

    Advanced with a compare-and-set on `sequence` inside the transaction that records the
    store write, so two replicas sharing the database can never both accept different
    successors of the same head.
    """

    __tablename__ = "chain_heads"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "stream_id"], ["streams.tenant_id", "streams.id"]),
    )

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sequence: Mapped[int] = mapped_column(default=0)
    hash: Mapped[str] = mapped_column(HASH, default="0" * 64)
    signed_through: Mapped[int] = mapped_column(default=0)
    # The hash at signed_through: where a branch proven by a later checkpoint must start.
    signed_hash: Mapped[str] = mapped_column(HASH, default="0" * 64)
    last_checkpoint: Mapped[int] = mapped_column(default=0)
    closed: Mapped[bool] = mapped_column(default=False)
    # Lowest sequence after signed_through where two histories compete (a fork, or a record
    # that does not link to the accepted head): the next verified checkpoint settles it.
    contested_from: Mapped[int | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "stream_id"], ["streams.tenant_id", "streams.id"]),
    )

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sequence: Mapped[int] = mapped_column(primary_key=True)
    event_hash: Mapped[str] = mapped_column(HASH)
    signature: Mapped[str | None] = mapped_column(String(128))
    signer: Mapped[str | None] = mapped_column(HASH)
    closing: Mapped[bool] = mapped_column(default=False)
    verified: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PendingRecord(Base):
    """A record that arrived ahead of its predecessor: stored, waiting for the gap to fill."""

    __tablename__ = "pending_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "stream_id", "sequence", "event_hash"),
        ForeignKeyConstraint(["tenant_id", "stream_id"], ["streams.tenant_id", "streams.id"]),
        Index("ix_pending_records_tenant_id_stream_id", "tenant_id", "stream_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    stream_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int]
    event_hash: Mapped[str] = mapped_column(HASH)
    prev: Mapped[str] = mapped_column(HASH)
    doc_id: Mapped[str] = mapped_column(String(256))
    timestamp: Mapped[datetime]  # the record's @timestamp: addresses its daily index
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class StreamKey(Base):
    """A pseudonym key id a stream's records were sealed under (`ffaudit.key_id`), noted at
    ingest: a query by raw id covers a stream only if the service holds all of its keys."""

    __tablename__ = "stream_keys"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "stream_id"], ["streams.tenant_id", "streams.id"]),
    )

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
