"""Retention on both stores: archive then purge whole days, legal holds, dry runs, restores,
and verification of what remains across the signed retention checkpoints."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from elasticsearch import Elasticsearch
from sqlalchemy import delete, text, update

from audit.alerts.repository import AlertRepository
from audit.db.base import utcnow
from audit.errors import BusyError, NotFoundError
from audit.integrity.keys import Signer
from audit.integrity.merkle import leaf_hash, verify_inclusion
from audit.models import RetentionCheckpoint, RetentionLease
from audit.retention.repository import RetentionRepository
from audit.retention.schemas import HoldCreate
from audit.store.protocol import StoredEvent
from audit.tlog.service import TlogService
from tests.retention.conftest import HELD_JOB, OLD, RECENT, EnvFactory, RetentionEnv


def days(*when: object) -> list[str]:
    return [str(w.date()) for w in when]  # type: ignore[attr-defined]


async def first_remaining(env: RetentionEnv, stream: str) -> StoredEvent:
    async for event in env.store.scan(env.tenant, stream):
        return event
    raise AssertionError("nothing stored")


async def delete_stored(env: RetentionEnv, event: StoredEvent) -> None:
    """What someone with direct access to the store does behind the service's back."""
    if env.backend != "elasticsearch":  # the SQL store, in the control database
        with env.sessions.begin() as session:
            session.execute(
                text("DELETE FROM events WHERE tenant = :t AND doc_id = :d"),
                {"t": env.tenant, "d": event.doc_id},
            )
        return
    url = env.settings.elasticsearch_url or ""
    index = f"{env.settings.elasticsearch_index_prefix}-{env.tenant}-{event.timestamp:%Y.%m.%d}"
    with Elasticsearch(url) as client:
        client.delete(index=index, id=event.doc_id, refresh=True)


async def test_purge_keeps_the_held_day_and_what_remains_verifies(make_env: EnvFactory) -> None:
    env = make_env()
    await env.seed("cam-1", [*OLD, RECENT])
    await env.seed("cam-2", [OLD[0], RECENT])
    hold = await env.retention.place_hold(
        None, env.tenant, HoldCreate(scope="job", job=HELD_JOB, reason="case 7")
    )
    before = await env.per_day()

    dry = await env.retention.run(None, env.tenant, dry_run=True)
    plan = {str(d.day): d for d in dry.tenants[0].days}
    assert [name for name, d in plan.items() if d.purgeable] == days(OLD[0], OLD[2])
    assert plan[days(OLD[1])[0]].holds == [hold.id]
    assert plan[days(RECENT)[0]].keep_days == 180
    assert await env.per_day() == before  # a dry run changes nothing
    assert env.retention.archives(env.tenant) == []

    run = await env.retention.run(None, env.tenant, dry_run=False)
    assert run.status == "succeeded", run
    after = await env.per_day()
    for name in days(OLD[0], OLD[2]):
        assert name not in after
    for name in days(OLD[1], RECENT):
        assert after[name] == before[name]
    purged = before[days(OLD[0])[0]] + before[days(OLD[2])[0]]
    assert run.tenants[0].purged_records == purged
    archives = env.retention.archives(env.tenant)
    assert [(a.day, a.records) for a in archives] == [
        (name, before[name]) for name in days(OLD[0], OLD[2])
    ]
    assert all(a.purged_at is not None for a in archives)

    for stream in ("cam-1", "cam-2"):
        result = await env.verify(stream)
        assert result.failures == [], result.failures
        assert result.matches_head
    # cam-1 lost a middle day, cam-2 its first: one checkpoint per purged run of each.
    ranges = [(c.stream, c.first_sequence) for c in env.retention.checkpoints(env.tenant, None)]
    assert [s for s, _ in ranges] == ["cam-1", "cam-1", "cam-2"]
    assert {first for s, first in ranges if s == "cam-2"} == {1}
    actions = await env.actions()
    assert "hold.placed" in actions
    assert actions.count("retention.purged") == 2


async def test_a_released_hold_no_longer_keeps_its_day(make_env: EnvFactory) -> None:
    env = make_env()
    await env.seed("cam-1", [*OLD, RECENT])
    hold = await env.retention.place_hold(
        None, env.tenant, HoldCreate(scope="stream", stream="cam-1", reason="litigation")
    )
    held = await env.retention.run(None, env.tenant, dry_run=False)
    assert held.tenants[0].purged_records == 0
    await env.retention.release_hold(None, env.tenant, hold.id, "settled")
    run = await env.retention.run(None, env.tenant, dry_run=False)
    assert {str(d.day) for d in run.tenants[0].days if d.purged} == set(days(*OLD))
    assert (await env.verify("cam-1")).failures == []
    assert "hold.released" in await env.actions()


async def test_restore_brings_the_records_back_and_they_verify(make_env: EnvFactory) -> None:
    env = make_env()
    await env.seed("cam-1", [*OLD, RECENT])
    before = await env.per_day("cam-1")
    await env.retention.run(None, env.tenant, dry_run=False)
    middle = next(a for a in env.retention.archives(env.tenant) if a.day == days(OLD[1])[0])

    restored = await env.retention.restore(None, env.tenant, middle.id)
    assert restored.restored == middle.records
    after = await env.per_day("cam-1")
    assert after[middle.day] == before[middle.day]
    result = await env.verify("cam-1")
    assert result.failures == []
    assert result.matches_head
    assert "archive.restored" in await env.actions()
    assert env.retention.archives(env.tenant)[1].restored_at is not None

    # The next run purges the day again; the checkpoint already signed for it stands.
    again = await env.retention.run(None, env.tenant, dry_run=False)
    assert again.status == "succeeded"
    assert middle.day not in await env.per_day("cam-1")
    assert len(env.retention.checkpoints(env.tenant, "cam-1")) == 3
    assert (await env.verify("cam-1")).failures == []


async def test_verification_after_a_purge_still_detects_deletions(make_env: EnvFactory) -> None:
    env = make_env()
    await env.seed("cam-1", [*OLD, RECENT])
    await env.retention.run(None, env.tenant, dry_run=False)
    result = await env.verify("cam-1")
    assert result.failures == []
    # Progress counts towards what remains, not towards the head's sequence.
    head = result.head_sequence
    expected = await env.queries.expected_records(env.tenant, "cam-1", head)
    assert expected == result.records < head

    # A remaining record deleted in the store: the chain no longer reaches the checkpoint.
    first = await first_remaining(env, "cam-1")
    await delete_stored(env, first)
    result = await env.verify("cam-1")
    assert [(f.kind.value, f.sequence) for f in result.failures] == [("gap", first.sequence + 1)]

    # Without its retention checkpoints, the purged records are simply missing.
    with env.sessions.begin() as session:
        session.execute(delete(RetentionCheckpoint))
    result = await env.verify("cam-1")
    assert [f.kind.value for f in result.failures] == ["gap"]
    assert "missing sequences 1.." in result.failures[0].detail


async def test_a_forged_checkpoint_is_refused(make_env: EnvFactory) -> None:
    env = make_env()
    await env.seed("cam-1", [OLD[0], RECENT])
    await env.retention.run(None, env.tenant, dry_run=False)
    with env.sessions.begin() as session:
        row = session.query(RetentionCheckpoint).one()
        # Claim more was purged than was: someone deleting records 1..last+1 would need it.
        session.execute(
            update(RetentionCheckpoint).values(
                payload=row.payload.replace(
                    f'"last_sequence":{row.last_sequence}',
                    f'"last_sequence":{row.last_sequence + 1}',
                )
            )
        )
    result = await env.verify("cam-1")
    kinds = [f.kind.value for f in result.failures]
    assert kinds[0] == "bad_signature"
    assert "gap" in kinds


@pytest.mark.parametrize("make_env", ["sqlite"], indirect=True)
async def test_an_edit_after_a_purge_is_detected(make_env: EnvFactory) -> None:
    env = make_env()
    await env.seed("cam-1", [OLD[0], RECENT])
    await env.retention.run(None, env.tenant, dry_run=False)
    first = await first_remaining(env, "cam-1")
    with env.sessions.begin() as session:
        stored = session.execute(
            text("SELECT record FROM events WHERE tenant = :t AND doc_id = :d"),
            {"t": env.tenant, "d": first.doc_id},
        ).scalar_one()
        session.execute(
            text("UPDATE events SET record = :r WHERE tenant = :t AND doc_id = :d"),
            {"r": stored.replace('"success"', '"failure"'), "t": env.tenant, "d": first.doc_id},
        )
    result = await env.verify("cam-1")
    assert [(f.kind.value, f.sequence) for f in result.failures] == [("modified", first.sequence)]


@pytest.mark.parametrize("make_env", ["sqlite"], indirect=True)
async def test_one_run_at_a_time_across_replicas(make_env: EnvFactory) -> None:
    # Two replicas sharing one database, scheduled hourly.
    first, second = make_env(retention_interval_s=3600), make_env(retention_interval_s=3600)
    await first.seed("cam-1", [*OLD, RECENT])
    before = await first.per_day()
    ttl = first.settings.retention_lease_s
    with first.sessions.begin() as session:
        assert RetentionRepository(session).take_lease("replica-x", utcnow(), ttl)
    with pytest.raises(BusyError):
        await second.retention.run(None, None, dry_run=False)
    assert await second.retention.runner.tick() is None
    assert await first.per_day() == before  # the refused run touched nothing

    with first.sessions.begin() as session:
        RetentionRepository(session).drop_lease("replica-x", utcnow(), finished=False)
    ran = await second.retention.runner.tick()
    assert ran is not None
    assert ran.status == "succeeded"
    # It just ran (whichever replica did): the schedule is not due again on any replica.
    assert await first.retention.runner.tick() is None
    assert await second.retention.runner.tick() is None

    # The lease of a replica that died mid-run expires and is taken over.
    with first.sessions.begin() as session:
        session.execute(
            update(RetentionLease).values(
                holder="crashed", expires_at=utcnow() - timedelta(seconds=1)
            )
        )
    again = await first.retention.run(None, None, dry_run=False)
    assert again.status == "succeeded"


@pytest.mark.parametrize("make_env", ["sqlite"], indirect=True)
async def test_a_failed_run_is_recorded_and_alerts(make_env: EnvFactory) -> None:
    blocked = make_env().settings.retention_archive_dir.parent / "not-a-directory"
    blocked.write_text("the archive directory cannot be created here")
    env = make_env(retention_archive_dir=blocked / "archives")
    await env.seed("cam-1", [OLD[0], RECENT])
    before = await env.per_day("cam-1")
    run = await env.retention.run(None, env.tenant, dry_run=False)
    assert run.status == "failed"
    assert run.tenants[0].error
    assert await env.per_day("cam-1") == before  # nothing deleted without its archive
    with env.sessions() as session:
        alerts = AlertRepository(session).list(tenant_id=env.tenant, rule="retention_failed")
    assert [(a.severity, a.count) for a in alerts] == [("high", 1)]
    assert "retention.failed" in await env.actions()
    assert (await env.verify("cam-1")).failures == []


async def test_purged_leaves_stop_being_served_and_kept_ones_still_prove(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    await env.seed("cam-1", [*OLD, RECENT])
    await env.seed("cam-2", [OLD[0], RECENT])
    await env.retention.place_hold(
        None, env.tenant, HoldCreate(scope="job", job=HELD_JOB, reason="case 7")
    )
    tlog = TlogService(env.settings, env.sessions, Signer.generate().key)
    stored = {s: [e async for e in env.store.scan(env.tenant, s)] for s in ("cam-1", "cam-2")}
    await env.retention.run(None, env.tenant, dry_run=False)
    tlog.sign_now(env.tenant, "cam-1")
    tlog.sign_now(env.tenant, "cam-2")
    kept = {
        s: {e.sequence for e in [x async for x in env.store.scan(env.tenant, s)]} for s in stored
    }
    for stream, events in stored.items():
        first_kept = min(kept[stream])
        for event in events:
            if event.sequence < first_kept:
                # Purged, and every record before it too: its proof is no longer served.
                with pytest.raises(NotFoundError):
                    tlog.inclusion(env.tenant, stream, sequence=event.sequence)
                continue
            # Kept records prove against the new checkpoint; so do the records of a purged
            # day after a held one (cam-1's third day): only a prefix stops being served.
            proof = tlog.inclusion(env.tenant, stream, sequence=event.sequence)
            checkpoint = tlog.checkpoint(env.tenant, stream).split("\n")
            root = base64.b64decode(checkpoint[2])
            verify_inclusion(
                leaf_hash(bytes.fromhex(event.event_hash)),
                proof.index,
                proof.size,
                proof.hashes,
                root,
            )
