"""Keyed pseudonyms for PII (actor ids, client IPs, session ids, file paths).

pseudonym = hex HMAC-SHA256(K_tenant_key, "ffaudit.pseudonym.v1" 0x00 kind 0x00 value)
K_tenant_key = HKDF-SHA256(ikm=keyring secret, salt=empty, info="ffaudit.pseudonym.v1" 0x00 tenant)

A keyed hash, because a plain SHA-256 of an IPv4 address is reversed by enumerating 2**32
inputs in minutes. The kind label separates domains: the same string used as a user id and
as a path yields unrelated pseudonyms. HKDF per tenant means one tenant's pseudonyms reveal
nothing about another's, even under a shared keyring file.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from audit.errors import InvalidInputError
from audit.integrity.digest import KeyedHash
from audit.integrity.keys import Keyring, PseudonymKey

_LABEL = b"ffaudit.pseudonym.v1"


class PiiKind(StrEnum):
    USER = "user"
    CLIENT_IP = "client_ip"
    SESSION = "session"
    PATH = "path"
    EMAIL = "email"


def normalize(kind: PiiKind, value: str) -> str:
    """One spelling per identity, so the same IP or user always maps to one pseudonym."""
    if kind is PiiKind.CLIENT_IP:
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            raise InvalidInputError("client_ip is not an IP address") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.compressed
    if kind is PiiKind.EMAIL:
        return value.strip().lower()
    return value


def _tenant_key(key: PseudonymKey, tenant: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + b"\x00" + tenant.encode()
    ).derive(key.secret)


class Pseudonymizer:
    """Pseudonyms for one tenant. New records use the keyring's current key."""

    def __init__(self, keyring: Keyring, tenant: str, cache_size: int = 65536) -> None:
        self.tenant = tenant
        self.key_id = keyring.current
        self._hashers = {k.key_id: KeyedHash(_tenant_key(k, tenant)) for k in keyring.active}
        self._current = self._hashers[keyring.current]
        # Actors, sessions and IPs repeat on every record of a job; the cache is bounded.
        self.pseudonym = lru_cache(maxsize=cache_size)(self._pseudonym)

    def _pseudonym(self, kind: PiiKind, value: str) -> str:
        return self._current.hex(_message(kind, value))

    def candidates(self, kind: PiiKind, value: str) -> dict[str, str]:
        """The pseudonym under every active key: what a query by raw value must match."""
        message = _message(kind, value)
        return {key_id: h.hex(message) for key_id, h in self._hashers.items()}


def _message(kind: PiiKind, value: str) -> bytes:
    return _LABEL + b"\x00" + kind.value.encode() + b"\x00" + normalize(kind, value).encode()
