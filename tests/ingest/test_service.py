"""Verification at ingest against a real control database and event store (SQLite here)."""

from __future__ import annotations

import asyncio
import base64
import random
from typing import Any

from audit.alerts.repository import AlertRepository
from audit.integrity.chain import record_hash
from audit.integrity.keys import Signer

from .conftest import Env, Factory, make_records


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in record.items() if k != "event.hash"}
    record["event.hash"] = record_hash(record)
    return record


def alerts(env: Env) -> list[tuple[str, str]]:
    with env.service._sessions() as session:
        return [(a.rule, a.detail.get("kind", "")) for a in AlertRepository(session).list()]


async def test_in_order_stream_is_accepted_and_heads_advance(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 12)
    report = await env.service.ingest(records, source="test")
    assert report.counts() == {"ok": len(records)}
    head = env.streams.read("cam-1")
    assert head.head_sequence == len(records)
    assert head.head_hash == records[-1]["event.hash"]
    assert head.signed_through == len(records)
    assert head.closed
    assert await env.store.count("acme", "cam-1") == len(records)
    stored = [e async for e in env.store.scan("acme", "cam-1")]
    assert [e.record for e in stored] == records
    assert {e.verdict for e in stored} == {"ok"}


async def test_resending_is_idempotent(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 8)
    await env.service.ingest(records[:5], source="test")
    report = await env.service.ingest(records, source="test")
    assert report.counts() == {"duplicate": 5, "ok": len(records) - 5}
    assert await env.store.count("acme", "cam-1") == len(records)
    assert alerts(env) == []


async def test_modified_record_is_kept_aside_flagged_and_alerted(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 8)
    genuine = records[2]
    records[2] = {**records[2], "event.outcome": "failure"}
    report = await env.service.ingest(records, source="test")
    outcomes = [(r.sequence, r.outcome, r.failure) for r in report.results]
    assert outcomes[:3] == [(1, "ok", None), (2, "ok", None), (3, "rejected", "modified")]
    assert {o for _, o, _ in outcomes[3:]} == {"pending"}  # the sequence stays open
    # Filed under what its content hashes to: never under the genuine record's names.
    stored = await env.store.get("acme", f"cam-1:3:{record_hash(records[2])[:16]}")
    assert stored is not None
    assert stored.record["event.outcome"] == "failure"
    assert stored.verdict == "rejected"
    assert ("integrity_failure", "modified") in alerts(env)
    # The genuine record still takes its place, and the chain runs on.
    late = await env.service.ingest([genuine], source="test")
    assert [(r.outcome, r.failure) for r in late.results] == [("ok", None)]
    assert env.streams.read("cam-1").head_hash == records[-1]["event.hash"]


async def test_edited_and_rehashed_record_is_exposed_by_the_next_checkpoint(
    env_factory: Factory,
) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 8, close=False)
    records[2] = rehash({**records[2], "event.outcome": "failure"})
    report = await env.service.ingest(records, source="test")
    # Record 4 does not link to the edited 3; the checkpoint at 5 commits to 4, and so to
    # the genuine 3: the edited one is forged, the genuine one is missing (a gap).
    assert [(r.sequence, r.outcome, r.failure) for r in report.results if r.outcome != "ok"] == [
        (3, "rejected", "forged"),
        (4, "broken", "gap"),
    ]
    assert ("chain_attack", "forged") in alerts(env)
    assert env.streams.read("cam-1").head_hash == records[-1]["event.hash"]


async def test_fork_keeps_both_records_and_flags_both(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 8, close=False)
    await env.service.ingest(records[:8], source="test")  # signed through 5
    rival = rehash({**records[6], "event.outcome": "failure", "event.id": "rival"})
    report = await env.service.ingest([rival], source="test")
    assert [(r.sequence, r.outcome, r.failure) for r in report.results] == [(7, "broken", "fork")]
    first = await env.store.get("acme", "cam-1:7")
    second = await env.store.get("acme", f"cam-1:7:{rival['event.hash'][:16]}")
    assert first is not None
    assert second is not None
    assert (first.verdict, first.failure) == ("broken", "fork")
    assert second.record == rival
    assert ("fork", "fork") in alerts(env)  # its own rule in the alert catalogue
    # The fork does not move the accepted head.
    assert env.streams.read("cam-1").head_hash == records[7]["event.hash"]


async def test_reordering_in_transit_is_tolerated(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 30)
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    for start in range(0, len(shuffled), 4):  # several batches, each out of order
        await env.service.ingest(shuffled[start : start + 4], source="test")
    stored = [e async for e in env.store.scan("acme", "cam-1")]
    assert [e.sequence for e in stored] == list(range(1, len(records) + 1))
    assert {(e.verdict, e.failure) for e in stored} == {("ok", None)}
    assert env.streams.read("cam-1").head_sequence == len(records)
    assert alerts(env) == []


async def test_persistent_gap_is_flagged_and_the_chain_goes_on(env_factory: Factory) -> None:
    env = env_factory(reorder_window=3)
    env.register()
    records = make_records(env.signer, 12, close=False)
    del records[4]  # sequence 5 never arrives
    report = await env.service.ingest(records, source="test")
    assert ("sequence_gap", "") in alerts(env)
    after = await env.store.get("acme", "cam-1:6")
    assert after is not None
    assert (after.verdict, after.failure) == ("broken", "gap")
    assert env.streams.read("cam-1").head_sequence == records[-1]["event.sequence"]
    assert report.counts()["ok"] >= len(records) - 4


async def test_gap_times_out_without_new_records(env_factory: Factory) -> None:
    env = env_factory(gap_timeout_s=0.05)
    env.register()
    records = make_records(env.signer, 6, close=False)
    report = await env.service.ingest(records[:2] + records[3:], source="test")
    assert report.counts() == {"ok": 2, "pending": len(records) - 3}
    await asyncio.sleep(0.1)
    await env.service.sweep_gaps()
    assert ("sequence_gap", "") in alerts(env)
    assert env.streams.read("cam-1").head_sequence == len(records)
    # The missing record arriving late is kept, flagged, not dropped.
    late = await env.service.ingest([records[2]], source="test")
    assert [(r.outcome, r.failure) for r in late.results] == [("broken", "late")]


async def test_unknown_stream_is_quarantined_and_alerted(env_factory: Factory) -> None:
    env = env_factory()
    records = make_records(env.signer, 3)
    report = await env.service.ingest(records, source="test", peer="10.0.0.1:5000")
    assert len(report.quarantined) == len(records)
    assert report.results == []
    assert ("unknown_stream", "") in alerts(env)
    assert await env.store.count("acme") == 0


async def test_another_tenants_name_is_another_stream(env_factory: Factory) -> None:
    # Stream names are per tenant: records claiming "other" are for other's cam-1, which
    # is not registered, whatever acme's cam-1 is.
    env = env_factory()
    env.register(tenant="acme")
    records = make_records(env.signer, 3, tenant="other")
    report = await env.service.ingest(records, source="test")
    assert [reason for _, reason in report.quarantined] == ["unknown stream"] * len(records)
    assert await env.store.count("other") == 0
    assert await env.store.count("acme") == 0
    assert env.streams.read("cam-1", "acme").head_sequence == 0


async def test_malformed_records_are_quarantined_not_dropped(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records: list[object] = [*make_records(env.signer, 2, close=False)]
    records += [{"event.sequence": 3}, "text", {**records[0], "ffaudit.ingest.verdict": "ok"}]  # type: ignore[dict-item]
    report = await env.service.ingest(records, source="test")
    assert report.counts() == {"ok": 2, "quarantined": 3}
    assert [i for i, _ in report.quarantined] == [2, 3, 4]


async def test_checkpoint_signed_by_another_key(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(Signer.generate(), 4)
    report = await env.service.ingest(records, source="test")
    checkpoints = [r["event.sequence"] for r in records if r["event.action"] == "audit.checkpoint"]
    # A checkpoint under another key proves nothing and takes no place in the chain.
    assert [(r.sequence, r.failure) for r in report.results if r.outcome == "rejected"] == [
        (seq, "wrong_key") for seq in checkpoints
    ]
    assert env.streams.read("cam-1").signed_through == 0
    assert env.streams.read("cam-1").head_sequence == checkpoints[0] - 1


async def test_damaged_signature(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 4)
    raw = bytearray(base64.b64decode(records[4]["ffaudit.signature"]))
    raw[0] ^= 1
    records[4] = {**records[4], "ffaudit.signature": base64.b64encode(bytes(raw)).decode()}
    report = await env.service.ingest(records, source="test")
    # Kept aside on its own word; the closing checkpoint after it verifies and commits to
    # its content, so it is placed, flagged for its signature alone.
    assert [(r.sequence, r.outcome, r.failure) for r in report.results if r.outcome != "ok"] == [
        (5, "broken", "bad_signature")
    ]
    assert ("integrity_failure", "bad_signature") in alerts(env)
    head = env.streams.read("cam-1")
    assert (head.head_sequence, head.signed_through, head.closed) == (6, 6, True)


async def test_two_replicas_never_accept_conflicting_heads(env_factory: Factory) -> None:
    a, b = env_factory(), env_factory()
    a.register()
    records = make_records(a.signer, 40)
    forked = [rehash({**r, "event.id": f"other-{i}"}) for i, r in enumerate(records)]
    # Each replica receives a different history for the same stream, concurrently.
    await asyncio.gather(
        *(a.service.ingest(records[i : i + 5], source="a") for i in range(0, len(records), 5)),
        *(b.service.ingest(forked[i : i + 5], source="b") for i in range(0, len(forked), 5)),
    )
    head = a.streams.read("cam-1")
    # Replica b's writes are searchable through a's store within the refresh interval;
    # make them visible now (a store always sees its own writes at once).
    await a.store.refresh()
    stored = [e async for e in a.store.scan("acme", "cam-1")]
    by_seq: dict[int, list[str]] = {}
    for e in stored:
        by_seq.setdefault(e.sequence, []).append(e.event_hash)
    # Every sequence is held by exactly one accepted record per history, never lost.
    # Every record is stored once (a plan made after a lost race keeps its earlier name).
    assert all(len(hashes) == len(set(hashes)) == 2 for hashes in by_seq.values()), by_seq
    assert head.head_hash in {records[-1]["event.hash"], forked[-1]["event.hash"]}
    assert any(rule == "integrity_failure" for rule, _ in alerts(a))
