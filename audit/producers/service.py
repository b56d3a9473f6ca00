"""Producers: create (the password is shown once), list, revoke, and the handshake's lookup."""

from __future__ import annotations

import secrets
import threading
import time
import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from audit.db.base import utcnow
from audit.errors import ConflictError, NotFoundError
from audit.models import Producer
from audit.producers.repository import ProducerRepository
from audit.producers.schemas import (
    ProducerCreate,
    ProducerCreated,
    ProducerIdentity,
    ProducerList,
    ProducerOut,
)
from audit.secretbox import SecretBox


def _out(row: Producer) -> ProducerOut:
    return ProducerOut(
        id=row.id,
        name=row.name,
        tenant=row.tenant_id,
        streams=list(row.streams),
        description=row.description,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class ProducerService:
    def __init__(
        self, sessions: sessionmaker[Session], box: SecretBox, *, recheck_s: float = 2.0
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._recheck_s = recheck_s
        self._checked: dict[str, tuple[float, bool]] = {}  # producer id -> (when, active)
        self._lock = threading.Lock()

    def create(self, tenant: str, body: ProducerCreate) -> ProducerCreated:
        password = secrets.token_urlsafe(32)
        row = Producer(
            id=uuid.uuid4().hex,
            tenant_id=tenant,
            name=f"{tenant}/{body.label}",
            secret=self._box.seal(password),
            streams=sorted(set(body.streams)),
            description=body.description,
            created_at=utcnow(),
        )
        try:
            with self._sessions.begin() as session:
                ProducerRepository(session).add(row)
        except IntegrityError:
            # Names are '<tenant>/<label>': only this tenant's own labels can collide.
            raise ConflictError(f"this tenant already has a producer {body.label!r}") from None
        return ProducerCreated(**_out(row).model_dump(), password=password)

    def list(self, tenant: str) -> ProducerList:
        with self._sessions() as session:
            rows = ProducerRepository(session).for_tenant(tenant)
            return ProducerList(producers=[_out(r) for r in rows])

    def revoke(self, tenant: str, producer_id: str) -> ProducerOut:
        """Effective for new connections at once, and for open ones within `recheck_s` (the
        forward server checks before storing each message)."""
        with self._sessions.begin() as session:
            row = ProducerRepository(session).get(tenant, producer_id)
            if row is None:
                raise NotFoundError(f"no producer {producer_id!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _out(row)

    def credential(self, name: str) -> tuple[str, ProducerIdentity] | None:
        """(password, identity) of an active producer, for the forward handshake."""
        with self._sessions() as session:
            row = ProducerRepository(session).by_name(name)
            if row is None or row.revoked_at is not None:
                return None
            identity = ProducerIdentity(row.id, row.name, row.tenant_id, tuple(row.streams))
            return self._box.open(row.secret), identity

    def reencrypt(self) -> int:
        """Every stored password under the box's first key (after a key rotation)."""
        with self._sessions.begin() as session:
            rows = ProducerRepository(session).all()
            for row in rows:
                row.secret = self._box.rotate(row.secret)
            return len(rows)

    def known_active(self, producer_id: str) -> bool | None:
        """The answer of `active` while it is fresh (no I/O: fit for the event loop), else
        None."""
        with self._lock:
            cached = self._checked.get(producer_id)
        if cached is not None and time.monotonic() - cached[0] < self._recheck_s:
            return cached[1]
        return None

    def active(self, producer_id: str) -> bool:
        """Whether the producer is still active, read again at most every `recheck_s`: an
        open connection of a revoked producer is closed within that time."""
        known = self.known_active(producer_id)
        if known is not None:
            return known
        now = time.monotonic()
        with self._sessions() as session:
            row = ProducerRepository(session).by_id(producer_id)
            active = row is not None and row.revoked_at is None
        with self._lock:
            self._checked[producer_id] = (now, active)
        return active
