"""The delivery loop against a real local receiver, driven step by step with `run_once(now)`."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from audit.db.base import utcnow
from audit.models import WebhookDelivery
from audit.secretbox import SecretBox
from audit.settings import AuditSettings
from audit.webhooks.delivery import WebhookDeliverer
from audit.webhooks.service import WebhookService
from tests.webhooks.conftest import (
    Receiver,
    add_webhook,
    alert_state,
    deliveries,
    open_alert,
    refused_url,
    sessions_for,
    tenant,
)

BASE, CAP = 10.0, 25.0


def settings(url: str, **overrides: Any) -> AuditSettings:
    values: dict[str, Any] = {
        "database_url": url,
        "webhook_backoff_base_s": BASE,
        "webhook_backoff_cap_s": CAP,
        "webhook_max_attempts": 3,
        "webhook_timeout_s": 5.0,
        # The test receivers listen on loopback over plain http: allowed explicitly.
        "webhook_allow_http": True,
        "webhook_allowed_destinations": ["127.0.0.1"],
    }
    return AuditSettings(**(values | overrides))


def next_attempt(row: WebhookDelivery) -> datetime:
    assert row.next_attempt_at is not None
    return row.next_attempt_at


class UpperBound(random.Random):
    """Jitter that always takes the top of the interval: shows the bounds themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_delivery_reaches_the_receiver_signed_with_the_frozen_payload(
    sqlite_url: str, receiver: Receiver
) -> None:
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, receiver.url)
    receiver.secrets.append(webhook.secret)
    alert_id, queued = open_alert(sessions, t)
    assert queued == 1
    deliverer = WebhookDeliverer(settings(sqlite_url), sessions)
    try:
        assert await deliverer.run_once() == 1
        assert await deliverer.run_once() == 0  # delivered: nothing left to send
    finally:
        await deliverer.close()

    [got] = receiver.received
    assert got.verified
    assert got.status == 200
    assert got.headers["content-type"] == "application/json"
    [row] = deliveries(sessions, webhook.id)
    assert got.event_id == row.event_id == got.body["event_id"]
    assert got.raw == row.payload.encode()  # the exact bytes frozen at enqueue
    assert got.body["type"] == "alert.opened"
    assert got.body["tenant"] == t
    alert = got.body["alert"]
    assert alert["id"] == alert_id
    assert (alert["rule"], alert["severity"], alert["state"], alert["count"]) == (
        "integrity_failure",
        "critical",
        "open",
        1,
    )
    assert alert["detail"] == {"kind": "modified", "sequence": 7}
    assert alert["first_seen"].endswith("Z")
    assert alert["last_seen"].endswith("Z")
    assert (row.state, row.attempts, row.last_status_code, row.last_error) == (
        "delivered",
        1,
        200,
        None,
    )
    assert row.delivered_at is not None
    assert row.claim_token is None


async def test_500_twice_then_200_is_delivered_on_the_third_attempt_after_jittered_backoff(
    sqlite_url: str, receiver: Receiver
) -> None:
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, receiver.url)
    receiver.secrets.append(webhook.secret)
    receiver.script = [500, 500]
    open_alert(sessions, t)
    seed = 20261121
    expected = random.Random(seed)
    deliverer = WebhookDeliverer(
        settings(sqlite_url, webhook_max_attempts=5), sessions, rng=random.Random(seed)
    )
    try:
        now = utcnow()
        assert await deliverer.run_once(now) == 1
        [first] = deliveries(sessions, webhook.id)
        assert (first.state, first.attempts, first.last_status_code) == ("pending", 1, 500)
        assert first.last_error == "HTTP 500"
        second_at = next_attempt(first)
        delay1 = (second_at - now).total_seconds()
        assert 0 <= delay1 <= BASE  # full jitter: [0, base] after the first failure
        assert delay1 == pytest.approx(expected.uniform(0, BASE), abs=1e-5)

        # Not due before its time: no attempt, and the row is untouched.
        assert await deliverer.run_once(second_at - timedelta(milliseconds=1)) == 0
        assert deliveries(sessions, webhook.id)[0].attempts == 1

        assert await deliverer.run_once(second_at) == 1
        [second] = deliveries(sessions, webhook.id)
        assert (second.state, second.attempts, second.last_status_code) == ("pending", 2, 500)
        third_at = next_attempt(second)
        delay2 = (third_at - second_at).total_seconds()
        assert 0 <= delay2 <= 2 * BASE  # the interval doubled
        assert delay2 == pytest.approx(expected.uniform(0, 2 * BASE), abs=1e-5)

        assert await deliverer.run_once(third_at) == 1
    finally:
        await deliverer.close()
    [third] = deliveries(sessions, webhook.id)
    assert (third.state, third.attempts, third.last_status_code) == ("delivered", 3, 200)
    assert third.last_error is None
    assert [r.status for r in receiver.received] == [500, 500, 200]
    assert len({r.event_id for r in receiver.received}) == 1  # one event, three attempts
    assert all(r.verified for r in receiver.received)


def test_backoff_bounds_double_up_to_the_cap_and_the_jitter_spreads(sqlite_url: str) -> None:
    sessions = sessions_for(sqlite_url)
    top = WebhookDeliverer(settings(sqlite_url), sessions, rng=UpperBound())
    assert [top.backoff_s(n) for n in range(1, 6)] == [BASE, 2 * BASE, CAP, CAP, CAP]
    assert top.backoff_s(10_000) == CAP  # no overflow however many failures
    jittered = WebhookDeliverer(settings(sqlite_url), sessions)
    samples = [jittered.backoff_s(2) for _ in range(200)]
    assert all(0 <= s <= 2 * BASE for s in samples)
    assert len(set(samples)) > 150  # spread, not a fixed delay
    assert min(samples) < BASE / 2 < BASE * 1.5 < max(samples)


async def test_a_receiver_that_is_down_fails_after_max_attempts_and_the_alert_stays_open(
    sqlite_url: str,
) -> None:
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, refused_url())
    alert_id, _ = open_alert(sessions, t)
    deliverer = WebhookDeliverer(settings(sqlite_url), sessions)
    try:
        now = utcnow()
        for attempt in (1, 2, 3):
            assert await deliverer.run_once(now) == 1
            [row] = deliveries(sessions, webhook.id)
            assert row.attempts == attempt
            assert row.last_status_code is None
            assert row.last_error is not None
            assert "ConnectError" in row.last_error
            if attempt < 3:
                assert row.state == "pending"
                assert row.next_attempt_at is not None
                now = row.next_attempt_at
        assert await deliverer.run_once(now + timedelta(days=365)) == 0  # given up for good
    finally:
        await deliverer.close()
    [row] = deliveries(sessions, webhook.id)
    assert (row.state, row.next_attempt_at, row.delivered_at) == ("failed", None, None)
    assert alert_state(sessions, alert_id) == "open"  # the alert itself is not lost


async def test_min_severity_filters_and_alerts_without_tenant_queue_nothing(
    sqlite_url: str, receiver: Receiver
) -> None:
    sessions = sessions_for(sqlite_url)
    t, other = tenant(), tenant()
    everything = add_webhook(sessions, t, receiver.url, "low")
    critical_only = add_webhook(sessions, t, receiver.url, "critical")
    add_webhook(sessions, other, receiver.url, "low")
    assert open_alert(sessions, t, "high")[1] == 1
    assert open_alert(sessions, t, "critical")[1] == 2
    assert open_alert(sessions, t, "something-new")[1] == 2  # unknown: treated as highest
    assert open_alert(sessions, None, "critical")[1] == 0
    assert len(deliveries(sessions, everything.id)) == 3
    assert len(deliveries(sessions, critical_only.id)) == 2


async def test_a_deleted_webhook_gets_nothing_more(sqlite_url: str, receiver: Receiver) -> None:
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, receiver.url)
    open_alert(sessions, t)
    box = SecretBox.load(settings(sqlite_url).service_keys_dir)
    assert WebhookService(sessions, box).delete(t, webhook.id) == 1
    assert open_alert(sessions, t)[1] == 0
    deliverer = WebhookDeliverer(settings(sqlite_url), sessions)
    try:
        assert await deliverer.run_once() == 0
    finally:
        await deliverer.close()
    assert receiver.received == []
    [row] = deliveries(sessions, webhook.id)
    assert (row.state, row.last_error) == ("failed", "webhook deleted")


async def test_a_hanging_receiver_times_out_as_a_failed_attempt(
    sqlite_url: str, receiver: Receiver
) -> None:
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, receiver.url)
    receiver.hold = True
    open_alert(sessions, t)
    deliverer = WebhookDeliverer(settings(sqlite_url, webhook_timeout_s=0.3), sessions)
    try:
        assert await deliverer.run_once() == 1
    finally:
        await deliverer.close()
    [row] = deliveries(sessions, webhook.id)
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.last_error is not None
    assert "timed out" in row.last_error


async def _replicas_claim_concurrently(url: str, receiver: Receiver, n: int) -> None:
    """Two replicas (separate engines) over one database, each scanning at the same time:
    every delivery is sent exactly once."""
    sessions = [sessions_for(url), sessions_for(url)]
    t = tenant()
    webhook = add_webhook(sessions[0], t, receiver.url)
    receiver.secrets.append(webhook.secret)
    for _ in range(n):
        open_alert(sessions[0], t)
    # Each scan claims a quarter: the scans overlap and split the work between them.
    config = settings(url, webhook_concurrency=n // 4)
    replicas = [WebhookDeliverer(config, s) for s in sessions]
    try:
        now = utcnow()
        counts = await asyncio.gather(*(r.run_once(now) for r in replicas for _ in range(6)))
        # A scan that lost every row it saw to the other replica claims nothing: what is
        # left is sent by later scans, never twice.
        while sum(counts) < n:
            counts += await asyncio.gather(*(r.run_once(now) for r in replicas))
            assert counts[-1] + counts[-2] > 0, "pending deliveries nobody claims"
    finally:
        for r in replicas:
            await r.close()
    assert sum(counts) == n
    rows = deliveries(sessions[0], webhook.id)
    assert [(r.state, r.last_error) for r in rows] == [("delivered", None)] * n
    assert all(r.attempts == 1 for r in rows)
    assert sorted(r.event_id for r in receiver.received) == sorted(r.event_id for r in rows)


async def test_replicas_never_send_the_same_attempt_twice_on_sqlite(
    sqlite_url: str, receiver: Receiver
) -> None:
    await _replicas_claim_concurrently(sqlite_url, receiver, 12)


async def test_replicas_never_send_the_same_attempt_twice_on_postgres(
    fresh_postgres_url: str, receiver: Receiver
) -> None:
    await _replicas_claim_concurrently(fresh_postgres_url, receiver, 24)


async def test_a_lease_held_by_a_dead_replica_is_taken_over_after_it_runs_out(
    sqlite_url: str, receiver: Receiver
) -> None:
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, receiver.url)
    receiver.secrets.append(webhook.secret)
    open_alert(sessions, t)
    config = settings(sqlite_url, webhook_lease_s=30.0, webhook_timeout_s=1.0)
    dead = WebhookDeliverer(config, sessions)
    alive = WebhookDeliverer(config, sessions)
    try:
        now = utcnow()
        token, claimed = await asyncio.to_thread(dead._claim, now, 10)  # then it "crashes"
        assert len(claimed) == 1
        assert await alive.run_once(now + timedelta(seconds=29)) == 0  # lease still held
        assert await alive.run_once(now + timedelta(seconds=31)) == 1
        # The dead replica's late outcome cannot overwrite the new holder's.
        await asyncio.to_thread(dead._record, claimed[0], token, 500, "HTTP 500", utcnow())
    finally:
        await dead.close()
        await alive.close()
    [row] = deliveries(sessions, webhook.id)
    assert (row.state, row.attempts, row.last_status_code) == ("delivered", 1, 200)
    assert orjson.loads(row.payload)["event_id"] == receiver.received[0].event_id
