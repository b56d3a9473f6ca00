"""Transparency-log state: one RFC 6962 Merkle tree per (tenant, stream), in the control
database so every replica appends to and proves from the same tree.

Only perfect (complete) subtree nodes are kept: any inclusion or consistency proof is a
fold of at most two per tree level (audit.integrity.merkle plans which), and an append
touches only the right edge. The log row's `size` is advanced with a compare-and-set in
the transaction that advances the chain head, so two replicas can never append different
leaves at one index (the node primary key would refuse it as well).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow


class TlogLog(Base):
    __tablename__ = "tlog_logs"
    __table_args__ = (Index("ix_tlog_logs_tenant_stream", "tenant_id", "stream_id", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    stream_id: Mapped[str] = mapped_column(String(128))
    origin: Mapped[str] = mapped_column(String(255), unique=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # Leaves below this index belong to purged records: their proofs are no longer served,
    # though every checkpoint and the tree's nodes stay (a proof for a kept record never
    # needs a purged leaf's entry, only node hashes).
    min_index: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TlogNode(Base):
    __tablename__ = "tlog_nodes"

    log_id: Mapped[int] = mapped_column(ForeignKey("tlog_logs.id"), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    index: Mapped[int] = mapped_column("idx", BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class TlogLeaf(Base):
    """A leaf's entry (the record's event.hash, 32 bytes) and the record it came from."""

    __tablename__ = "tlog_leaves"
    # Not unique: a forgery accepted before the producer's checkpoint exposed it stays a
    # leaf, and the genuine record placed afterwards is a second leaf at its sequence.
    # With idx: the newest leaf at a sequence is one index search (covering).
    __table_args__ = (Index("ix_tlog_leaves_log_sequence", "log_id", "sequence", "idx"),)

    log_id: Mapped[int] = mapped_column(ForeignKey("tlog_logs.id"), primary_key=True)
    index: Mapped[int] = mapped_column("idx", BigInteger, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    entry: Mapped[bytes] = mapped_column(LargeBinary(32))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class TlogCheckpoint(Base):
    """A signed checkpoint (C2SP signed note) at one tree size, and its cosigned form once
    the witness quorum has signed it."""

    __tablename__ = "tlog_checkpoints"

    log_id: Mapped[int] = mapped_column(ForeignKey("tlog_logs.id"), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(default=utcnow)
    cosigned_note: Mapped[str | None] = mapped_column(Text, default=None)
    cosigned_at: Mapped[datetime | None] = mapped_column(default=None)


class WitnessLog(Base):
    """What a witness (`ffaudit witness serve`) has seen of one log: the size and root it
    last cosigned. Updated with a compare-and-set on `size`, so two concurrent
    add-checkpoint calls for one origin cannot both advance it."""

    __tablename__ = "witness_logs"

    origin: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
