"""Every query the re-verifier makes on the control database."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import ReverifyMark, Stream


class ReverifyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def streams(self) -> list[tuple[str, str]]:
        rows = self.session.execute(
            select(Stream.tenant_id, Stream.id).order_by(Stream.tenant_id, Stream.id)
        )
        return [(tenant, stream) for tenant, stream in rows]

    def marks(self, tenant: str | None = None) -> list[ReverifyMark]:
        query = select(ReverifyMark).order_by(ReverifyMark.tenant_id, ReverifyMark.stream_id)
        if tenant is not None:
            query = query.where(ReverifyMark.tenant_id == tenant)
        return list(self.session.scalars(query))

    def mark(self, tenant: str, stream: str) -> ReverifyMark:
        found = self.session.get(ReverifyMark, (tenant, stream))
        if found is None:
            found = ReverifyMark(
                tenant_id=tenant, stream_id=stream, sequence=0, hash="0" * 64, ok=True, known=[]
            )
            self.session.add(found)
        return found
