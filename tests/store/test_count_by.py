"""Contract of `EventStore.count_by` (threshold alert rules) on every backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit.errors import InvalidInputError
from audit.store.protocol import EventStore, StoredEvent
from audit.store.query import EventQuery
from tests.store.conftest import T0, make_event

IP_A, IP_B, IP_C = "1" * 64, "2" * 64, "3" * 64


def events(tenant: str) -> list[StoredEvent]:
    """IP A: 5 records (2 failed), IP B: 3, IP C: 1, and 2 records without an IP; the last
    two records of IP A fall an hour later than the rest."""
    plan = [IP_A] * 5 + [IP_B] * 3 + [IP_C] + [None, None]
    out = []
    for i, ip in enumerate(plan, start=1):
        extra: dict[str, object] = {"trace.id": f"job-{i % 2}"}
        if ip is not None:
            extra["ffaudit.client.ip_hash"] = ip
        if ip == IP_A and i in (1, 2):
            extra["event.action"] = "job.failed"
            extra["event.outcome"] = "failure"
        late = ip == IP_A and i in (4, 5)
        out.append(
            make_event(
                tenant,
                i,
                stream="cam-2" if ip == IP_B else "cam-1",
                timestamp=T0 + timedelta(hours=1 if late else 0, seconds=i),
                extra=extra,
            )
        )
    return out


async def test_counts_per_group_above_the_threshold(store: EventStore, tenant: str) -> None:
    await store.write(events(tenant))
    query = EventQuery(tenant=tenant)
    assert await store.count_by(query, field="ffaudit.client.ip_hash") == {
        IP_A: 5,
        IP_B: 3,
        IP_C: 1,
    }
    assert await store.count_by(query, field="ffaudit.client.ip_hash", more_than=2) == {
        IP_A: 5,
        IP_B: 3,
    }
    assert await store.count_by(query, field="ffaudit.client.ip_hash", more_than=5) == {}
    assert await store.count_by(query, field="stream") == {"cam-1": 8, "cam-2": 3}
    assert await store.count_by(query, field="event.action") == {
        "face.swapped": 9,
        "job.failed": 2,
    }
    assert await store.count_by(query, field="event.outcome", more_than=3) == {"success": 9}
    assert await store.count_by(query, field="trace.id") == {"job-0": 5, "job-1": 6}
    assert await store.count_by(query, field="user.hash") == {"a" * 64: 11}
    assert await store.count_by(query, field="ffaudit.session.hash") == {"b" * 64: 11}


async def test_filters_and_time_window_apply(store: EventStore, tenant: str) -> None:
    await store.write(events(tenant))
    window = EventQuery(tenant=tenant, since=T0, until=T0 + timedelta(minutes=1))
    # IP A's last two records fall outside the window.
    assert await store.count_by(window, field="ffaudit.client.ip_hash") == {
        IP_A: 3,
        IP_B: 3,
        IP_C: 1,
    }
    failed = EventQuery(tenant=tenant, actions=("job.failed",))
    assert await store.count_by(failed, field="ffaudit.client.ip_hash") == {IP_A: 2}
    cam2 = EventQuery(tenant=tenant, streams=("cam-2",), outcomes=("success",))
    assert await store.count_by(cam2, field="event.action") == {"face.swapped": 3}


async def test_other_tenants_and_empty_tenants(store: EventStore, tenant: str) -> None:
    await store.write(events(tenant))
    other = tenant + "x"
    await store.write([make_event(other, 1, extra={"ffaudit.client.ip_hash": IP_A})])
    assert await store.count_by(EventQuery(tenant=other), field="ffaudit.client.ip_hash") == {
        IP_A: 1
    }
    nobody = EventQuery(tenant=tenant + "nobody")
    assert await store.count_by(nobody, field="stream") == {}


@pytest.mark.parametrize(("field", "more_than"), [("client_ip", 0), ("stream", -1)])
async def test_bad_arguments_are_refused(
    store: EventStore, tenant: str, field: str, more_than: int
) -> None:
    with pytest.raises(InvalidInputError):
        await store.count_by(EventQuery(tenant=tenant), field=field, more_than=more_than)  # type: ignore[arg-type]
