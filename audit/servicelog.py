"""The log of the logs: the service records what people do with the audit trail.

Every read, verification, export and administrative action becomes a record in a stream
of the service's own — one per tenant and replica (`<service_stream>.<tenant>.<replica>`,
so two replicas never fork each other's chain) — pseudonymised, chained and signed with
the service's key exactly like an engine's records, and stored through the normal ingest
path, so it is verified at ingest and queried like any other stream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from audit.auth.tokens import Principal
from audit.integrity.chain import ChainHead, ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import SIGNING_KEY, KeySet, keygen
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.settings import AuditSettings
from audit.streams.repository import StreamRepository
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService

OPEN_MODE_ACTOR = "open-mode"


def _replica(settings: AuditSettings) -> str:
    """The replica's own part of its stream names: each replica seals its own chain, so two
    that shared a name would both extend one stream from their own heads and fork it."""
    if settings.replica_name is not None:
        return settings.replica_name
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "replica"


class RecordSink(Protocol):
    """What the service log needs of the ingest service (`IngestService` is one): store
    sealed records through the normal, verifying path. What it returns is not read: the
    service's records are checked like a producer's, and ingest quarantines what it refuses."""

    async def ingest(self, records: Sequence[object], /, *, source: str) -> object: ...


class ServiceLog:
    def __init__(
        self, settings: AuditSettings, sessions: sessionmaker[Session], ingest: RecordSink
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._ingest = ingest
        directory = settings.service_keys_dir
        if not (directory / SIGNING_KEY).exists():
            keygen(directory)
        self.keys = KeySet.load(directory)
        self._sealers: dict[str, Sealer] = {}
        self._lock = asyncio.Lock()
        self._replica = _replica(settings)

    def stream_for(self, tenant: str) -> str:
        return f"{self._settings.service_stream}.{tenant}.{self._replica}"

    async def record(
        self,
        who: Principal | None,
        tenant: str,
        action: EventAction,
        *,
        outcome: Outcome = Outcome.SUCCESS,
        metadata: dict[str, Any] | None = None,
        client_ip: str | None = None,
    ) -> None:
        """Seal and store one record; returns once it is stored (then the caller answers)."""
        if client_ip is not None:
            try:
                ipaddress.ip_address(client_ip)
            except ValueError:
                client_ip = None  # e.g. a unix socket peer: no address to record
        async with self._lock:  # one chain per tenant: keep sealing and storing in order
            sealer = await asyncio.to_thread(self._sealer, tenant)
            event = AuditEvent(
                action=action,
                outcome=outcome,
                actor=who.subject if who is not None else OPEN_MODE_ACTOR,
                client_ip=client_ip,
                metadata=metadata or {},
            )
            sealed = sealer.seal(event)
            await self._ingest.ingest([s.record for s in sealed], source="service")

    async def close(self) -> None:
        """Sign what each tenant's service stream holds (the stream stays open)."""
        async with self._lock:
            for sealer in self._sealers.values():
                await self._ingest.ingest([s.record for s in sealer.checkpoint()], source="service")

    def _sealer(self, tenant: str) -> Sealer:
        sealer = self._sealers.get(tenant)
        if sealer is not None:
            return sealer
        stream = self.stream_for(tenant)
        streams = StreamService(self._sessions)
        streams.register(
            StreamRegistration(
                stream=stream,
                tenant=tenant,
                public_key_pem=self.keys.signer.verifier.pem().decode(),
            )
        )
        with self._sessions() as session:
            head = StreamRepository(session).get_head(tenant, stream)
            resume = ChainHead(head.sequence, head.hash) if head is not None else None
        writer = ChainWriter(
            stream,
            tenant,
            self.keys.signer,
            dataset="ffaudit.service",
            policy=CheckpointPolicy(every=100, interval_s=None),
            head=resume,
        )
        sealer = Sealer(writer, Pseudonymizer(self.keys.keyring, tenant))
        self._sealers[tenant] = sealer
        return sealer
