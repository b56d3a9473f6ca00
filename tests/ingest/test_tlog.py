"""The transparency log that ingest appends to (audit.tlog), on both backends and with two
replicas: the tree is exactly the accepted chain, and every proof the service serves
verifies offline with the kernel's checks."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from audit.errors import ConflictError, NotFoundError
from audit.integrity.keys import Signer
from audit.integrity.merkle import (
    TILE_WIDTH,
    MemoryTree,
    leaf_hash,
    parse_entry_bundle,
    verify_consistency,
)
from audit.integrity.notes import parse_checkpoint, parse_note, parse_policy
from audit.integrity.transparency import (
    State,
    TransparencyError,
    TransparencyFailure,
    observe,
    open_checkpoint,
    verify_proof,
)
from audit.models.tlog import TlogLog
from audit.tlog.repository import TlogRepository
from audit.tlog.service import TlogService

from .conftest import Env, Factory, make_records
from .test_service import rehash


def tlog_of(env: Env) -> TlogService:
    return TlogService(env.settings, env.service._sessions, Signer.generate().key)


def leaves(env: Env, stream: str = "cam-1", tenant: str = "acme") -> list[tuple[int, bytes]]:
    with env.service._sessions() as session:
        repo = TlogRepository(session)
        row = repo.log(tenant, stream)
        assert row is not None
        return [
            (leaf.sequence, leaf.entry)
            for leaf in (repo.leaf(row.id, i) for i in range(row.size))
            if leaf is not None
        ]


def log_row(env: Env, stream: str = "cam-1", tenant: str = "acme") -> TlogLog:
    with env.service._sessions() as session:
        row = TlogRepository(session).log(tenant, stream)
        assert row is not None
        session.expunge(row)
        return row


def policy_for(tlog: TlogService, stream: str = "cam-1", tenant: str = "acme") -> Any:
    return parse_policy(f"log {tlog.verifier(tenant, stream).vkey()}\nquorum none\n")


async def test_tree_is_the_accepted_chain_in_sequence_order(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 40)
    batches = [records[i : i + 7] for i in range(0, len(records), 7)]
    random.Random(3).shuffle(batches)  # out of order: held records join when their gap fills
    for batch in batches:
        await env.service.ingest(batch, source="test")
    got = leaves(env)
    assert [s for s, _ in got] == [r["event.sequence"] for r in records]
    assert [e.hex() for _, e in got] == [r["event.hash"] for r in records]
    tree = MemoryTree()
    for r in records:
        tree.append_entry(bytes.fromhex(r["event.hash"]))
    assert bytes(log_row(env).root_hash) == tree.root()


async def test_a_forgery_stays_a_leaf_and_the_genuine_record_follows(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    records = make_records(env.signer, 10)
    edited = rehash({**records[3], "event.outcome": "failure"})
    await env.service.ingest([*records[:3], edited], source="test")  # forged successor
    await env.service.ingest(records, source="test")
    await env.service.ingest(records[:5], source="test")  # a replay
    got = leaves(env)
    # The forgery linked to the head, so it was accepted until the producer's checkpoint
    # proved the genuine branch; the log keeps it (append-only) and the genuine records
    # follow: two leaves at sequence 4, which a monitor sees.
    assert [e.hex() for _, e in got] == [r["event.hash"] for r in records[:3]] + [
        edited["event.hash"]
    ] + [r["event.hash"] for r in records[3:]]
    assert [s for s, _ in got].count(4) == 2
    tlog = tlog_of(env)
    tlog.sign_now("acme", "cam-1")
    proof = tlog.inclusion("acme", "cam-1", sequence=4)
    assert proof.entry.hex() == records[3]["event.hash"]  # the settled record
    forged = tlog.inclusion("acme", "cam-1", sequence=4, event_hash=edited["event.hash"])
    assert forged.index == 3


async def test_two_replicas_racing_on_one_stream_build_one_tree(env_factory: Factory) -> None:
    a, b = env_factory(), env_factory()
    a.register()
    records = make_records(a.signer, 120, every=10)
    # The same records, cut differently, sent by both replicas at once.
    cuts_a = [records[i : i + 9] for i in range(0, len(records), 9)]
    cuts_b = [records[i : i + 13] for i in range(0, len(records), 13)]
    tlog = tlog_of(a)
    signed: list[int] = []

    async def send(env: Env, cuts: list[list[dict[str, Any]]]) -> None:
        for batch in cuts:
            await env.service.ingest(batch, source="test")
            signed.extend(size for _, size in await asyncio.to_thread(tlog.sign_due))

    await asyncio.gather(send(a, cuts_a), send(b, cuts_b))
    got = leaves(a)
    assert [e.hex() for _, e in got] == [r["event.hash"] for r in records]
    tlog.sign_now("acme", "cam-1")
    # Every checkpoint signed during the race is consistent with the final tree.
    final = open_checkpoint(
        tlog.checkpoint("acme", "cam-1").encode(), policy_for(tlog), "ffaudit/acme/cam-1"
    )
    assert final.checkpoint.size == len(records)
    for size in sorted(set(signed)):
        proof = tlog.consistency("acme", "cam-1", size, len(records))
        with a.service._sessions() as session:
            row = TlogRepository(session).log("acme", "cam-1")
            assert row is not None
            cp = TlogRepository(session).checkpoint(row.id, size)
            assert cp is not None
            old_root = bytes(cp.root_hash)
        verify_consistency(size, len(records), proof.hashes, old_root, final.checkpoint.root_hash)


async def test_proofs_tiles_and_entries_verify_offline(env_factory: Factory) -> None:
    env = env_factory(tlog_checkpoint_every=1000, tlog_checkpoint_interval_s=3600)
    env.register()
    records = make_records(env.signer, 300, every=50)
    await env.service.ingest(records[:100], source="test")
    tlog = tlog_of(env)
    with pytest.raises(NotFoundError):
        tlog.checkpoint("acme", "cam-1")  # nothing signed yet: not due
    assert tlog.sign_due() == []
    first = tlog.sign_now("acme", "cam-1")
    assert first.size == 100
    await env.service.ingest(records[100:], source="test")
    with pytest.raises(ConflictError):  # not covered by a checkpoint yet
        tlog.inclusion("acme", "cam-1", sequence=len(records))
    tlog.sign_now("acme", "cam-1")
    policy = policy_for(tlog)
    state = State.empty()
    for record in records[::17] + records[-1:]:
        proof = tlog.inclusion("acme", "cam-1", sequence=record["event.sequence"])
        entry = bytes.fromhex(record["event.hash"])
        parsed, checkpoint = verify_proof(
            proof.tlog_proof(), entry, policy, origin="ffaudit/acme/cam-1"
        )
        assert parsed.index == record["event.sequence"] - 1
        observe(state, checkpoint)
        # The same proof does not prove another record.
        with pytest.raises(TransparencyError) as caught:
            verify_proof(proof.tlog_proof(), leaf_hash(entry), policy)
        assert caught.value.kind == TransparencyFailure.NOT_INCLUDED
    # A proof against the first checkpoint, then the state moves on only with consistency.
    old = tlog.inclusion("acme", "cam-1", sequence=5, size=100)
    early = State.empty()
    _, cp_old = verify_proof(old.tlog_proof(), bytes.fromhex(records[4]["event.hash"]), policy)
    observe(early, cp_old)
    latest = open_checkpoint(tlog.checkpoint("acme", "cam-1").encode(), policy)
    with pytest.raises(TransparencyError) as caught:
        observe(early, latest)
    assert caught.value.kind == TransparencyFailure.CONSISTENCY_UNPROVEN
    step = tlog.consistency("acme", "cam-1", 100, len(records))
    observe(early, latest, {(100, len(records)): step.hashes})
    assert early.logs["ffaudit/acme/cam-1"].size == len(records)
    # tlog-tiles: the level-0 tile holds the leaf hashes, the entry bundle the entries.
    full = tlog.tile("acme", "cam-1", 0, 0, None)
    assert full == b"".join(leaf_hash(bytes.fromhex(r["event.hash"])) for r in records[:TILE_WIDTH])
    part = tlog.tile("acme", "cam-1", 0, 1, len(records) - TILE_WIDTH)
    assert len(part) == 32 * (len(records) - TILE_WIDTH)
    with pytest.raises(NotFoundError):
        tlog.tile("acme", "cam-1", 0, 1, None)  # not full yet
    bundle = parse_entry_bundle(tlog.entries("acme", "cam-1", 0, None))
    assert [b.hex() for b in bundle] == [r["event.hash"] for r in records[:TILE_WIDTH]]
    # The checkpoint note is the C2SP form with the log's origin.
    note = parse_note(tlog.checkpoint("acme", "cam-1"))
    assert parse_checkpoint(note.text).origin == "ffaudit/acme/cam-1"


async def test_a_tenant_cannot_reach_another_tenants_log(env_factory: Factory) -> None:
    env = env_factory()
    env.register()
    await env.service.ingest(make_records(env.signer, 5), source="test")
    tlog = tlog_of(env)
    tlog.sign_now("acme", "cam-1")
    with pytest.raises(NotFoundError):
        tlog.checkpoint("other", "cam-1")
    with pytest.raises(NotFoundError):
        tlog.inclusion("other", "cam-1", sequence=1)
