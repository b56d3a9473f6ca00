"""The producer side: what a third party recomputes with any JCS library matches."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta

import rfc8785
from cryptography.hazmat.primitives import hashes

from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from audit.integrity.verify import ChainVerifier

from .conftest import T0, Seal, load, sample_event


def test_hashes_and_signatures_recompute_with_the_reference_library(
    sealed: Seal, signer: Signer
) -> None:
    prev = "0" * 64
    for number, line in enumerate(sealed(30, every=7), start=1):
        rec = load(line)
        assert rec["event.sequence"] == number
        assert rec["ffaudit.prev"] == prev
        body = {k: v for k, v in rec.items() if k not in ("event.hash", "ffaudit.signature")}
        digest = hashes.Hash(hashes.SHA256())
        digest.update(rfc8785.dumps(body))
        assert digest.finalize().hex() == rec["event.hash"]
        if rec["event.action"] == "audit.checkpoint":
            message = b"ffaudit.checkpoint.v1:" + rec["event.hash"].encode()
            signer.verifier.key.verify(base64.b64decode(rec["ffaudit.signature"]), message)
        assert line == rfc8785.dumps(rec)  # each line is itself canonical
        prev = rec["event.hash"]


def test_checkpoint_policy_by_count(signer: Signer) -> None:
    writer = ChainWriter("s", "t", signer, policy=CheckpointPolicy(every=4, interval_s=None))
    sealer = Sealer(writer, Pseudonymizer(Keyring.generate(), "t"))
    records = [r.record for i in range(6) for r in sealer.seal(sample_event(i))]
    # Every 4 records counting the checkpoint itself: 3 events, then a checkpoint.
    assert [r["event.action"] == "audit.checkpoint" for r in records] == [
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        True,
    ]
    assert records[-1]["ffaudit.checkpoint.first_sequence"] == 5
    assert records[-1]["ffaudit.checkpoint.records"] == 4
    assert records[-1]["ffaudit.checkpoint.closing"] is False


def test_checkpoint_policy_by_record_time(signer: Signer) -> None:
    writer = ChainWriter("s", "t", signer, policy=CheckpointPolicy(every=None, interval_s=10))
    sealer = Sealer(writer, Pseudonymizer(Keyring.generate(), "t"))
    out = []
    for seconds in (0, 5, 9.9, 10, 11, 25):
        event = sample_event(1)
        event.timestamp = T0 + timedelta(seconds=seconds)
        out.append([r.record["event.action"] for r in sealer.seal(event)])
    # The segment opens at 0 s; at 10 s it is due; the next opens at 11 s, due again at 25 s.
    assert [len(a) for a in out] == [1, 1, 1, 2, 1, 2]


def test_concurrent_producers_get_one_contiguous_chain(signer: Signer) -> None:
    sealer = Sealer(
        ChainWriter("s", "t", signer, policy=CheckpointPolicy(every=50, interval_s=None)),
        Pseudonymizer(Keyring.generate(), "t"),
    )
    out: list[list[bytes]] = [[] for _ in range(4)]
    lock = threading.Lock()
    ordered: list[bytes] = []

    def produce(k: int) -> None:
        for i in range(500):
            records = sealer.seal(sample_event(k * 1000 + i))
            with lock:
                ordered.extend(r.line for r in records)
            out[k].extend(r.line for r in records)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = sorted(
        ordered + [r.line for r in sealer.close()], key=lambda b: load(b)["event.sequence"]
    )
    assert [load(b)["event.sequence"] for b in lines] == list(range(1, len(lines) + 1))
    verifier = ChainVerifier(signer.verifier, strict=True)
    for n, line in enumerate(lines, start=1):
        assert verifier.feed(n, line) == []
    assert verifier.finish() == []


def test_closing_checkpoint_is_never_earlier_than_what_it_covers(signer: Signer) -> None:
    writer = ChainWriter("s", "t", signer)
    writer.append(sample_event(0).action, sample_event(0).outcome, {}, T0 + timedelta(hours=1))
    closing = writer.checkpoint(T0, closing=True).record
    assert closing["@timestamp"] == "2026-11-21T11:00:00.000000Z"


def test_bodies_cannot_override_chain_fields(signer: Signer) -> None:
    import pytest

    writer = ChainWriter("s", "t", signer)
    with pytest.raises(ValueError, match=r"event\.\* fields"):
        writer.append(sample_event(0).action, sample_event(0).outcome, {"event.sequence": 9}, T0)
    sealed = writer.append(
        sample_event(0).action,
        sample_event(0).outcome,
        {"ffaudit.prev": "f" * 64, "ffaudit.stream": "other"},
        T0,
    )[0]
    assert sealed.record["ffaudit.prev"] == "0" * 64
    assert sealed.record["ffaudit.stream"] == "s"
    assert sealed.line == canonicalize(sealed.record)
