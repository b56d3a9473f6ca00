"""Every query on the producers table."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import Producer


class ProducerRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, producer: Producer) -> None:
        self._session.add(producer)

    def by_name(self, name: str) -> Producer | None:
        return self._session.scalars(select(Producer).where(Producer.name == name)).first()

    def by_id(self, producer_id: str) -> Producer | None:
        return self._session.get(Producer, producer_id)

    def get(self, tenant: str, producer_id: str) -> Producer | None:
        return self._session.scalars(
            select(Producer).where(Producer.id == producer_id, Producer.tenant_id == tenant)
        ).first()

    def all(self) -> list[Producer]:
        return list(self._session.scalars(select(Producer).order_by(Producer.id)))

    def for_tenant(self, tenant: str) -> list[Producer]:
        query = select(Producer).where(Producer.tenant_id == tenant).order_by(Producer.created_at)
        return list(self._session.scalars(query))
