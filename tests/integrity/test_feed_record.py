"""`ChainVerifier.feed_record` (a store's parsed record) finds exactly what `feed` finds on
the record's canonical line, on intact and tampered streams alike."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from audit.errors import CanonicalizationError
from audit.integrity.canonical import canonicalize
from audit.integrity.keys import Signer
from audit.integrity.verify import ChainVerifier

from .conftest import Seal, load, rehash

Found = list[tuple[str, str | None, int | None, int | None, str]]


def both(records: list[dict[str, Any]], signer: Signer, window: int = 64) -> tuple[Found, Found]:
    """Failures from feed(canonicalize(record)) and from feed_record(record), in order."""
    results: list[Found] = []
    for by_record in (False, True):
        verifier = ChainVerifier(signer.verifier, strict=False, window=window)
        found = []
        kept = copy.deepcopy(records)
        for number, rec in enumerate(records, start=1):
            if by_record:
                found += verifier.feed_record(number, rec)
            else:
                found += verifier.feed(number, canonicalize(rec))
        found += verifier.finish()
        assert records == kept  # feed_record leaves the record as it was
        assert verifier.lines == len(records)
        results.append([(f.kind.value, f.stream, f.line, f.sequence, f.detail) for f in found])
    return results[0], results[1]


def tamper(records: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    r = copy.deepcopy(records)
    if how == "edit":
        r[7]["event.outcome"] = "failure"
    elif how == "edit_rehash":
        r[7] = rehash({**r[7], "ffaudit.metadata": {"blend_ratio": 1.0}})
    elif how == "delete":
        del r[9:12]
    elif how == "swap":
        r[3], r[4] = r[4], r[3]
    elif how == "duplicate":
        r.insert(10, copy.deepcopy(r[9]))
    elif how == "insert":
        r.insert(10, rehash({**r[9], "event.outcome": "failure"}))
    elif how == "forge":
        # Edited, then the rest of the chain re-linked and re-hashed without the key.
        r[20]["event.outcome"] = "failure"
        for i in range(20, len(r)):
            if i > 20:
                r[i]["ffaudit.prev"] = r[i - 1]["event.hash"]
            rehash(r[i])
    elif how == "garble_signature":
        cp = next(rec for rec in r if rec["event.action"] == "audit.checkpoint")
        cp["ffaudit.signature"] = "not base64!"
    elif how == "drop_signature":
        cp = next(rec for rec in r if rec["event.action"] == "audit.checkpoint")
        del cp["ffaudit.signature"]
    elif how == "wrong_signer":
        cp = next(rec for rec in r if rec["event.action"] == "audit.checkpoint")
        cp["ffaudit.checkpoint.signer"] = 5.0  # reads back as 5: through feed
    elif how == "float_sequence":
        r[5]["event.sequence"] = float(r[5]["event.sequence"])  # canonical: an integer
    elif how == "float_schema":
        r[5]["ffaudit.schema"] = 2.0
    elif how == "float_tenant":
        r[5]["ffaudit.tenant"] = [1.0]
    elif how == "integral_float_elsewhere":
        r[6]["ffaudit.metadata"] = {**r[6]["ffaudit.metadata"], "blend_ratio": 1.0}
    elif how == "missing_field":
        del r[6]["ffaudit.prev"]
    elif how == "bad_types":
        r[6]["event.sequence"] = "6"
        r[8]["event.hash"] = 8
        r[9]["ffaudit.stream"] = None
        r[10]["event.sequence"] = True
    elif how == "short_hash":
        r[6]["event.hash"] = "ab"
    elif how == "other_stream":
        r[12]["ffaudit.stream"] = "s2"
    elif how == "after_close":
        r.append(rehash({**r[5], "event.sequence": r[-1]["event.sequence"] + 1}))
    else:
        raise AssertionError(how)
    return r


HOW = [
    "edit",
    "edit_rehash",
    "delete",
    "swap",
    "duplicate",
    "insert",
    "forge",
    "garble_signature",
    "drop_signature",
    "wrong_signer",
    "float_sequence",
    "float_schema",
    "float_tenant",
    "integral_float_elsewhere",
    "missing_field",
    "bad_types",
    "short_hash",
    "other_stream",
    "after_close",
]


def test_intact_stream(sealed: Seal, signer: Signer) -> None:
    records = [load(line) for line in sealed(40)]
    assert both(records, signer) == ([], [])


@pytest.mark.parametrize("how", HOW)
def test_tampered_streams_fail_alike(sealed: Seal, signer: Signer, how: str) -> None:
    records = tamper([load(line) for line in sealed(40)], how)
    by_line, by_record = both(records, signer)
    # Seen at all; but 6.0 is the canonical line's 6: the same record (feed_record agrees).
    assert bool(by_line) == (how != "float_sequence")
    assert by_record == by_line


def test_record_without_canonical_form_fails_instead_of_raising(
    sealed: Seal, signer: Signer
) -> None:
    records = [load(line) for line in sealed(10)]
    records[4]["ffaudit.metadata"] = {"big": 2**60}
    verifier = ChainVerifier(signer.verifier)
    found = [f for n, rec in enumerate(records, 1) for f in verifier.feed_record(n, rec)]
    found += verifier.finish()
    assert [(f.kind.value, f.line, f.sequence) for f in found] == [("malformed", 5, 5)]


def test_strict_mode_goes_through_the_canonical_line(sealed: Seal, signer: Signer) -> None:
    records = [load(line) for line in sealed(9, every=10)]  # no closing checkpoint kept
    records = [r for r in records if r["event.action"] != "audit.checkpoint"]
    strict = ChainVerifier(signer.verifier, strict=True)
    found = [f for n, rec in enumerate(records, 1) for f in strict.feed_record(n, rec)]
    found += strict.finish()
    assert [f.kind.value for f in found] == ["truncated"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    index=st.integers(0, 24),
    key=st.sampled_from(
        [
            "event.outcome",
            "event.sequence",
            "ffaudit.prev",
            "event.hash",
            "ffaudit.schema",
            "ffaudit.tenant",
            "ffaudit.metadata",
            "ffaudit.signature",
        ]
    ),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 30),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.text(max_size=5),
        st.sampled_from(["0" * 64, "f" * 64]),
        st.lists(st.integers(0, 3), max_size=2),
    ),
    rehashed=st.booleans(),
)
def test_any_single_edit_fails_alike(
    sealed: Seal, signer: Signer, index: int, key: str, value: Any, rehashed: bool
) -> None:
    records = [load(line) for line in sealed(20)]
    records[index][key] = value
    if rehashed and key != "event.hash":
        with contextlib.suppress(CanonicalizationError):  # not hashable: left as edited
            rehash(records[index])
    try:
        canonicalize(records[index])
    except CanonicalizationError:
        assume(False)  # no canonical line to feed: nothing to compare with
    by_line, by_record = both(records, signer)
    assert by_record == by_line
