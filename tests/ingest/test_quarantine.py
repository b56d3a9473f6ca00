"""Quarantine hygiene: what cannot be chained is kept as evidence, encrypted, within a
budget per sender, attributed only to a tenant known for sure, and for a limited time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from audit.db.session import make_engine, session_factory, upgrade
from audit.errors import TooManyRequestsError
from audit.ingest.service import IngestService
from audit.models import QuarantinedRecord
from audit.producers.schemas import ProducerIdentity
from audit.secretbox import SecretBox
from audit.settings import AuditSettings
from audit.store.sql import SqlEventStore

UNSEALED = {
    "timestamp": "2026-12-04T10:00:00Z",
    "user_id": "jane.doe@example.com",
    "action": "face_swap",
    "target": "/home/jane/passport-scan.jpg",
    "client_ip": "198.51.100.23",
}


@pytest.fixture
async def service(tmp_path: Path) -> IngestService:
    url = f"sqlite:///{tmp_path}/c.db"
    upgrade(url)
    settings = AuditSettings(
        database_url=url,
        forward_enabled=False,
        service_keys_dir=tmp_path / "keys",
        quarantine_max_records_per_min=5,
        quarantine_max_bytes_per_min=64 * 1024,
    )
    return IngestService(settings, session_factory(make_engine(url)), SqlEventStore(url))


def rows(service: IngestService) -> list[QuarantinedRecord]:
    with service._sessions() as session:
        return list(session.scalars(select(QuarantinedRecord)))


async def test_quarantined_input_is_encrypted_at_rest_and_still_evidence(
    service: IngestService, tmp_path: Path
) -> None:
    report = await service.ingest([UNSEALED], source="http", peer="203.0.113.5:40000")
    assert report.quarantined == [(0, "missing field '@timestamp'")]
    database = (tmp_path / "c.db").read_bytes() + (tmp_path / "c.db-wal").read_bytes()
    for secret in (b"jane.doe@example.com", b"passport-scan", b"198.51.100.23"):
        assert secret not in database
    [row] = rows(service)
    box = SecretBox.load(tmp_path / "keys", create=False)
    assert b"jane.doe@example.com" in box.open_bytes(row.payload)  # kept for an investigation
    assert row.claimed_tenant is None  # an unauthenticated sender's claims attribute nothing


async def test_a_sender_over_its_budget_is_refused_not_stored(service: IngestService) -> None:
    producer = ProducerIdentity("p1", "acme/engine", "acme", ("*",))
    for _ in range(5):
        await service.ingest([{"junk": 1}], source="forward", peer="h:1", producer=producer)
    with pytest.raises(TooManyRequestsError, match="acme/engine"):
        await service.ingest([{"junk": 1}], source="forward", peer="h:2", producer=producer)
    assert len(rows(service)) == 5
    assert {r.claimed_tenant for r in rows(service)} == {"acme"}
    # Another sender has its own budget; a large payload counts by its bytes.
    await service.ingest([{"junk": 2}], source="http", peer="10.1.1.1:5")
    with pytest.raises(TooManyRequestsError):
        await service.ingest([{"junk": "x" * 70_000}], source="http", peer="10.1.1.2:5")


async def test_quarantine_expires(service: IngestService) -> None:
    await service.ingest([{"junk": 1}, {"junk": 2}], source="http", peer="h:1")
    old = datetime.now(UTC) - timedelta(days=31)
    with service._sessions.begin() as session:
        session.execute(
            update(QuarantinedRecord)
            .where(QuarantinedRecord.id == min(r.id for r in rows(service)))
            .values(received_at=old)
        )
    assert service.purge_quarantine() == 1
    assert len(rows(service)) == 1


async def test_budgets_of_quiet_senders_are_forgotten_not_kept_for_ever(
    service: IngestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many source addresses (an IPv6 /64 has plenty) must not grow the map without bound.
    monkeypatch.setattr("audit.ingest.service._MAX_BUDGETS", 3)
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        await service.ingest([{"junk": 1}], source="http", peer=f"{host}:5")
    assert len(service._budgets) == 3
    service._budgets["host:10.0.0.1"].at -= 120  # quiet for two minutes: refilled
    await service.ingest([{"junk": 1}], source="http", peer="10.0.0.4:5")
    assert sorted(service._budgets) == ["host:10.0.0.2", "host:10.0.0.3", "host:10.0.0.4"]
    # A sender still owing its budget keeps it: forgetting it would reset its limit.
    for _ in range(4):
        await service.ingest([{"junk": 1}], source="http", peer="10.0.0.2:5")
    with pytest.raises(TooManyRequestsError):
        await service.ingest([{"junk": 1}], source="http", peer="10.0.0.2:5")
