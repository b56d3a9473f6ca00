"""Event-driven built-in rules: raised by ingest (and the retention job) through the one
catalogue, deduplicated per rule, tenant and group, with the webhook outbox filled only when
an alert opens or re-opens."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from audit.alerts.kinds import RuleId
from audit.alerts.repository import AlertRepository
from audit.alerts.service import raise_event_alert
from audit.db.base import utcnow
from audit.ingest.service import IngestService
from audit.integrity.chain import record_hash
from audit.integrity.keys import Signer
from audit.models import Webhook, WebhookDelivery
from audit.producers.schemas import ProducerIdentity
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from tests.alerts.conftest import World
from tests.ingest.conftest import make_records

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in record.items() if k != "event.hash"}
    record["event.hash"] = record_hash(record)
    return record


def ingest(world: World, **overrides: Any) -> IngestService:
    settings = world.settings.model_copy(update=overrides)
    return IngestService(settings, world.sessions, world.store)


def register(world: World, signer: Signer, stream: str = "cam-1") -> None:
    StreamService(world.sessions).register(
        StreamRegistration(
            stream=stream, tenant=world.tenant, public_key_pem=signer.verifier.pem().decode()
        )
    )


def summary(world: World) -> list[tuple[str, str, int]]:
    return [(a.rule, a.severity, a.count) for a in world.alerts()]


async def test_clean_traffic_raises_nothing(world: World) -> None:
    signer = Signer.generate()
    register(world, signer)
    records = make_records(signer, 20, tenant=world.tenant)
    await ingest(world).ingest(records[:7], source="test")
    await ingest(world).ingest(records, source="test")  # a replay is harmless too
    assert world.alerts() == []


async def test_integrity_failures_are_critical_and_one_incident_per_stream_and_kind(
    world: World,
) -> None:
    signer = Signer.generate()
    register(world, signer)
    records = make_records(signer, 12, tenant=world.tenant)
    for i in (2, 6):
        records[i] = {**records[i], "event.outcome": "failure"}  # edited, hash left stale
    await ingest(world).ingest(records, source="test")
    alerts = world.alerts()
    assert summary(world) == [("integrity_failure", "critical", 2)]
    assert alerts[0].dedup_key == f"integrity_failure:{world.tenant}:cam-1:modified"
    assert alerts[0].stream_id == "cam-1"


async def test_fork_is_its_own_rule(world: World) -> None:
    signer = Signer.generate()
    register(world, signer)
    records = make_records(signer, 8, close=False, tenant=world.tenant)
    await ingest(world).ingest(records[:8], source="test")  # signed through 5, then 6..8
    rival = rehash({**records[6], "event.outcome": "failure", "event.id": "rival"})
    await ingest(world).ingest([rival], source="test")
    assert summary(world) == [("fork", "critical", 1)]


async def test_a_rival_of_a_signed_record_is_a_chain_attack(world: World) -> None:
    signer = Signer.generate()
    register(world, signer)
    records = make_records(signer, 8, tenant=world.tenant)
    await ingest(world).ingest(records, source="test")
    rival = rehash({**records[3], "event.outcome": "failure", "event.id": "rival"})
    await ingest(world).ingest([rival], source="test")
    assert summary(world) == [("chain_attack", "critical", 1)]


async def test_persistent_gap(world: World) -> None:
    signer = Signer.generate()
    register(world, signer)
    records = make_records(signer, 6, close=False, tenant=world.tenant)
    service = ingest(world, gap_timeout_s=0.05)
    await service.ingest(records[:2] + records[3:], source="test")
    assert world.alerts() == []  # a gap is not an incident until it persists
    await asyncio.sleep(0.1)
    await service.sweep_gaps()
    assert summary(world) == [("sequence_gap", "high", 1)]


async def test_unknown_stream(world: World) -> None:
    """Alerted to the tenant of the producer that sent it, deduplicated by its host (not the
    connection's source port)."""
    signer = Signer.generate()
    records = make_records(signer, 3, tenant=world.tenant)
    producer = ProducerIdentity("p1", f"{world.tenant}/engine", world.tenant, ("*",))
    for port in (5000, 5001):
        await ingest(world).ingest(
            records, source="test", peer=f"10.0.0.1:{port}", producer=producer
        )
    assert summary(world) == [("unknown_stream", "high", 2)]


async def test_unknown_stream_from_nobody_alerts_no_tenant(world: World) -> None:
    """Anyone can write any tenant id into a record: an unauthenticated sender's claim must
    not raise alerts (or fire webhooks) in that tenant."""
    records = make_records(Signer.generate(), 3, tenant=world.tenant)
    await ingest(world).ingest(records, source="test", peer="10.0.0.1:5000")
    assert summary(world) == []


def add_webhook(world: World) -> None:
    with world.sessions.begin() as session:
        session.add(
            Webhook(
                id="a" * 32,
                tenant_id=world.tenant,
                url="http://127.0.0.1:9/hook",
                min_severity="low",
                description="",
                secret="s" * 64,
                created_at=utcnow(),
            )
        )


def deliveries(world: World) -> int:
    with world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


def raise_retention_failure(world: World, at_minutes: int) -> int:
    with world.sessions.begin() as session:
        return raise_event_alert(
            session,
            world.settings,
            rule=RuleId.RETENTION_FAILED,
            title="retention run failed",
            tenant_id=world.tenant,
            stream_id=None,
            group="retention",
            detail={"run": at_minutes},
        ).id


async def test_dedup_suppression_and_reopening(world: World) -> None:
    add_webhook(world)
    first = raise_retention_failure(world, 0)
    assert deliveries(world) == 1
    # A repeat inside the suppression window: the same alert, counted, nobody notified.
    assert raise_retention_failure(world, 1) == first
    assert deliveries(world) == 1
    [alert] = world.alerts()
    assert (alert.rule, alert.severity, alert.state, alert.count) == (
        "retention_failed",
        "high",
        "open",
        2,
    )
    assert alert.detail["last"] == {"run": 1}
    # Acknowledged, then quiet for longer than the suppression window: re-opened, notified.
    with world.sessions.begin() as session:
        repo = AlertRepository(session)
        assert repo.transition(
            world.tenant, first, to="acknowledged", allowed_from=("open",), at=utcnow()
        )
        stored = repo.get(world.tenant, first)
        assert stored is not None
        stored.last_seen -= timedelta(seconds=world.settings.alert_suppression_s + 1)
    assert raise_retention_failure(world, 90) == first
    [alert] = world.alerts()
    assert (alert.state, alert.count, alert.acknowledged_at) == ("open", 3, None)
    assert deliveries(world) == 2
    # Resolved: the next occurrence is a new incident.
    with world.sessions.begin() as session:
        assert AlertRepository(session).transition(
            world.tenant, first, to="resolved", allowed_from=("open",), at=utcnow()
        )
    second = raise_retention_failure(world, 91)
    assert second != first
    assert [(a.id, a.state, a.count) for a in world.alerts()] == [
        (first, "resolved", 3),
        (second, "open", 1),
    ]
    assert deliveries(world) == 3
