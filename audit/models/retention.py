"""Retention: policies, legal holds, runs and their lease, archives, retention checkpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow

HASH = String(64)


class RetentionPolicy(Base):
    """How long a tenant keeps one action class; a class without a row keeps the default."""

    __tablename__ = "retention_policies"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    action_class: Mapped[str] = mapped_column(String(32), primary_key=True)
    days: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LegalHold(Base):
    """Blocks deletion of every record it covers until released. Who placed or released it
    is in the log of the logs (pseudonymised), not here; an actor hold keeps pseudonyms only,
    never the raw id it was placed with."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # tenant | stream | job | actor
    # stream ids, job ids or user.hash pseudonyms (one per active key); empty for tenant.
    values: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    release_reason: Mapped[str | None] = mapped_column(Text, default=None)


class RetentionRun(Base):
    __tablename__ = "retention_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(63))  # None: every tenant
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | api
    dry_run: Mapped[bool]
    holder: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class RetentionLease(Base):
    """One retention run at a time across replicas: taken by compare-and-set, renewed while
    the run works, and `last_finished_at` spaces scheduled runs whichever replica ran."""

    __tablename__ = "retention_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), default=None)
    expires_at: Mapped[datetime]
    last_finished_at: Mapped[datetime | None] = mapped_column(default=None)


class RetentionArchive(Base):
    """One purged day of one tenant: an NDJSON.gz file (SQL store) or a snapshot's index."""

    __tablename__ = "retention_archives"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD (UTC)
    kind: Mapped[str] = mapped_column(String(16))  # ndjson.gz | snapshot
    # ndjson.gz: the file's path under the archive directory; snapshot: "repository/snapshot".
    location: Mapped[str] = mapped_column(Text)
    index_name: Mapped[str | None] = mapped_column(String(255), default=None)
    records: Mapped[int]
    sha256: Mapped[str | None] = mapped_column(HASH, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(default=None)
    restored_at: Mapped[datetime | None] = mapped_column(default=None)


class RetentionCheckpoint(Base):
    """A signed statement that a stream's records first..last were purged, linking the
    remaining chain across them (docs/record-spec.md §12). `payload` is the signed JCS text;
    the other columns are copies for lookups, never trusted by verification."""

    __tablename__ = "retention_checkpoints"
    __table_args__ = (
        UniqueConstraint("tenant_id", "stream_id", "first_sequence", "last_sequence"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63), index=True)
    stream_id: Mapped[str] = mapped_column(String(128), index=True)
    first_sequence: Mapped[int]
    last_sequence: Mapped[int]
    archive_id: Mapped[int] = mapped_column(ForeignKey("retention_archives.id"))
    payload: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    signer: Mapped[str] = mapped_column(HASH)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
