"""Every query on tenants, streams and chain heads."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from audit.models import ChainHead, Stream, StreamKey, Tenant


class StreamRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get_stream(self, tenant_id: str, stream_id: str) -> Stream | None:
        return self.session.get(Stream, (tenant_id, stream_id))

    def find_streams(self, stream_id: str) -> list[Stream]:
        """Every tenant's stream of that name: for callers that name no tenant (open mode)."""
        return list(self.session.scalars(select(Stream).where(Stream.id == stream_id).limit(2)))

    def get_head(self, tenant_id: str, stream_id: str) -> ChainHead | None:
        return self.session.get(ChainHead, (tenant_id, stream_id))

    def ensure_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.session.get(Tenant, tenant_id)
        if tenant is None:
            tenant = Tenant(id=tenant_id)
            self.session.add(tenant)
            self.session.flush()  # no relationship() orders the inserts: flush parents first
        return tenant

    def add_stream(self, stream: Stream) -> None:
        self.session.add(stream)
        self.session.flush()
        self.session.add(ChainHead(tenant_id=stream.tenant_id, stream_id=stream.id))

    def note_keys(self, tenant_id: str, stream_id: str, key_ids: set[str]) -> None:
        """Remember key ids a stream's records were sealed under (those not known yet)."""
        known = set(
            self.session.scalars(
                select(StreamKey.key_id).where(
                    StreamKey.tenant_id == tenant_id,
                    StreamKey.stream_id == stream_id,
                    StreamKey.key_id.in_(key_ids),
                )
            )
        )
        for key_id in sorted(key_ids - known):
            self.session.add(StreamKey(tenant_id=tenant_id, stream_id=stream_id, key_id=key_id))

    def stream_keys(self, tenant_id: str) -> dict[str, set[str]]:
        """Every stream of the tenant -> the key ids its records were sealed under."""
        out: dict[str, set[str]] = {s.id: set() for s in self.list_streams(tenant_id)}
        rows = self.session.execute(
            select(StreamKey.stream_id, StreamKey.key_id).where(StreamKey.tenant_id == tenant_id)
        )
        for stream, key_id in rows:
            out.setdefault(stream, set()).add(key_id)
        return out

    def list_streams(self, tenant_id: str | None = None) -> list[Stream]:
        query = select(Stream).order_by(Stream.id)
        if tenant_id is not None:
            query = query.where(Stream.tenant_id == tenant_id)
        return list(self.session.scalars(query))

    def advance_head(
        self,
        tenant_id: str,
        stream_id: str,
        *,
        expected_sequence: int,
        expected_hash: str,
        sequence: int,
        hash_: str,
        signed_through: int,
        last_checkpoint: int,
        closed: bool,
        signed_hash: str | None = None,
        contested_from: int | None = None,
    ) -> bool:
        """Compare-and-set: moves the head only if nobody else moved it since it was read."""
        result = self.session.execute(
            update(ChainHead)
            .where(
                ChainHead.tenant_id == tenant_id,
                ChainHead.stream_id == stream_id,
                ChainHead.sequence == expected_sequence,
                ChainHead.hash == expected_hash,
            )
            .values(
                sequence=sequence,
                hash=hash_,
                signed_through=signed_through,
                last_checkpoint=last_checkpoint,
                closed=closed,
                contested_from=contested_from,
                **({"signed_hash": signed_hash} if signed_hash is not None else {}),
            )
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]
