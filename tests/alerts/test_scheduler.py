"""The scheduler: custom threshold rules on every store, each closed window evaluated once
across restarts and replicas, a lease, bounded catch-up."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from audit.alerts.repository import AlertRepository
from audit.alerts.scheduler import LEASE, align_down
from audit.db.base import utcnow
from audit.models import AlertLease, AlertRule
from tests.alerts.conftest import T0, World, WorldFactory, after

FAILED_LOGIN: dict[str, Any] = {"event.action": "auth.failed", "event.outcome": "failure"}
ALICE, BOB, CAROL, DAVE = "a" * 64, "b" * 64, "c" * 64, "d" * 64
MINUTE = timedelta(minutes=1)


def failed_logins(world: World, **columns: Any) -> AlertRule:
    """More than 3 failed logins per user in a minute (windows side by side)."""
    spec: dict[str, Any] = {
        "name": "password spraying",
        "filters": {"actions": ["auth.failed"], "outcomes": [], "streams": [], "verdicts": []},
        "group_by": "user.hash",
        "window_s": 60,
        "step_s": 60,
        "threshold": 3,
    }
    return world.add_rule(**{**spec, **columns})


def watermark(world: World, rule: str) -> datetime | None:
    with world.sessions() as session:
        return AlertRepository(session).watermarks().get((rule, world.tenant))


async def test_custom_threshold_rule(world: World) -> None:
    rule = failed_logins(world)
    name = f"custom:{rule.id}"
    at = T0 + timedelta(seconds=10)
    await world.write(at, n=4, **FAILED_LOGIN, **{"user.hash": ALICE})
    await world.write(at, n=3, **FAILED_LOGIN, **{"user.hash": BOB})  # not more than 3
    await world.write(at + 2 * MINUTE, n=3, **FAILED_LOGIN, **{"user.hash": BOB})  # later
    await world.write(at, n=9, **{"user.hash": CAROL})  # not a failed login
    await world.write(at, n=2, stream="cam-2", **FAILED_LOGIN, **{"user.hash": DAVE})
    await world.write(at, n=2, stream="cam-3", **FAILED_LOGIN, **{"user.hash": DAVE})
    report = await world.tick(after(T0 + 3 * MINUTE))
    assert report.by_rule[name] == 3
    alerts = sorted(world.alerts(name), key=lambda a: a.dedup_key)
    assert [(a.rule, a.severity, a.dedup_key, a.detail["count"]) for a in alerts] == [
        (name, "high", f"{name}:{world.tenant}:{ALICE}", 4),
        (name, "high", f"{name}:{world.tenant}:{DAVE}", 4),  # the group spans streams
    ]
    assert alerts[0].title.startswith("password spraying: 4 records with user.hash")


async def test_custom_rule_filters_and_group_by_stream(world: World) -> None:
    rule = world.add_rule(
        name="broken records",
        filters={"verdicts": [], "streams": ["cam-2"], "actions": [], "outcomes": ["failure"]},
        group_by="stream",
        window_s=300,
        step_s=60,
        threshold=0,
    )
    await world.write(T0 + MINUTE, n=5, stream="cam-1", **FAILED_LOGIN)
    await world.write(T0 + MINUTE, n=1, stream="cam-2")  # success
    assert (await world.tick(after(T0 + 5 * MINUTE))).windows > 0
    assert world.alerts() == []
    await world.write(T0 + 6 * MINUTE, n=1, stream="cam-2", **FAILED_LOGIN)
    await world.tick(after(T0 + 8 * MINUTE))
    [alert] = world.alerts()
    assert (alert.rule, alert.stream_id) == (f"custom:{rule.id}", "cam-2")
    # Windows of 5 minutes ending every minute: the record is in two of them, one incident.
    assert alert.count == 2


async def test_restart_does_not_double_fire(world_factory: WorldFactory) -> None:
    world = world_factory()
    rule = failed_logins(world)
    name = f"custom:{rule.id}"
    await world.write(T0 + timedelta(seconds=10), n=5, **FAILED_LOGIN, **{"user.hash": ALICE})
    first = world.scheduler()
    report = await first.tick(after(T0 + 3 * MINUTE))
    assert (report.by_rule[name], report.alerts) == (3, 1)
    assert watermark(world, name) == T0 + 3 * MINUTE
    # A new service instance on the same database while the first still runs: it waits.
    second = world.scheduler()
    assert not (await second.tick(after(T0 + 3 * MINUTE))).leader
    # The first one stops (hands the lease back); the restarted one starts where it ended.
    await first.release()
    again = await second.tick(after(T0 + 3 * MINUTE))
    assert again.leader
    assert (again.windows, again.alerts) == (0, 0)
    [alert] = world.alerts(name)
    assert alert.count == 1
    # Later traffic and a longer pause: it catches up exactly the windows it missed.
    await world.write(T0 + 7 * MINUTE, n=4, **FAILED_LOGIN, **{"user.hash": ALICE})
    later = await second.tick(after(T0 + 10 * MINUTE))
    assert (later.by_rule[name], later.alerts) == (7, 1)
    assert watermark(world, name) == T0 + 10 * MINUTE
    [alert] = world.alerts(name)
    assert alert.count == 2  # the same incident (within the suppression window)


async def test_a_crashed_leader_is_replaced_when_its_lease_runs_out(world: World) -> None:
    failed_logins(world)
    crashed = world.scheduler()
    assert (await crashed.tick(after(T0))).leader  # and never releases
    waiting = world.scheduler()
    assert not (await waiting.tick(after(T0 + MINUTE))).leader
    lease = timedelta(seconds=world.settings.alert_lease_s)
    later = world.scheduler(clock=lambda: utcnow() + lease + timedelta(seconds=1))
    assert (await later.tick(after(T0 + MINUTE))).leader
    with world.sessions() as session:
        row = session.get(AlertLease, LEASE)
        assert row is not None
        assert row.holder == later.holder


async def test_racing_evaluators_commit_each_window_once(world: World) -> None:
    rule = failed_logins(world)
    for minute in range(6):
        await world.write(T0 + minute * MINUTE, n=4, **FAILED_LOGIN, **{"user.hash": ALICE})
    # Two replicas that both believe they may evaluate (the lease ran out mid-tick).
    a, b = world.scheduler(), world.scheduler()
    now = after(T0 + 6 * MINUTE)
    reports = await asyncio.gather(a.tick(now, lease=False), b.tick(now, lease=False))
    assert sum(r.by_rule.get(f"custom:{rule.id}", 0) for r in reports) == 6
    [alert] = world.alerts(f"custom:{rule.id}")
    assert alert.count == 6  # one sighting per window, none twice


async def test_catch_up_is_bounded(world_factory: WorldFactory) -> None:
    world = world_factory(alert_max_catchup_windows=3)
    rule = failed_logins(world)
    report = await world.tick(after(T0 + 10 * MINUTE))
    assert (report.by_rule[f"custom:{rule.id}"], report.skipped) == (3, 7)
    assert watermark(world, f"custom:{rule.id}") == T0 + 10 * MINUTE


async def test_windows_are_aligned_and_wait_for_late_records(world: World) -> None:
    rule = failed_logins(world)
    name = f"custom:{rule.id}"
    await world.tick(T0 + MINUTE + timedelta(seconds=29))  # the delay has not passed yet
    assert watermark(world, name) is None
    await world.tick(T0 + 2 * MINUTE + timedelta(seconds=47))
    through = watermark(world, name)
    assert through == T0 + 2 * MINUTE
    assert through == align_down(through, MINUTE)


async def test_a_changed_rule_starts_again_from_its_change(world: World) -> None:
    rule = failed_logins(world)
    await world.tick(after(T0 + 2 * MINUTE))
    with world.sessions.begin() as session:
        row = AlertRepository(session).get_rule(world.tenant, rule.id)
        assert row is not None
        row.updated_at = T0 + 5 * MINUTE
        AlertRepository(session).forget_watermarks(f"custom:{rule.id}")
    await world.write(T0 + 3 * MINUTE, n=5, **FAILED_LOGIN, **{"user.hash": ALICE})
    report = await world.tick(after(T0 + 6 * MINUTE))
    assert world.alerts() == []  # the burst came before the change
    assert watermark(world, f"custom:{rule.id}") == T0 + 6 * MINUTE
    assert report.by_rule[f"custom:{rule.id}"] == 1
