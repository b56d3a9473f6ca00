"""The subject vault on any SQLAlchemy URL (the audit control database, typically).

Shared by the parties that seal (engines: FFENGINE_SUBJECT_VAULT_URL) and the service that
answers queries and erases (its control database, or FFAUDIT_SUBJECT_VAULT_URL). The schema
comes from the project's migrations (`ffaudit db upgrade`); this class never creates tables,
so it cannot race Alembic on the control database.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from audit.db.base import utcnow
from audit.db.session import make_engine, session_factory
from audit.errors import SubjectVaultUnavailableError
from audit.integrity.subjects import SECRET_BYTES, Erasure, SubjectEntry, preferred
from audit.models import SubjectErasure
from audit.subjects.repository import SubjectRepository

T = TypeVar("T")
_CREATE_ATTEMPTS = 3


class SqlSubjectVault:
    def __init__(self, sessions: sessionmaker[Session], *, engine: Engine | None = None) -> None:
        self._sessions = sessions
        self._engine = engine  # owned (disposed by close) only when from_url made it

    @classmethod
    def from_url(cls, url: str) -> SqlSubjectVault:
        engine = make_engine(url)
        return cls(session_factory(engine), engine=engine)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def ping(self) -> None:
        """Raise SubjectVaultUnavailableError unless the vault's tables can be read: a
        producer checks this at start rather than failing on its first subject."""
        self._run(lambda s: SubjectRepository(s).probe())

    def get_or_create(self, tenant: str, kind: str, lookups: Sequence[str]) -> bytes:
        if not lookups:
            raise ValueError("a subject needs at least one lookup")
        for _ in range(_CREATE_ATTEMPTS):
            entries = self.find(tenant, kind, lookups)
            if entries:
                return preferred(entries, lookups).secret
            secret = secrets.token_bytes(SECRET_BYTES)
            try:
                self._run(partial(_add, tenant=tenant, kind=kind, lookup=lookups[0], secret=secret))
            except IntegrityError:
                # Another producer created this subject since our read: the unique
                # constraint kept one secret; read it back (next iteration).
                continue
            return secret
        # Only an erasure racing creation, every time, gets here.
        raise SubjectVaultUnavailableError("subject vault: contention creating an entry; retry")

    def find(self, tenant: str, kind: str, lookups: Sequence[str]) -> list[SubjectEntry]:
        rows = self._run(lambda s: SubjectRepository(s).find(tenant, kind, lookups))
        rank = {lookup: i for i, lookup in enumerate(lookups)}
        entries = [SubjectEntry(r.lookup, bytes(r.secret)) for r in rows]
        return sorted(entries, key=lambda e: rank[e.lookup])

    def erase(self, tenant: str, kind: str, lookups: Sequence[str]) -> Erasure:
        def destroy(session: Session) -> Erasure:
            repo = SubjectRepository(session)
            tombstone = SubjectErasure(
                id=uuid.uuid4().hex,
                tenant=tenant,
                kind=kind,
                entries=repo.delete(tenant, kind, lookups),
                erased_at=utcnow(),
            )
            repo.add_erasure(tombstone)
            return _erasure(tombstone)

        return self._run(destroy)

    def erasures(self, tenant: str, limit: int) -> list[Erasure]:
        rows = self._run(lambda s: SubjectRepository(s).list_erasures(tenant, limit))
        return [_erasure(r) for r in rows]

    def _run(self, work: Callable[[Session], T]) -> T:
        """One transaction. Database failures become SubjectVaultUnavailableError naming only
        the error class: SQLAlchemy's own message carries the bound parameters, secrets
        included, which must never reach a log."""
        try:
            with self._sessions.begin() as session:
                return work(session)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            cause = type(getattr(exc, "orig", None) or exc).__name__
            raise SubjectVaultUnavailableError(
                f"subject vault unreachable or not migrated ({cause}; "
                "`ffaudit db upgrade` builds its tables)"
            ) from None


def _add(session: Session, *, tenant: str, kind: str, lookup: str, secret: bytes) -> None:
    SubjectRepository(session).add(tenant, kind, lookup, secret)


def _erasure(row: SubjectErasure) -> Erasure:
    return Erasure(row.id, row.tenant, row.kind, row.entries, row.erased_at)
