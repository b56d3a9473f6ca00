"""Scheduled re-verification finds a store edited after ingest, without anyone asking, on
SQLite and on Elasticsearch; what ingest already flagged is not reported again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from audit.alerts.repository import AlertRepository
from audit.query.keyrings import TenantKeyrings
from audit.query.service import QueryService, describe
from audit.reverify.service import Reverifier
from audit.store.elastic import ElasticEventStore

from .conftest import Env, Factory, make_records


def reverifier(env: Env, tmp_path: Path, **options: Any) -> Reverifier:
    queries = QueryService(env.store, TenantKeyrings(tmp_path / "kr"), env.streams, verify_jobs=2)
    return Reverifier(env.settings, env.service._sessions, queries, **options)


def alerts(env: Env) -> list[tuple[str, dict[str, Any]]]:
    with env.service._sessions() as session:
        return [(a.rule, a.detail) for a in AlertRepository(session).list()]


async def tamper(env: Env, doc_id: str, change: dict[str, Any]) -> None:
    """An edit made inside the event store, behind the service's back."""
    stored = await env.store.get("acme", doc_id)
    assert stored is not None
    record = {**stored.record, **change}
    if isinstance(env.store, ElasticEventStore):
        client = env.store.client
        found = await client.search(
            index=env.store._pattern("acme"), query={"ids": {"values": [doc_id]}}
        )
        index = found["hits"]["hits"][0]["_index"]
        await client.update(
            index=index, id=doc_id, doc={"ffaudit.ingest.record": record}, refresh=True
        )
    else:
        url = env.settings.event_store_database_url
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE events SET record = :r WHERE doc_id = :d"),
                {"r": json.dumps(record), "d": doc_id},
            )
        engine.dispose()


async def test_an_edit_inside_the_store_opens_a_critical_alert(
    env_factory: Factory, tmp_path: Path
) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 12, close=False)
    await env.service.ingest(records[:8], source="test")
    job = reverifier(env, tmp_path)
    first = await job.tick()
    assert (first.streams, first.full, first.tampered) == (1, 1, [])
    assert first.offloaded == 0  # 8 records: verified in this process
    [mark] = job.marks("acme")
    assert (mark.verified_through, mark.ok) == (8, True)
    # New records: the next pass reads only those (incremental).
    await env.service.ingest(records[8:], source="test")
    second = await job.tick()
    assert (second.full, second.records, second.tampered) == (0, len(records) - 8, [])
    # An old record edited in the store (job.failed -> success, say): an incremental pass
    # does not read it, the periodic full pass does.
    await tamper(env, "cam-1:3", {"event.outcome": "failure"})
    # Every read shows it at once: its verdict is ingest's, `intact` is checked on read.
    edited = await env.store.get("acme", "cam-1:3")
    untouched = await env.store.get("acme", "cam-1:4")
    assert edited is not None
    assert untouched is not None
    assert (describe(edited)["verdict"], describe(edited)["intact"]) == ("ok", False)
    assert describe(untouched)["intact"] is True
    assert (await job.tick()).tampered == []
    found = await job.tick(full=True)
    assert found.tampered == ["acme/cam-1"]
    [detail] = [d for rule, d in alerts(env) if rule == "store_tampered"]
    assert detail["failures"][0]["record_id"] == "cam-1:3"
    assert detail["failures"][0]["kind"] == "modified"
    [mark] = job.marks("acme")
    assert mark.ok is False
    assert mark.verified_through == len(records)  # not moved past the damage


async def test_what_ingest_flagged_is_not_store_damage(
    env_factory: Factory, tmp_path: Path
) -> None:
    env = env_factory(reorder_window=2)
    env.register()
    records = make_records(env.signer, 12, close=False)
    del records[4]  # a gap, flagged at ingest
    await env.service.ingest(records, source="test")
    job = reverifier(env, tmp_path)
    assert (await job.tick()).tampered == []
    assert (await job.tick(full=True)).tampered == []
    assert [r for r, _ in alerts(env) if r == "store_tampered"] == []
    [mark] = job.marks("acme")
    assert mark.ok is True


async def test_records_not_yet_placed_are_not_store_damage(
    env_factory: Factory, tmp_path: Path
) -> None:
    # Records waiting for a missing predecessor are stored beyond the head; so are those
    # ingest is placing while a pass runs. Neither is the accepted chain yet.
    env = env_factory()
    env.register()
    records = make_records(env.signer, 8, close=False)
    report = await env.service.ingest(records[:3] + records[4:6], source="test")
    assert report.counts() == {"ok": 3, "pending": 2}
    job = reverifier(env, tmp_path)
    assert (await job.tick()).tampered == []
    [mark] = job.marks("acme")
    assert (mark.verified_through, mark.ok) == (3, True)
    await env.service.ingest(records[3:], source="test")
    assert (await job.tick()).tampered == []
    assert job.marks("acme")[0].verified_through == len(records)


async def test_a_pass_over_many_records_runs_in_worker_processes_and_finds_the_same_edit(
    env_factory: Factory, tmp_path: Path
) -> None:
    # The re-verifier shares its process with ingest: a stream with many records after its
    # mark is read and verified by worker processes, not on the event loop ingest needs.
    env = env_factory()
    env.register()
    records = make_records(env.signer, 30, close=False)  # checkpoints among them
    await env.service.ingest(records[:20], source="test")
    job = reverifier(env, tmp_path, offload_from=10)
    first = await job.tick()
    assert (first.full, first.records, first.offloaded, first.tampered) == (1, 20, 1, [])
    assert job.marks("acme")[0].verified_through == records[19]["event.sequence"]
    await env.service.ingest(records[20:], source="test")
    second = await job.tick()  # only those after the mark, still more than 10
    assert (second.full, second.offloaded, second.tampered) == (0, 1, [])
    assert second.records == len(records) - 20
    assert job.marks("acme")[0].verified_through == records[-1]["event.sequence"]
    edited = f"cam-1:{records[5]['event.sequence']}"
    await tamper(env, edited, {"event.outcome": "failure"})
    found = await job.tick(full=True)
    assert (found.offloaded, found.tampered) == (1, ["acme/cam-1"])
    [detail] = [d for rule, d in alerts(env) if rule == "store_tampered"]
    assert (detail["failures"][0]["record_id"], detail["failures"][0]["kind"]) == (
        edited,
        "modified",
    )
    [mark] = job.marks("acme")
    assert (mark.ok, mark.verified_through) == (False, records[-1]["event.sequence"])


async def test_a_stream_another_replica_just_wrote_is_not_store_damage(
    env_factory: Factory, tmp_path: Path
) -> None:
    # Replica A writes and commits the head; replica B, which never wrote to this tenant,
    # re-verifies at once. B's store had nothing of its own to make visible, yet the head it
    # reads covers A's writes: if B read the store without making them visible (an
    # Elasticsearch refresh), the chain would end before the head and B would cry tampering.
    a = env_factory()
    b = env_factory()
    a.register()
    records = make_records(a.signer, 20, close=False)
    first, rest = records[:12], records[12:]
    await a.service.ingest(first, source="test")
    result = await QueryService(b.store, TenantKeyrings(tmp_path / "kr"), b.streams).verify_stream(
        "acme", "cam-1", through_head=True
    )
    assert (result.records, result.matches_head, result.failures) == (len(first), True, [])
    await a.service.ingest(rest, source="test")
    assert (await reverifier(b, tmp_path, offload_from=1).tick()).tampered == []
    assert [r for r, _ in alerts(b) if r == "store_tampered"] == []
