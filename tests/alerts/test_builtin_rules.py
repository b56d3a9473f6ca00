"""The scheduled built-in rules fire on their scenario and stay quiet on normal traffic, on
every event store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from audit.alerts.repository import AlertRepository
from audit.alerts.schemas import AlertOut
from tests.alerts.conftest import IP_A, IP_B, IP_C, T0, World, after

SUBMIT: dict[str, Any] = {"event.action": "job.submitted"}


def client(ip: str) -> dict[str, Any]:
    return {"ffaudit.client.ip_hash": ip}


async def start(world: World) -> None:
    """The service's first tick, before the traffic: every rule's watermark is at T0."""
    await world.tick(after(T0))


async def test_client_ip_burst(world: World) -> None:
    await start(world)
    await world.write(T0 + timedelta(seconds=5), n=11, **SUBMIT, **client(IP_A))
    await world.write(T0 + timedelta(seconds=5), n=10, **SUBMIT, **client(IP_B))
    # Not requests: any number of frames of a job is fine.
    await world.write(T0 + timedelta(seconds=5), n=30, **client(IP_B))
    # Eleven requests in ten seconds across a minute boundary: an overlapping window has them.
    await world.write(T0 + timedelta(seconds=115), n=6, **SUBMIT, **client(IP_C))
    await world.write(T0 + timedelta(seconds=125), n=5, **SUBMIT, **client(IP_C))
    report = await world.tick(after(T0 + timedelta(minutes=5)))
    assert report.windows > 0
    alerts = {a.dedup_key: a for a in world.alerts("client_ip_burst")}
    assert set(alerts) == {
        f"client_ip_burst:{world.tenant}:{IP_A}",
        f"client_ip_burst:{world.tenant}:{IP_C}",
    }
    burst = alerts[f"client_ip_burst:{world.tenant}:{IP_A}"]
    assert (burst.severity, burst.state) == ("high", "open")
    assert burst.detail["count"] == 11
    # The four 60 s windows (ending every 15 s) that hold the burst: one incident.
    assert burst.count == 4
    assert AlertOut.of(burst).records == 11  # requests, not windows
    # From the alert to its records: the query that lists them, and some of their ids.
    shown = burst.detail["records_query"]
    assert shown["path"] == "/v1/events"
    assert shown["params"]["client_ip_hash"] == IP_A
    assert "job.submitted" in shown["params"]["action"]  # the rule's request actions
    samples = burst.detail["sample_records"]
    assert 1 <= len(samples) <= 5
    for doc in samples:
        event = await world.store.get(world.tenant, doc)
        assert event is not None
        assert event.record["ffaudit.client.ip_hash"] == IP_A


async def test_client_ip_steady_traffic_is_quiet(world: World) -> None:
    await start(world)
    for ip in (IP_A, IP_B, IP_C):
        for i in range(50):  # one request every 6 s: ten per minute, never eleven
            await world.write(T0 + timedelta(seconds=6 * i + 1), **SUBMIT, **client(ip))
    await world.tick(after(T0 + timedelta(minutes=6)))
    assert world.alerts() == []


async def test_failed_job_ratio(world: World) -> None:
    await start(world)
    at = T0 + timedelta(minutes=3)
    failed: dict[str, Any] = {"event.action": "job.failed"}
    completed: dict[str, Any] = {"event.action": "job.completed"}
    await world.write(at, n=6, stream="cam-1", **failed)
    await world.write(at, n=4, stream="cam-1", **completed)
    await world.write(at, n=2, stream="cam-2", **failed)  # 20 %
    await world.write(at, n=8, stream="cam-2", **completed)
    await world.write(at, n=5, stream="cam-3", **failed)  # exactly the threshold: quiet
    await world.write(at, n=5, stream="cam-3", **completed)
    await world.write(at, n=9, stream="cam-4", **failed)  # too few jobs to judge
    await world.tick(after(T0 + timedelta(minutes=15)))
    alerts = world.alerts()
    assert [(a.rule, a.stream_id, a.severity) for a in alerts] == [
        ("failed_job_ratio", "cam-1", "high")
    ]
    assert (alerts[0].detail["failed"], alerts[0].detail["finished"]) == (6, 10)


async def test_rate_limit_drops(world: World) -> None:
    await start(world)
    await world.write(T0 + timedelta(seconds=20), n=40, stream="cam-1")
    summary: dict[str, Any] = {
        "event.action": "audit.rate_limited",
        "event.outcome": "failure",
        "ffaudit.metadata": {"dropped": 31, "actions": {"face.swapped": 31}},
    }
    session_a, session_b = "5a" * 32, "6b" * 32
    first: dict[str, Any] = {**summary, "ffaudit.session.hash": session_a}
    await world.write(T0 + timedelta(seconds=20), stream="cam-9", **first)
    other: dict[str, Any] = {
        **summary,
        "ffaudit.session.hash": session_b,
        "ffaudit.metadata": {"dropped": 2, "actions": {"face.swapped": 2}},
    }
    await world.write(T0 + timedelta(seconds=30), stream="cam-9", **other)
    await world.tick(after(T0 + timedelta(minutes=5)))
    [alert] = world.alerts()
    assert (alert.rule, alert.stream_id, alert.severity) == ("rate_limited", "cam-9", "medium")
    # The dropped events are counted (33), not the two summaries, and the sessions named.
    assert alert.detail["dropped"] == 33
    assert AlertOut.of(alert).records == 33
    assert "33 event(s) dropped" in alert.title
    assert alert.detail["sessions"] == [
        {"session_hash": session_a, "dropped": 31},
        {"session_hash": session_b, "dropped": 2},
    ]
    assert len(alert.detail["sample_records"]) == 2


async def test_admin_export(world: World) -> None:
    await start(world)
    service = f"ffaudit-service.{world.tenant}.host-1"
    exported: dict[str, Any] = {"event.action": "audit.exported"}

    def meta(actor: str, *roles: str) -> dict[str, Any]:
        return {
            "user.hash": actor * 64,
            "ffaudit.metadata": {"export_id": "e1", "roles": list(roles), "records": 3},
        }

    at = T0 + timedelta(seconds=10)
    await world.write(at, stream=service, **exported, **meta("d", "admin"))
    await world.write(at, stream=service, **exported, **meta("e", "auditor"))
    # A producer's look-alike record outside the service's stream does not count.
    await world.write(at, stream="cam-1", **exported, **meta("f", "admin"))
    await world.tick(after(T0 + timedelta(minutes=1)))
    alerts = world.alerts()
    assert [(a.rule, a.severity, a.dedup_key) for a in alerts] == [
        ("admin_export", "medium", f"admin_export:{world.tenant}:{'d' * 64}")
    ]
    assert alerts[0].detail["exports"] == ["e1"]


async def test_other_tenants_traffic_raises_nothing_here(world: World) -> None:
    other = world.tenant + "x"
    world.add_tenant(other)
    await start(world)
    await world.write(T0 + timedelta(seconds=5), n=20, tenant=other, **SUBMIT, **client(IP_A))
    await world.tick(after(T0 + timedelta(minutes=2)))
    assert world.alerts() == []
    with world.sessions() as session:
        theirs = AlertRepository(session).list(tenant_id=other)
    assert [a.rule for a in theirs] == ["client_ip_burst"]
