"""Every query the ingest path makes on the control database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from audit.models import Checkpoint, PendingRecord, QuarantinedRecord


class IngestRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def pending(self, tenant_id: str, stream_id: str) -> list[PendingRecord]:
        return list(
            self.session.scalars(
                select(PendingRecord)
                .where(PendingRecord.tenant_id == tenant_id, PendingRecord.stream_id == stream_id)
                .order_by(PendingRecord.sequence, PendingRecord.id)
            )
        )

    def add_pending(self, rows: Iterable[PendingRecord]) -> None:
        self.session.add_all(rows)

    def remove_pending(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self.session.execute(delete(PendingRecord).where(PendingRecord.id.in_(ids)))

    def checkpoints(
        self, tenant_id: str, stream_id: str, sequences: list[int]
    ) -> dict[int, Checkpoint]:
        if not sequences:
            return {}
        rows = self.session.scalars(
            select(Checkpoint).where(
                Checkpoint.tenant_id == tenant_id,
                Checkpoint.stream_id == stream_id,
                Checkpoint.sequence.in_(sequences),
            )
        )
        return {row.sequence: row for row in rows}

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.session.merge(checkpoint)

    def quarantine(self, record: QuarantinedRecord) -> None:
        self.session.add(record)

    def purge_quarantine(self, before: datetime) -> int:
        result = self.session.execute(
            delete(QuarantinedRecord).where(QuarantinedRecord.received_at < before)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def streams_with_pending(self) -> list[tuple[str, str]]:
        rows = self.session.execute(
            select(PendingRecord.tenant_id, PendingRecord.stream_id).distinct()
        )
        return [(tenant, stream) for tenant, stream in rows]
