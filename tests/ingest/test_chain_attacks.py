"""A writer of a stream who sends records that are not the producer's: forged, edited or
re-linked copies, sent before or after the genuine ones. Whatever the order, the genuine
records end up as the chain (ok), the others are kept aside as evidence (rejected) and
verification blames them, not the genuine records.

The attacker here is authenticated (a producer bound to the stream), the strongest case:
producer binding keeps everyone else out before any of this runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit.alerts.repository import AlertRepository
from audit.integrity.chain import record_hash
from audit.producers.schemas import ProducerIdentity
from audit.query.keyrings import TenantKeyrings
from audit.query.service import QueryService, StreamVerification

from .conftest import Env, Factory, make_records

# The stream's own producer identity, misbehaving: it may write cam-1.
INSIDER = ProducerIdentity(id="p-1", name="engine-b", tenant="acme", streams=("cam-1",))


def forge(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A well-formed forgery: content changed, event.hash recomputed, the link kept (or
    changed, when `changes` names ffaudit.prev)."""
    body = {k: v for k, v in record.items() if k != "event.hash"}
    body.update(changes)
    body["event.hash"] = record_hash(body)
    return body


async def ingest(env: Env, records: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    report = await env.service.ingest(records, source="forward", producer=INSIDER)
    return [(r.sequence, r.outcome, r.failure) for r in report.results]


async def verify(env: Env, tmp_path: Path) -> StreamVerification:
    query = QueryService(env.store, TenantKeyrings(tmp_path / "keyrings"), env.streams)
    return await query.verify_stream("acme", "cam-1")


def rules(env: Env) -> list[str]:
    with env.service._sessions() as session:
        return [a.rule for a in AlertRepository(session).list()]


async def verdicts(env: Env) -> dict[str, tuple[int, str, str | None]]:
    await env.store.refresh()
    return {
        e.event_hash: (e.sequence, e.verdict, e.failure)
        async for e in env.store.scan("acme", "cam-1")
    }


async def doc_ids(env: Env) -> dict[str, str]:
    await env.store.refresh()
    return {e.event_hash: e.doc_id async for e in env.store.scan("acme", "cam-1")}


async def blamed_ids(env: Env, tmp_path: Path) -> set[tuple[str, int | None, str | None]]:
    report = await verify(env, tmp_path)
    assert report.matches_head
    return {(f.kind.value, f.sequence, f.record_id) for f in report.failures}


async def test_a_record_that_does_not_link_never_takes_the_genuine_records_place(
    env_factory: Factory, tmp_path: Path
) -> None:
    # The reported attack: a copy of record 6 with a recomputed hash and link arrives
    # first. It used to be filed as stream:6, the genuine 6 as a "fork", and verification
    # blamed the intact record 5 as modified.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 12)
    assert await ingest(env, genuine[:5]) == [(s, "ok", None) for s in range(1, 6)]
    fake = forge(genuine[5], **{"event.outcome": "failure", "ffaudit.prev": "ab" * 32})
    assert await ingest(env, [fake]) == [(6, "rejected", "broken_link")]
    outcomes = await ingest(env, genuine[5:])
    assert {o for _, o, _ in outcomes} == {"ok"}
    stored = await verdicts(env)
    # Proven so by the next signed checkpoint, whose chain runs through the genuine 6.
    assert stored[fake["event.hash"]] == (6, "rejected", "forged")
    assert {stored[r["event.hash"]][1:] for r in genuine} == {("ok", None)}
    ids = await doc_ids(env)
    assert await blamed_ids(env, tmp_path) == {("inserted", 6, ids[fake["event.hash"]])}
    assert "integrity_failure" in rules(env)
    assert env.streams.read("cam-1").head_hash == genuine[-1]["event.hash"]


async def test_an_edited_record_never_takes_the_genuine_records_place(
    env_factory: Factory, tmp_path: Path
) -> None:
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 12)
    await ingest(env, genuine[:5])
    edited = {**genuine[5], "event.outcome": "failure"}  # hash not recomputed
    assert await ingest(env, [edited]) == [(6, "rejected", "modified")]
    assert {o for _, o, _ in await ingest(env, genuine[5:])} == {"ok"}
    ids = await doc_ids(env)
    assert len(ids) == len(genuine)  # the edited copy claims the genuine record's hash
    assert env.streams.read("cam-1").head_hash == genuine[-1]["event.hash"]
    report = await verify(env, tmp_path)
    assert [(f.kind.value, f.sequence, f.record_id) for f in report.failures] == [
        ("inserted", 6, f"cam-1:6:{record_hash(edited)[:16]}")  # its content names it
    ]
    placed = await env.store.get("acme", "cam-1:6")
    assert placed is not None
    assert (placed.record, placed.verdict) == (genuine[5], "ok")
    assert report.stored_last_sequence == genuine[-1]["event.sequence"]


@pytest.mark.parametrize("forgery_first", [True, False])
async def test_a_well_formed_forgery_is_settled_by_the_next_signed_checkpoint(
    env_factory: Factory, tmp_path: Path, forgery_first: bool
) -> None:
    # A forgery that hashes and links correctly looks valid until a signed checkpoint covers
    # one branch: records after the last verified checkpoint are provisional.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 14)  # checkpoints at 5, 10, 15, 18 (closing)
    assert genuine[4]["event.action"] == genuine[9]["event.action"] == "audit.checkpoint"
    await ingest(env, genuine[:6])  # signed through 5, record 6 provisional
    fake = forge(genuine[6], **{"event.outcome": "failure"})  # sequence 7, links to 6
    if forgery_first:
        assert await ingest(env, [fake]) == [(7, "ok", None)]  # nothing can tell yet
        first = await ingest(env, genuine[6:8])
        assert first[0] == (7, "broken", "fork")
    else:
        await ingest(env, genuine[6:8])
        assert await ingest(env, [fake]) == [(7, "broken", "fork")]
    await ingest(env, genuine[8:])  # ... up to the checkpoint at 10 and beyond
    stored = await verdicts(env)
    assert stored[fake["event.hash"]] == (7, "rejected", "forged")
    assert {stored[r["event.hash"]][1:] for r in genuine} == {("ok", None)}
    head = env.streams.read("cam-1")
    assert (head.head_hash, head.closed) == (genuine[-1]["event.hash"], True)
    assert head.signed_through == genuine[-1]["event.sequence"]
    ids = await doc_ids(env)
    assert await blamed_ids(env, tmp_path) == {("inserted", 7, ids[fake["event.hash"]])}
    assert "chain_attack" in rules(env)


async def test_a_forged_branch_that_ran_ahead_is_undone(
    env_factory: Factory, tmp_path: Path
) -> None:
    # The insider sends a whole forged continuation (6..9, each linking to the last) before
    # the genuine records arrive: they are accepted provisionally, then the genuine
    # checkpoint at 10 proves the other branch.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 14)
    await ingest(env, genuine[:5])  # signed through 5
    forged: list[dict[str, Any]] = []
    prev = genuine[4]["event.hash"]
    for record in genuine[5:9]:
        fake = forge(record, **{"event.outcome": "failure", "ffaudit.prev": prev})
        forged.append(fake)
        prev = fake["event.hash"]
    assert {o for _, o, _ in await ingest(env, forged)} == {"ok"}
    assert env.streams.read("cam-1").head_sequence == 9
    await ingest(env, genuine[5:])
    stored = await verdicts(env)
    assert {stored[r["event.hash"]][1:] for r in forged} == {("rejected", "forged")}
    assert {stored[r["event.hash"]][1:] for r in genuine} == {("ok", None)}
    head = env.streams.read("cam-1")
    assert head.head_hash == genuine[-1]["event.hash"]
    ids = await doc_ids(env)
    assert await blamed_ids(env, tmp_path) == {
        ("inserted", r["event.sequence"], ids[r["event.hash"]]) for r in forged
    }
    assert "chain_attack" in rules(env)


async def test_a_rival_of_a_signed_record_is_rejected_at_once(
    env_factory: Factory, tmp_path: Path
) -> None:
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 8)
    await ingest(env, genuine)
    fake = forge(genuine[3], **{"event.outcome": "failure"})
    assert await ingest(env, [fake]) == [(4, "rejected", "forged")]
    stored = await verdicts(env)
    assert {stored[r["event.hash"]][1:] for r in genuine} == {("ok", None)}
    ids = await doc_ids(env)
    assert await blamed_ids(env, tmp_path) == {("inserted", 4, ids[fake["event.hash"]])}
    assert "chain_attack" in rules(env)


async def test_a_forged_checkpoint_never_replaces_a_verified_one(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 8, close=False)
    await ingest(env, genuine[:6])
    fake = {**genuine[4], "ffaudit.signature": genuine[4]["ffaudit.signature"][::-1]}
    assert await ingest(env, [fake]) == [(5, "duplicate", None)]  # same hash: a copy
    other = forge(genuine[4], **{"event.outcome": "failure"})  # signature no longer fits
    assert await ingest(env, [other]) == [(5, "rejected", "bad_signature")]
    assert env.streams.read("cam-1").signed_through == 5
    assert {o for _, o, _ in await ingest(env, genuine[6:])} == {"ok"}


async def test_an_altered_resend_is_modified_not_a_duplicate(env_factory: Factory) -> None:
    # Same event.hash as a stored record, other content: ingest called it "duplicate" (200,
    # no alert) while offline verification calls it modified.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 8)
    await ingest(env, genuine)
    altered = {**genuine[2], "event.outcome": "failure"}
    assert await ingest(env, [altered]) == [(3, "rejected", "modified")]
    assert await ingest(env, [altered]) == [(3, "duplicate", None)]  # the same edit again
    assert await ingest(env, [genuine[2]]) == [(3, "duplicate", None)]
    assert "integrity_failure" in rules(env)
    placed = await env.store.get("acme", "cam-1:3")
    assert placed is not None
    assert (placed.record, placed.verdict) == (genuine[2], "ok")


async def test_a_forgery_that_waited_ahead_keeps_its_name_and_loses_its_place(
    env_factory: Factory, tmp_path: Path
) -> None:
    # Sent ahead of a gap, the forgery waits under the sequence's plain name; when the gap
    # fills it does not link and is kept aside, and the genuine record then finds its name
    # taken: the create-only write and adoption settle it (no read on the hot path).
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 12)
    await ingest(env, genuine[:5])
    fake = forge(genuine[6], **{"ffaudit.prev": "cd" * 32})
    assert await ingest(env, [fake]) == [(7, "pending", None)]
    assert await ingest(env, [genuine[5]]) == [(6, "ok", None)]
    assert await ingest(env, genuine[6:]) == [
        (r["event.sequence"], "ok", None) for r in genuine[6:]
    ]
    stored = await verdicts(env)
    assert stored[fake["event.hash"]][1] == "rejected"
    assert {stored[r["event.hash"]][1:] for r in genuine} == {("ok", None)}
    assert await blamed_ids(env, tmp_path) == {("inserted", 7, "cam-1:7")}
