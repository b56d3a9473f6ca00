"""Keep PII out of free text and free metadata.

Structured PII fields are pseudonymised by the sealer; this module handles what producers
put in error messages and metadata: the event's own raw PII values, anything shaped like an
IP address or e-mail address, and metadata keys that name PII (`source_path`, `ip`...),
whose values become pseudonyms under `<key>_hash`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from audit.integrity.errors import InvalidInputError
from audit.integrity.pseudonym import PiiKind

Pseudonym = Callable[[PiiKind, str], str]

_IPV4 = r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"
# Loose on purpose: a false positive only hides a token from an error message.
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_PATTERNS = re.compile(f"(?P<email>{_EMAIL})|(?P<ip>{_IPV4}|{_IPV6})")
_PII_KEY = re.compile(
    r"(?:^|_)(?P<kind>path|file|filename|filepath|dir|directory|ip|client_ip|email|user|"
    r"username|user_id|session|session_id)$",
    re.IGNORECASE,
)
_KEY_KIND = {
    "path": PiiKind.PATH,
    "file": PiiKind.PATH,
    "filename": PiiKind.PATH,
    "filepath": PiiKind.PATH,
    "dir": PiiKind.PATH,
    "directory": PiiKind.PATH,
    "ip": PiiKind.CLIENT_IP,
    "client_ip": PiiKind.CLIENT_IP,
    "email": PiiKind.EMAIL,
    "user": PiiKind.USER,
    "username": PiiKind.USER,
    "user_id": PiiKind.USER,
    "session": PiiKind.SESSION,
    "session_id": PiiKind.SESSION,
}
_TOKEN_HEX = 16  # enough to correlate two messages; the full pseudonym is in the fields


@lru_cache(maxsize=4096)
def _key_kind(key: str) -> PiiKind | None:
    # Metadata keys repeat on every record of a job; classify each spelling once.
    match = _PII_KEY.search(key)
    return None if match is None else _KEY_KIND[match.group("kind").lower()]


class Scrubber:
    """Scrubs one event's free text, knowing that event's raw PII values."""

    def __init__(self, pseudonym: Pseudonym, known: Iterable[tuple[PiiKind, str]]) -> None:
        self._pseudonym = pseudonym
        # Longest first, so "/data/a.png" is replaced before a shorter value inside it.
        self._known = sorted(
            ((kind, value) for kind, value in known if value), key=lambda kv: -len(kv[1])
        )

    def text(self, value: str) -> str:
        for kind, raw in self._known:
            if raw in value:
                value = value.replace(raw, self._token(kind, raw))
        if "@" in value or "." in value or ":" in value:
            value = _PATTERNS.sub(self._pattern_token, value)
        return value

    def metadata(self, value: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            kind = _key_kind(key) if isinstance(key, str) else None
            if kind is not None and isinstance(item, str):
                try:
                    out[f"{key}_hash"] = self._pseudonym(kind, item)
                except InvalidInputError:  # "ip": "unknown" is no address: scrub as text
                    out[key] = self.text(item)
            else:
                out[key] = self._value(item)
        return out

    def _value(self, item: Any) -> Any:
        if isinstance(item, str):
            return self.text(item)
        if isinstance(item, Mapping):
            return self.metadata(item)
        if isinstance(item, list | tuple):
            return [self._value(v) for v in item]
        return item

    def _token(self, kind: PiiKind, raw: str) -> str:
        try:
            return f"[{kind.value}:{self._pseudonym(kind, raw)[:_TOKEN_HEX]}]"
        except InvalidInputError:  # a loose IPv6 match ("10:30:00") that is no address
            return f"[{kind.value}]"

    def _pattern_token(self, match: re.Match[str]) -> str:
        if match.group("email") is not None:
            return self._token(PiiKind.EMAIL, match.group("email"))
        return self._token(PiiKind.CLIENT_IP, match.group("ip"))
