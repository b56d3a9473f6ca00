"""Every query on the witness's state: witness_logs, one row per log origin holding the size
and root hash it last cosigned.

A row only ever moves forward, by compare-and-set: `advance` updates it only while it still
holds the size and root the caller checked its proof against, and `first_sighting` inserts
it only where none exists (the primary key refuses a second). Two concurrent add-checkpoint
calls from the same old size therefore cannot both succeed, whatever the isolation level,
and a stored size is never rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from audit.db.base import utcnow
from audit.models import WitnessLog


@dataclass(frozen=True, slots=True)
class TreeHead:
    size: int
    root_hash: bytes


class WitnessRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def head(self, origin: str) -> TreeHead | None:
        """What the witness last cosigned for `origin`; None if it never has."""
        row = self._session.execute(
            select(WitnessLog.size, WitnessLog.root_hash).where(WitnessLog.origin == origin)
        ).first()
        return None if row is None else TreeHead(row.size, bytes(row.root_hash))

    def first_sighting(self, origin: str, head: TreeHead) -> None:
        """Insert the first row of `origin`; the flush raises sqlalchemy's IntegrityError
        when a concurrent call inserted it first."""
        self._session.add(
            WitnessLog(origin=origin, size=head.size, root_hash=head.root_hash, updated_at=utcnow())
        )
        self._session.flush()

    def advance(self, origin: str, old: TreeHead, new: TreeHead) -> bool:
        """Move `origin` from `old` to `new` if it still holds `old`: whether it did."""
        result = self._session.execute(
            update(WitnessLog)
            .where(
                WitnessLog.origin == origin,
                WitnessLog.size == old.size,
                WitnessLog.root_hash == old.root_hash,
            )
            .values(size=new.size, root_hash=new.root_hash, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        assert isinstance(result, CursorResult)
        return result.rowcount == 1
