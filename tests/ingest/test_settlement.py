"""Settlement by a verified checkpoint (docs/record-spec.md §7.1) leaves the verdict it
decides in the store, whatever was decided before it and whichever call carried what.

* A checkpoint whose signature fails is kept aside; a later verified checkpoint that commits
  to it places it, flagged with its failure, also when the two arrive in separate calls
  (the earlier rejection is known from the store, not from the current call).
* A fork found and settled within one call: the settlement's verdicts are stored, never the
  `fork` verdict queued for the same records earlier in that call.
* A checkpoint whose own signature fails, above the checkpoint that settles a fork, stays
  evidence (it links, but nothing proves it yet) until a later verified checkpoint.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from audit.alerts.repository import AlertRepository
from audit.query.keyrings import TenantKeyrings
from audit.query.service import QueryService

from .conftest import Env, Factory, make_records
from .test_chain_attacks import forge


async def ingest(env: Env, records: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    report = await env.service.ingest(records, source="test")
    return [(r.sequence, r.outcome, r.failure) for r in report.results]


async def stored(env: Env) -> dict[str, tuple[int, str, str | None, str]]:
    """event.hash -> (sequence, verdict, failure, doc id), for every stored record."""
    await env.store.refresh()
    return {
        e.event_hash: (e.sequence, e.verdict, e.failure, e.doc_id)
        async for e in env.store.scan("acme", "cam-1")
    }


def rules(env: Env) -> list[str]:
    with env.service._sessions() as session:
        return [a.rule for a in AlertRepository(session).list()]


def damage(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """The checkpoint with its signature damaged; its content (and event.hash) unchanged."""
    if kind == "missing_signature":
        return {k: v for k, v in record.items() if k != "ffaudit.signature"}
    raw = bytearray(base64.b64decode(record["ffaudit.signature"]))
    raw[7] ^= 0x01
    return {**record, "ffaudit.signature": base64.b64encode(bytes(raw)).decode()}


@pytest.mark.parametrize("kind", ["bad_signature", "missing_signature"])
@pytest.mark.parametrize("one_per_call", [True, False])
async def test_a_damaged_checkpoint_is_placed_by_a_later_call_s_verified_checkpoint(
    env_factory: Factory, tmp_path: Path, kind: str, one_per_call: bool
) -> None:
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 12)  # checkpoints at 5, 10, 15 and 16 (closing)
    assert genuine[4]["event.action"] == genuine[9]["event.action"] == "audit.checkpoint"
    damaged = damage(genuine[4], kind)
    assert await ingest(env, genuine[:4]) == [(s, "ok", None) for s in range(1, 5)]
    assert await ingest(env, [damaged]) == [(5, "rejected", kind)]
    following = genuine[5:9]  # 6..9: nothing proves them yet, they wait for 5
    if one_per_call:
        for record in following:
            assert await ingest(env, [record]) == [(record["event.sequence"], "pending", None)]
    else:
        assert await ingest(env, following) == [(s, "pending", None) for s in range(6, 10)]
    # The verified checkpoint at 10 commits to the damaged one's content, and so to 6..9.
    assert await ingest(env, [genuine[9]]) == [(10, "ok", None)]
    head = env.streams.read("cam-1")
    assert (head.head_sequence, head.signed_through) == (10, 10)
    held = await stored(env)
    assert held[damaged["event.hash"]][1:3] == ("broken", kind)
    assert {held[r["event.hash"]][1:3] for r in genuine[5:10]} == {("ok", None)}
    assert not [v for v in held.values() if v[2] == "gap"]
    assert "sequence_gap" not in rules(env)
    # The chain runs on, and the gap sweep finds nothing waiting.
    assert {o for _, o, _ in await ingest(env, genuine[10:])} == {"ok"}
    await env.service.sweep_gaps()
    held = await stored(env)
    assert held[damaged["event.hash"]][1:3] == ("broken", kind)
    assert {held[r["event.hash"]][1:3] for r in genuine if r is not genuine[4]} == {("ok", None)}
    head = env.streams.read("cam-1")
    assert (head.head_hash, head.closed) == (genuine[-1]["event.hash"], True)
    assert head.signed_through == genuine[-1]["event.sequence"]
    # Verification of the stored chain blames the damaged signature alone.
    query = QueryService(env.store, TenantKeyrings(tmp_path / "keyrings"), env.streams)
    report = await query.verify_stream("acme", "cam-1")
    assert report.matches_head
    assert {(f.kind.value, f.sequence) for f in report.failures} == {(kind, 5)}


@pytest.mark.parametrize("forgery_first", [True, False])
async def test_a_fork_settled_in_the_same_call_stores_the_settled_verdicts(
    env_factory: Factory, forgery_first: bool
) -> None:
    # A well-formed forgery of 7 (hashed, linked to 6) and the genuine 7 in one batch with
    # the checkpoint at 10 that proves the genuine one. The fork step queues `broken/fork`
    # for whichever of the two took the plain name first; the settlement decides after it.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 12)
    assert await ingest(env, genuine[:5]) == [(s, "ok", None) for s in range(1, 6)]
    fake = forge(genuine[6], **{"event.outcome": "failure"})
    pair = [fake, genuine[6]] if forgery_first else [genuine[6], fake]
    outcomes = await ingest(env, [genuine[5], *pair, *genuine[7:]])
    rejected = [o for o in outcomes if o[1] != "ok"]
    assert rejected == [(7, "rejected", "forged")]
    held = await stored(env)
    assert held[fake["event.hash"]][1:3] == ("rejected", "forged")
    assert {held[r["event.hash"]][1:3] for r in genuine} == {("ok", None)}
    if not forgery_first:
        # The genuine record came first: it holds the sequence's plain name.
        assert held[genuine[6]["event.hash"]][3] == "cam-1:7"
        placed = await env.store.get("acme", "cam-1:7")
        assert placed is not None
        assert (placed.record, placed.verdict, placed.failure) == (genuine[6], "ok", None)
    assert held[fake["event.hash"]][3] != held[genuine[6]["event.hash"]][3]
    head = env.streams.read("cam-1")
    assert (head.head_hash, head.closed) == (genuine[-1]["event.hash"], True)
    assert "chain_attack" in rules(env)


async def test_a_fork_of_a_stored_record_settled_in_the_same_call_clears_its_fork_flag(
    env_factory: Factory,
) -> None:
    # The genuine 7 was stored ok by an earlier call; the forgery and the checkpoint at 10
    # that proves the genuine one arrive together. The genuine record's `fork` flag, queued
    # when the forgery arrived, must not outlive the settlement that clears it.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 12)
    assert {o for _, o, _ in await ingest(env, genuine[:7])} == {"ok"}
    fake = forge(genuine[6], **{"event.outcome": "failure"})
    outcomes = await ingest(env, [fake, *genuine[7:]])
    assert outcomes[0] == (7, "rejected", "forged")
    assert {o for _, o, _ in outcomes[1:]} == {"ok"}
    held = await stored(env)
    assert held[fake["event.hash"]][1:3] == ("rejected", "forged")
    assert {held[r["event.hash"]][1:3] for r in genuine} == {("ok", None)}
    placed = await env.store.get("acme", "cam-1:7")
    assert placed is not None
    assert (placed.record, placed.verdict, placed.failure) == (genuine[6], "ok", None)


async def test_a_damaged_checkpoint_above_the_settling_one_stays_evidence(
    env_factory: Factory,
) -> None:
    # One call: a forgery of 7, the genuine 6..14, and the checkpoint at 15 with a damaged
    # signature. The checkpoint at 10 settles the fork; records kept aside above it may link
    # again, but the damaged checkpoint was kept aside for its own signature: it used to
    # be placed ok (and become the head) because it links. It stays evidence until the
    # verified checkpoint at 20, in a later call, commits to it.
    env = env_factory()
    env.register()
    genuine = make_records(env.signer, 20)  # checkpoints at 5, 10, 15, 20 and 24 (closing)
    assert genuine[14]["event.action"] == genuine[19]["event.action"] == "audit.checkpoint"
    assert await ingest(env, genuine[:5]) == [(s, "ok", None) for s in range(1, 6)]
    fake = forge(genuine[6], **{"event.outcome": "failure"})
    bad = damage(genuine[14], "bad_signature")
    outcomes = await ingest(env, [genuine[5], fake, *genuine[6:14], bad])
    assert [o for o in outcomes if o[1] != "ok"] == [
        (7, "rejected", "forged"),
        (15, "rejected", "bad_signature"),
    ]
    held = await stored(env)
    assert held[bad["event.hash"]][1:3] == ("rejected", "bad_signature")
    head = env.streams.read("cam-1")
    assert (head.head_sequence, head.head_hash) == (14, genuine[13]["event.hash"])
    assert head.signed_through == 10
    # The next verified checkpoint, in another call, places it (flagged): no gap.
    assert {o for _, o, _ in await ingest(env, genuine[15:])} == {"ok"}
    await env.service.sweep_gaps()
    held = await stored(env)
    assert held[bad["event.hash"]][1:3] == ("broken", "bad_signature")
    assert held[fake["event.hash"]][1:3] == ("rejected", "forged")
    assert {held[r["event.hash"]][1:3] for r in genuine if r is not genuine[14]} == {("ok", None)}
    head = env.streams.read("cam-1")
    assert (head.head_hash, head.closed) == (genuine[-1]["event.hash"], True)
    assert head.signed_through == genuine[-1]["event.sequence"]
    assert "sequence_gap" not in rules(env)
