"""Tamper matrix: every failure kind is detected and located exactly; valid chains never fail."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from audit.integrity.verify import ChainVerifier, FailureKind

from .conftest import T0, Seal, load, rehash, sample_event

K = FailureKind


def run(
    lines: list[bytes], signer: Signer, *, strict: bool = True, window: int = 64
) -> list[tuple[str, int | None, int | None]]:
    verifier = ChainVerifier(signer.verifier, strict=strict, window=window)
    found = []
    for number, line in enumerate(lines, start=1):
        found += verifier.feed(number, line)
    found += verifier.finish()
    assert verifier.ok == (not found)
    return [(f.kind.value, f.line, f.sequence) for f in found]


def test_intact_stream_verifies(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    assert run(lines, signer) == []
    assert load(lines[-1])["ffaudit.checkpoint.closing"] is True


def test_edited_content(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    rec = load(lines[7])
    rec["event.outcome"] = "failure"
    lines[7] = canonicalize(rec)
    assert run(lines, signer) == [(K.MODIFIED, 8, 8)]


def test_edited_and_rehashed_record_is_blamed_not_its_successor(
    sealed: Seal, signer: Signer
) -> None:
    lines = sealed(40)
    lines[7] = canonicalize(rehash({**load(lines[7]), "ffaudit.metadata": {"blend_ratio": 1.0}}))
    assert run(lines, signer) == [(K.MODIFIED, 8, 8)]


@pytest.mark.parametrize(("start", "count"), [(9, 1), (9, 3), (0, 1)])
def test_deleted_records_are_a_gap(sealed: Seal, signer: Signer, start: int, count: int) -> None:
    lines = sealed(40)
    del lines[start : start + count]
    # The record after the hole now sits on line start+1 and carries sequence start+count+1.
    assert run(lines, signer) == [(K.GAP, start + 1, start + count + 1)]


def test_gap_is_reported_once_the_window_overflows(sealed: Seal, signer: Signer) -> None:
    lines = sealed(200, every=1000)
    del lines[20]
    assert run(lines, signer, window=16) == [(K.GAP, 21, 22)]


def test_swapped_records_are_reordered(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    lines[9], lines[10] = lines[10], lines[9]
    assert run(lines, signer) == [(K.REORDERED, 11, 10)]


def test_moved_record_is_reordered(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    moved = lines.pop(9)
    lines.insert(14, moved)
    assert run(lines, signer) == [(K.REORDERED, 15, 10)]


def test_duplicated_record(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    lines.insert(12, lines[9])
    assert run(lines, signer) == [(K.DUPLICATE, 13, 10)]


def test_inserted_record_before_the_genuine_one(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    genuine = load(lines[10])
    # A forger with the previous hash crafts a different record 11 that links perfectly.
    forged = rehash({**genuine, "event.outcome": "failure", "event.id": "forged"})
    lines.insert(10, canonicalize(forged))
    assert run(lines, signer) == [(K.INSERTED, 11, 11)]


def test_inserted_record_after_the_genuine_one(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40)
    forged = rehash({**load(lines[10]), "event.outcome": "failure", "event.id": "forged"})
    lines.insert(11, canonicalize(forged))
    assert run(lines, signer) == [(K.INSERTED, 12, 11)]


def test_record_appended_after_closing_checkpoint(sealed: Seal, signer: Signer) -> None:
    lines = sealed(10)
    last = load(lines[-1])
    extra = {
        **load(lines[0]),
        "event.sequence": last["event.sequence"] + 1,
        "ffaudit.prev": last["event.hash"],
    }
    lines.append(canonicalize(rehash(extra)))
    assert run(lines, signer) == [(K.INSERTED, len(lines), last["event.sequence"] + 1)]


def test_forged_chain_recomputed_without_the_key(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40, every=10)
    prev = None
    for i in range(12, len(lines)):  # edit record 13, then re-link everything after it
        rec = load(lines[i])
        if i == 12:
            rec["event.outcome"] = "failure"
        if prev is not None:
            rec["ffaudit.prev"] = prev
        lines[i] = canonicalize(rehash(rec))
        prev = rec["event.hash"]
    # Records 1..10 are proven by the first checkpoint (line 10); the next one fails.
    checkpoints = [i + 1 for i, ln in enumerate(lines) if b"audit.checkpoint" in ln]
    assert run(lines, signer) == [(K.FORGED_CHAIN, checkpoints[1], checkpoints[1])]


def test_damaged_signature_is_redeemed_by_a_later_checkpoint(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40, every=10)
    rec = load(lines[19])
    assert rec["event.action"] == "audit.checkpoint"
    raw = bytearray(base64.b64decode(rec["ffaudit.signature"]))
    raw[0] ^= 1
    rec["ffaudit.signature"] = base64.b64encode(bytes(raw)).decode()
    lines[19] = canonicalize(rec)
    assert run(lines, signer) == [(K.BAD_SIGNATURE, 20, 20)]


def test_garbled_signature(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40, every=10)
    rec = load(lines[-1])
    rec["ffaudit.signature"] = "not base64!"
    lines[-1] = canonicalize(rec)
    assert run(lines, signer) == [(K.BAD_SIGNATURE, len(lines), len(lines))]


def test_missing_signature(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40, every=10)
    rec = load(lines[9])
    del rec["ffaudit.signature"]
    lines[9] = canonicalize(rec)
    assert run(lines, signer) == [(K.MISSING_SIGNATURE, 10, 10)]


def test_wrong_key_is_reported_once(sealed: Seal) -> None:
    lines = sealed(40, every=10)
    assert run(lines, Signer.generate()) == [(K.WRONG_KEY, 10, 10)]


def test_truncation_only_fails_in_strict_mode(sealed: Seal, signer: Signer) -> None:
    lines = sealed(40, every=10)[:-3]
    assert run(lines, signer, strict=False) == []
    assert run(lines, signer, strict=True) == [(K.TRUNCATED, None, len(lines))]


def test_malformed_lines(sealed: Seal, signer: Signer) -> None:
    lines = sealed(10)
    lines.insert(3, b"{not json")
    lines.insert(5, b'{"event.sequence": 4}')
    lines.insert(7, b"[1, 2]")
    found = run(lines, signer)
    assert found == [(K.MALFORMED, 4, None), (K.MALFORMED, 6, 4), (K.MALFORMED, 8, None)]


def test_number_outside_the_json_range_is_malformed_not_accepted(
    sealed: Seal, signer: Signer
) -> None:
    lines = sealed(10)
    big = str(2**60).encode()
    lines[2] = lines[2].replace(b'"target_face_index":', b'"target_face_index":' + big + b',"x":')
    assert run(lines, signer) == [(K.MALFORMED, 3, 3)]


def test_streams_are_verified_independently(sealed: Seal, signer: Signer) -> None:
    a, b = sealed(20, stream="a"), sealed(20, stream="b")
    interleaved = [line for pair in zip(a, b, strict=True) for line in pair]
    del interleaved[10]  # a record of stream a (even positions)
    found = run(interleaved, signer)
    assert [(kind, seq) for kind, _, seq in found] == [(K.GAP, 7)]


# -- properties ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not 2**53 <= abs(x) < 1e21),
    st.text(max_size=20),
    st.booleans(),
)
metadata = st.dictionaries(st.text(max_size=8), json_scalars, max_size=4)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], Signer]:
    signer = Signer.generate()
    every = draw(st.integers(2, 20))
    interval = draw(st.one_of(st.none(), st.floats(0.5, 30)))
    sealer = Sealer(
        ChainWriter("p", "t", signer, policy=CheckpointPolicy(every, interval)),
        Pseudonymizer(Keyring.generate(), "t"),
    )
    records = []
    ts = T0
    for i in range(draw(st.integers(0, 60))):
        ts += timedelta(seconds=draw(st.floats(0, 120)))
        event = replace(
            sample_event(i),
            timestamp=ts,
            action=draw(st.sampled_from([a for a in EventAction if not a.startswith("audit.")])),
            outcome=draw(st.sampled_from(list(Outcome))),
            metadata=draw(metadata),
            error_message=draw(st.one_of(st.none(), st.text(max_size=30))),
        )
        records += sealer.seal(event)
    records += sealer.close(ts)
    return [r.line for r in records], signer


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_no_false_positives_on_valid_chains(stream: tuple[list[bytes], Signer]) -> None:
    lines, signer = stream
    assert run(lines, signer) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_any_single_edit_is_detected(
    stream: tuple[list[bytes], Signer], data: st.DataObject
) -> None:
    lines, signer = stream
    i = data.draw(st.integers(0, len(lines) - 1))
    rec = load(lines[i])
    field = data.draw(st.sampled_from(sorted(k for k in rec if k != "event.hash")))
    rec[field] = data.draw(json_scalars.filter(lambda v: v != rec[field]))
    lines[i] = canonicalize(rec)
    assert run(lines, signer) != []
