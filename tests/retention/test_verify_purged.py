"""ChainVerifier across purged ranges (no store): what a retention checkpoint lets it skip,
and what it still catches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.integrity.verify import ChainVerifier, PurgedRange
from audit.retention.classes import FOLLOWERS, ActionClass, action_class, actions_of

SIGNER = Signer.generate()
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def chain() -> list[dict[str, Any]]:
    """40 records of one stream (checkpoints every 5, closing at the end)."""
    sealer = Sealer(
        ChainWriter("s1", "acme", SIGNER, policy=CheckpointPolicy(5, None)),
        Pseudonymizer(Keyring.generate(), "acme"),
    )
    out: list[dict[str, Any]] = []
    while len(out) < 39:
        event = AuditEvent(
            action=EventAction.FACE_SWAPPED,
            outcome=Outcome.SUCCESS,
            timestamp=T0 + timedelta(seconds=len(out)),
            actor="alice",
        )
        out += [r.record for r in sealer.seal(event)]
    return out + [r.record for r in sealer.close(T0 + timedelta(hours=1))]


def purged(chain: list[dict[str, Any]], first: int, last: int) -> PurgedRange:
    return PurgedRange(first, last, chain[first - 1]["ffaudit.prev"], chain[last - 1]["event.hash"])


def verify(
    records: list[dict[str, Any]], ranges: list[PurgedRange]
) -> tuple[list[tuple[str, int | None]], int, str]:
    verifier = ChainVerifier(SIGNER.verifier)
    verifier.skip_purged("acme", "s1", ranges)
    failures = []
    for line, record in enumerate(records, 1):
        failures += verifier.feed(line, canonicalize(record))
    failures += verifier.finish()
    state = verifier.streams["acme", "s1"]
    return [(f.kind.value, f.sequence) for f in failures], state.expected - 1, state.head_hash


def without(chain: list[dict[str, Any]], *spans: tuple[int, int]) -> list[dict[str, Any]]:
    return [r for r in chain if not any(a <= r["event.sequence"] <= b for a, b in spans)]


def test_prefix_middle_and_tail_ranges_verify(chain: list[dict[str, Any]]) -> None:
    last = len(chain)
    spans = [(1, 7), (15, 22), (36, last)]
    failures, end, head = verify(without(chain, *spans), [purged(chain, *s) for s in spans])
    assert failures == []
    assert (end, head) == (last, chain[-1]["event.hash"])


def test_consecutive_ranges_chain_into_each_other(chain: list[dict[str, Any]]) -> None:
    spans = [(1, 5), (6, 10), (11, 12)]
    failures, _, _ = verify(without(chain, *spans), [purged(chain, *s) for s in spans])
    assert failures == []


def test_restored_records_inside_a_range_are_verified_one_by_one(
    chain: list[dict[str, Any]],
) -> None:
    ranges = [purged(chain, 1, 7), purged(chain, 15, 22)]
    assert verify(chain, ranges)[0] == []  # every record is back
    tampered = [dict(r) for r in chain]
    tampered[17]["event.outcome"] = "failure"  # sequence 18, inside the second range
    assert verify(tampered, ranges)[0] == [("modified", 18)]


def test_a_missing_record_next_to_a_range_is_a_gap(chain: list[dict[str, Any]]) -> None:
    ranges = [purged(chain, 15, 22)]
    after = verify(without(chain, (15, 23)), ranges)[0]
    assert after == [("gap", 24)]
    before = verify(without(chain, (14, 22)), ranges)[0]
    assert ("gap", 15) in before
    assert all(kind == "gap" for kind, _ in before)


def test_records_missing_before_a_purged_tail_are_a_gap(chain: list[dict[str, Any]]) -> None:
    last = len(chain)
    failures, end, _ = verify(without(chain, (30, last)), [purged(chain, 33, last)])
    assert failures == [("gap", 33)]
    assert end == last


def test_boundaries_that_do_not_link_are_caught(chain: list[dict[str, Any]]) -> None:
    good = purged(chain, 15, 22)
    wrong_last = PurgedRange(15, 22, good.first_prev, "f" * 64)
    assert verify(without(chain, (15, 22)), [wrong_last])[0] == [("modified", 22)]
    wrong_prev = PurgedRange(15, 22, "e" * 64, good.last_hash)
    assert verify(without(chain, (15, 22)), [wrong_prev])[0] == [("modified", 14)]


def test_without_ranges_the_purged_records_are_missing(chain: list[dict[str, Any]]) -> None:
    assert verify(without(chain, (15, 22)), [])[0] == [("gap", 23)]


def test_every_action_has_a_retention_class() -> None:
    classes = {cls: set(actions_of(cls)) for cls in ActionClass}
    covered = set().union(*classes.values()) | {a.value for a in FOLLOWERS}
    assert covered == {a.value for a in EventAction}
    assert action_class(EventAction.FACE_SWAPPED) is ActionClass.PROCESSING
    assert action_class(EventAction.MODEL_REJECTED) is ActionClass.MODELS
    assert action_class(EventAction.AUTH_FAILED) is ActionClass.SECURITY
    assert action_class(EventAction.RETENTION_PURGED) is ActionClass.AUDIT
    assert action_class(EventAction.AUDIT_CHECKPOINT) is None
