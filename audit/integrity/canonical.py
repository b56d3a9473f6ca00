"""RFC 8785 (JSON Canonicalization Scheme) bytes, fast.

`event.hash` is defined over JCS bytes, so any JCS library must reproduce our hashes. The
pure-Python `rfc8785` package is the reference, but at ~30 µs a record it would dominate
sealing and verification. orjson with sorted keys already produces JCS bytes for almost
every value; this module proves, with a few cheap byte checks on orjson's output, that the
value is one where the two agree, and falls back to `rfc8785` otherwise. No hand-written
serializer is involved: the fast path is orjson, the exact path is the reference.

Where orjson's output differs from JCS (established by the property tests in
tests/integrity/test_canonical.py against `rfc8785`):

* Integral floats: orjson writes ``100.0``, ``-0.0`` and ``1e+16``; JCS (ECMAScript
  Number-to-String) writes ``100``, ``0`` and ``10000000000000000``.
* Floats in [1e-6, 1e-5): orjson already uses an exponent (``1e-6``) where ECMAScript still
  writes ``0.000001``. Every other finite float is printed identically.
* NaN and infinities: orjson writes ``null``; JCS cannot represent them.
* Key order: JCS sorts keys by UTF-16 code units, orjson by code points. They disagree only
  between a key with a character in U+E000..U+FFFF and one with a non-BMP character, whose
  UTF-8 lead bytes are 0xEE-0xF4.
* Integers: JCS numbers are IEEE doubles, so `rfc8785` rejects |n| > 2**53 - 1. orjson's
  OPT_STRICT_INTEGER enforces the same bound.
* Round trip: a float in [2**53, 1e21) is written as a bare integer (``9007199254740992``)
  that any JSON parser reads back as an integer outside the exact range, so a verifier
  could never recompute the hash. Such floats are refused on the exact path.
* Types: bytes, non-str keys, sets and other objects are not JSON; both reject them.
  orjson's own extensions (datetime, dataclass, str/int/dict/list subclasses) are refused
  through the passthrough options and `default`.

A walk over the value's types decides the path before serialising: any float that is not
plainly safe, any None, any type other than str/int/bool/float/dict/list goes to the exact
path, and so does output with a key-order hazard byte. The walk costs about as much as the
serialisation; scanning the output bytes for the same hazards cost five times more. Records
hold no None (absent fields are omitted) and few floats, so the exact path is rare.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import orjson
import rfc8785

from audit.integrity.errors import CanonicalizationError

_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_STRICT_INTEGER
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# UTF-8 lead bytes of U+E000..U+FFFF (0xEE, 0xEF) and of non-BMP characters (0xF0-0xF4).
_KEY_ORDER_HAZARD = re.compile(rb"[\xee-\xf4]")
_EXACT_INT = 2.0**53


def _refuse(value: object) -> NoReturn:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


# The deepest nesting of objects and arrays a record may have, the record itself being level
# 1 (docs/record-spec.md §2). Every path goes through canonicalize (sealing, both ingest
# paths, every verifier), so this is the one limit; deeper values broke the readers (a
# serializer's own recursion limit) long after they had been accepted.
MAX_DEPTH = 64
# The largest record: its hashed body (the record less event.hash and ffaudit.signature) in
# canonical form (docs/record-spec.md §2). One limit for the sealer, both ingest paths and
# every verifier, so a record one accepts is never one another refuses.
MAX_RECORD_BYTES = 1 << 20


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical bytes of `value` (JSON data model types only).

    Raises CanonicalizationError for values JCS cannot represent exactly, and for values
    nested deeper than MAX_DEPTH.
    """
    if _hazardous(value, 1):
        return canonicalize_reference(value)
    try:
        out = orjson.dumps(value, default=_refuse, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        # Let the reference decide, so errors read the same whichever path met the value.
        return canonicalize_reference(value)
    if not out.isascii() and _KEY_ORDER_HAZARD.search(out) is not None:
        return canonicalize_reference(value)
    return out


def record_body(record: Any) -> bytes:
    """The canonical bytes of a record's hashed body; CanonicalizationError past
    MAX_RECORD_BYTES as for any value JCS cannot represent."""
    body = canonicalize(record)
    if len(body) > MAX_RECORD_BYTES:
        raise CanonicalizationError(
            f"the record is larger than {MAX_RECORD_BYTES} bytes in canonical form"
        )
    return body


def _float_hazard(x: float) -> bool:
    """True unless orjson prints `x` exactly as ECMAScript does (NaN and inf included)."""
    return x.is_integer() or not (1e-5 <= abs(x) < _EXACT_INT or abs(x) < 1e-6)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests objects and arrays deeper than `limit` levels."""
    level, current = 1, [value]
    while current:
        containers = [v for v in current if type(v) is dict or type(v) is list]
        if not containers:
            return False
        if level > limit:
            return True
        current = [item for c in containers for item in (c.values() if type(c) is dict else c)]
        level += 1
    return False


def _hazardous(value: Any, depth: int) -> bool:
    # Hot: one loop per container, recursion only for nested containers.
    if depth > MAX_DEPTH:
        raise CanonicalizationError(f"the value nests deeper than {MAX_DEPTH} levels")
    t = type(value)
    if t is dict:
        items = value.values()
    elif t is list:
        items = value
    elif t is str or t is int or t is bool:
        return False
    elif t is float:
        return _float_hazard(value)
    else:
        return True  # None, tuples, subclasses, anything orjson might extend JSON with
    for item in items:
        t = type(item)
        if t is str or t is int or t is bool:
            continue
        if t is float:
            if _float_hazard(item):
                return True
        elif t is dict or t is list:
            if _hazardous(item, depth + 1):
                return True
        else:
            return True
    return False


def canonicalize_reference(value: Any) -> bytes:
    """The reference implementation (`rfc8785`), with its errors made ours."""
    try:
        _refuse_ambiguous_floats(value)
        return rfc8785.dumps(value)
    except rfc8785.FloatDomainError as exc:
        raise CanonicalizationError(f"cannot canonicalize float: {exc}") from exc
    except rfc8785.IntegerDomainError as exc:
        raise CanonicalizationError(
            f"integer outside the exact JSON range ±(2**53-1): {exc}"
        ) from exc
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(f"not representable in RFC 8785 JSON: {exc}") from exc
    except (TypeError, ValueError, UnicodeError) as exc:
        raise CanonicalizationError(f"not representable in RFC 8785 JSON: {exc}") from exc
    except RecursionError as exc:
        raise CanonicalizationError("value nested too deeply") from exc


def _refuse_ambiguous_floats(value: Any) -> None:
    # Only reached on the exact path, so the walk costs nothing on ordinary records.
    if type(value) is float:
        if _EXACT_INT <= abs(value) < 1e21:
            raise CanonicalizationError(
                f"float {value!r} would be written as an integer beyond ±(2**53-1) and "
                "could not be verified after parsing; send it as a string"
            )
    elif isinstance(value, dict):
        for item in value.values():
            _refuse_ambiguous_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_ambiguous_floats(item)
