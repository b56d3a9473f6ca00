"""The fast canonical form is byte-identical to the `rfc8785` reference."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import CanonicalizationError
from audit.integrity.canonical import canonicalize

SAFE = 2**53 - 1

# Every character class that matters to JCS: controls (escaped as \u00xx or short forms),
# quotes and backslashes, DEL, BMP private use (U+E000..U+FFFF sorts after surrogate pairs
# in UTF-16), non-BMP (emoji, U+10000..), and plain ASCII.
chars = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x7F),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF, exclude_categories=["Cs"]),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
    st.characters(exclude_categories=["Cs"]),
)
text = st.text(chars, max_size=12)
floats = st.floats(allow_nan=False, allow_infinity=False)
interesting_floats = st.sampled_from(
    [
        0.0,
        -0.0,
        1.0,
        100.0,
        1e16,
        1e20,
        1e21,
        1e22,
        1e-6,
        1e-7,
        1.5e-7,
        5e-324,
        1.7976931348623157e308,
        0.1,
        2.0**53,
        123456789.125,
        -1e-7,
        9007199254740993.0,
    ]
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-SAFE, SAFE), floats, interesting_floats, text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(text, inner, max_size=6)),
    max_leaves=30,
)


def ambiguous(value: Any) -> bool:
    """Floats JCS writes as integers beyond ±(2**53-1): refused, see canonical.py."""
    if isinstance(value, float):
        return 2.0**53 <= abs(value) < 1e21
    if isinstance(value, dict):
        return any(ambiguous(v) for v in value.values())
    if isinstance(value, list):
        return any(ambiguous(v) for v in value)
    return False


def same_as_reference(value: Any) -> None:
    if ambiguous(value):
        with pytest.raises(CanonicalizationError, match="could not be verified after parsing"):
            canonicalize(value)
    else:
        assert canonicalize(value) == rfc8785.dumps(value)


@settings(max_examples=3000)
@given(json_values)
def test_fast_path_is_byte_identical_to_reference(value: Any) -> None:
    same_as_reference(value)


@settings(max_examples=1000)
@given(st.dictionaries(text, st.integers(-SAFE, SAFE), min_size=2, max_size=8))
def test_key_order_is_utf16_code_unit_order(value: dict[str, int]) -> None:
    out = canonicalize(value)
    assert out == rfc8785.dumps(value)
    keys = list(value)
    keys.sort(key=lambda k: k.encode("utf-16-be"))
    assert out.startswith(b'{"' + rfc8785.dumps(keys[0])[1:-1])


@settings(max_examples=2000)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float(value: float) -> None:
    same_as_reference([value])


def test_known_vectors() -> None:
    # From RFC 8785 section 3.2.2/appendix B and the places orjson differs.
    assert (
        canonicalize({"b": 1, "a": [100.0, -0.0, 1e21, 1e-7]}) == b'{"a":[100,0,1e+21,1e-7],"b":1}'
    )
    assert canonicalize({"\u20ac": 1, "\r": 2, "\U0001f600": 3, "\ufb33": 4}) == (
        '{"\\r":2,"\u20ac":1,"\U0001f600":3,"\ufb33":4}'.encode()
    )
    assert canonicalize('\u0000\u001f\u007f"\\/') == b'"\\u0000\\u001f\x7f\\"\\\\/"'
    assert canonicalize(2.0**53 - 1) == b"9007199254740991"
    assert canonicalize(1e21) == b"1e+21"


@settings(max_examples=2000)
@given(json_values)
def test_canonical_bytes_survive_a_parse(value: Any) -> None:
    # What a verifier does: parse the line, canonicalize again, get the same bytes.
    try:
        out = canonicalize(value)
    except CanonicalizationError:
        return
    assert canonicalize(orjson.loads(out)) == out


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "nan"),
        ({"a": [math.inf]}, "inf"),
        ({"a": 2**53}, "exact JSON range"),
        (-(2**64), "exact JSON range"),
        ({1: "x"}, "keys must be strings"),
        (b"bytes", "bytes"),
        ({"a": {1, 2}}, "set"),
        ("lone \ud800 surrogate", "non-UTF-8"),
    ],
)
def test_unrepresentable_values_get_a_clear_error(value: object, message: str) -> None:
    with pytest.raises(CanonicalizationError, match=message):
        canonicalize(value)


def test_orjson_extensions_are_refused() -> None:
    import datetime

    with pytest.raises(CanonicalizationError):
        canonicalize({"t": datetime.datetime(2026, 1, 1)})
