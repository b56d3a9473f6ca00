"""Stream registration: a stream belongs to one tenant and is signed by one Ed25519 key."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from audit.errors import ConflictError, InvalidInputError, KeyMaterialError, NotFoundError
from audit.integrity.keys import Verifier
from audit.models import Stream
from audit.streams.repository import StreamRepository
from audit.streams.schemas import StreamRead, StreamRegistration


def parse_public_key(pem: str) -> Verifier:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise InvalidInputError("public_key_pem is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError("public_key_pem is not an Ed25519 public key")
    return Verifier.from_key(key)


class StreamService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def register(self, registration: StreamRegistration) -> StreamRead:
        """Idempotent for the same key; another key for a registered name is a conflict.
        Names are per tenant: another tenant's streams never conflict, nor show."""
        verifier = parse_public_key(registration.public_key_pem)
        with self._sessions.begin() as session:
            repo = StreamRepository(session)
            existing = repo.get_stream(registration.tenant, registration.stream)
            if existing is not None:
                if existing.key_fingerprint != verifier.fingerprint:
                    raise ConflictError(
                        f"stream {registration.stream!r} is already registered with another key"
                    )
            else:
                repo.ensure_tenant(registration.tenant)
                repo.add_stream(
                    Stream(
                        id=registration.stream,
                        tenant_id=registration.tenant,
                        public_key_pem=verifier.pem().decode(),
                        key_fingerprint=verifier.fingerprint,
                    )
                )
        return self.read(registration.stream, registration.tenant)

    def read(self, stream_id: str, tenant_id: str | None = None) -> StreamRead:
        """The tenant's stream; with no tenant (open mode only), the one stream of that name
        (NotFoundError when several tenants have one)."""
        with self._sessions() as session:
            repo = StreamRepository(session)
            if tenant_id is None:
                found = repo.find_streams(stream_id)
                stream = found[0] if len(found) == 1 else None
            else:
                stream = repo.get_stream(tenant_id, stream_id)
            head = repo.get_head(stream.tenant_id, stream.id) if stream is not None else None
            if stream is None or head is None:
                raise NotFoundError(f"no stream {stream_id!r}")
            return StreamRead(
                stream=stream.id,
                tenant=stream.tenant_id,
                key_fingerprint=stream.key_fingerprint,
                registered_at=stream.registered_at,
                head_sequence=head.sequence,
                head_hash=head.hash,
                signed_through=head.signed_through,
                closed=head.closed,
            )

    def key_ids(self, tenant_id: str) -> dict[str, set[str]]:
        with self._sessions() as session:
            return StreamRepository(session).stream_keys(tenant_id)

    def names(self, tenant_id: str) -> list[str]:
        with self._sessions() as session:
            return [s.id for s in StreamRepository(session).list_streams(tenant_id)]

    def verifier(self, tenant_id: str, stream_id: str) -> Verifier:
        with self._sessions() as session:
            stream = StreamRepository(session).get_stream(tenant_id, stream_id)
            if stream is None:
                raise NotFoundError(f"no stream {stream_id!r}")
            try:
                return Verifier.from_key(parse_public_key(stream.public_key_pem).key)
            except InvalidInputError as exc:  # stored by us, so this is corruption
                raise KeyMaterialError(f"stream {stream_id!r} has an unreadable key") from exc
