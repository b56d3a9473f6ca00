"""Every query on the subject vault and its tombstones."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from audit.models import SubjectErasure, SubjectKey


class SubjectRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def probe(self) -> None:
        self.session.execute(select(SubjectKey.id).limit(1))

    def find(self, tenant: str, kind: str, lookups: Sequence[str]) -> list[SubjectKey]:
        query = select(SubjectKey).where(
            SubjectKey.tenant == tenant, SubjectKey.kind == kind, SubjectKey.lookup.in_(lookups)
        )
        return list(self.session.scalars(query))

    def add(self, tenant: str, kind: str, lookup: str, secret: bytes) -> None:
        self.session.add(SubjectKey(tenant=tenant, kind=kind, lookup=lookup, secret=secret))
        self.session.flush()  # the unique constraint speaks here, inside the caller's guard

    def delete(self, tenant: str, kind: str, lookups: Sequence[str]) -> int:
        result = self.session.execute(
            delete(SubjectKey)
            .where(
                SubjectKey.tenant == tenant,
                SubjectKey.kind == kind,
                SubjectKey.lookup.in_(lookups),
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def add_erasure(self, erasure: SubjectErasure) -> None:
        self.session.add(erasure)

    def list_erasures(self, tenant: str, limit: int) -> list[SubjectErasure]:
        query = (
            select(SubjectErasure)
            .where(SubjectErasure.tenant == tenant)
            .order_by(SubjectErasure.erased_at.desc(), SubjectErasure.id)
            .limit(limit)
        )
        return list(self.session.scalars(query))
