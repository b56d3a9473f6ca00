"""The subject vault: per-subject pseudonym keys, and tombstones of erased subjects."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from audit.db.base import Base, utcnow


class SubjectKey(Base):
    """One data subject's pseudonym secret: the only link from a raw id to its pseudonyms.

    `lookup` is the subject's keyring pseudonym (schema-1 construction under one keyring
    key), so the row is found from the raw id by whoever holds the tenant keyring, while the
    pseudonym written into records comes from `secret`. Deleting the row is the erasure.
    No foreign key to `tenants`: engines may seal before their tenant's first stream exists.
    """

    __tablename__ = "subject_keys"
    __table_args__ = (UniqueConstraint("tenant", "kind", "lookup"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    lookup: Mapped[str] = mapped_column(String(64))
    secret: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SubjectErasure(Base):
    """Evidence that an erasure happened: no raw id, no pseudonym, no secret."""

    __tablename__ = "subject_erasures"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the erasure id
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    entries: Mapped[int]  # vault entries destroyed (0: the vault did not know the subject)
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
