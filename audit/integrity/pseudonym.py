"""Keyed pseudonyms for PII (actor ids, client IPs, session ids, file paths).

pseudonym = hex HMAC-SHA256(K_tenant_key, "ffaudit.pseudonym.v1" 0x00 kind 0x00 value)
K_tenant_key = HKDF-SHA256(ikm=keyring secret, salt=empty, info="ffaudit.pseudonym.v1" 0x00 tenant)

A keyed hash, because a plain SHA-256 of an IPv4 address is reversed by enumerating 2**32
inputs in minutes. The kind label separates domains: the same string used as a user id and
as a path yields unrelated pseudonyms. HKDF per tenant means one tenant's pseudonyms reveal
nothing about another's, even under a shared keyring file.

With a subject vault (audit.subjects), identifying kinds (SUBJECT_KINDS) use scheme v2:
pseudonym = hex HMAC-SHA256(subject secret, "ffaudit.pseudonym.v2" 0x00 kind 0x00 value),
the secret being random per subject and findable only through the vault (lookup = the v1
pseudonym). Destroying the vault entry erases the link; see docs/record-spec.md §11.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from audit.integrity.cache import TtlCache
from audit.integrity.digest import KeyedHash
from audit.integrity.errors import InvalidInputError, SubjectVaultUnavailableError
from audit.integrity.keys import Keyring, PseudonymKey

if TYPE_CHECKING:
    from audit.integrity.subjects import SubjectVault

log = logging.getLogger("audit.integrity.pseudonym")
_LABEL = b"ffaudit.pseudonym.v1"
_SUBJECT_LABEL = b"ffaudit.pseudonym.v2"


class PiiKind(StrEnum):
    USER = "user"
    CLIENT_IP = "client_ip"
    SESSION = "session"
    PATH = "path"
    EMAIL = "email"


# Kinds that name a data subject, whom an erasure request names: with a vault they get a
# per-subject secret. Sessions, client IPs and paths keep keyring pseudonyms: no request
# names them, and security work needs them stable across subjects (one IP, many users).
SUBJECT_KINDS = frozenset({PiiKind.USER, PiiKind.EMAIL})


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
    """Pseudonyms for one tenant. New records use the keyring's current key, or with a
    `vault` the subject's own secret for SUBJECT_KINDS (looked up, or created, in the vault
    and cached for `vault_ttl_s`: an erasure reaches this sealer within that time)."""

    def __init__(
        self,
        keyring: Keyring,
        tenant: str,
        cache_size: int = 65536,
        *,
        vault: SubjectVault | None = None,
        vault_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenant = tenant
        self.key_id = keyring.current
        self.vault = vault
        self._keyring = keyring
        self._hashers = {k.key_id: KeyedHash(_tenant_key(k, tenant)) for k in keyring.active}
        self._current = self._hashers[keyring.current]
        # Actors, sessions and IPs repeat on every record of a job; the cache is bounded.
        self._keyed = lru_cache(maxsize=cache_size)(self._pseudonym)
        self.pseudonym: Callable[[PiiKind, str], str] = self._keyed
        if vault is not None:
            self._subjects: TtlCache[tuple[PiiKind, str], str] = TtlCache(
                cache_size, vault_ttl_s, clock
            )
            self.pseudonym = self._vaulted

    def _pseudonym(self, kind: PiiKind, value: str) -> str:
        return self._current.hex(_message(kind, value))

    def _vaulted(self, kind: PiiKind, value: str) -> str:
        if kind not in SUBJECT_KINDS:
            return self._keyed(kind, value)
        assert self.vault is not None
        cached = self._subjects.get((kind, value))
        if cached is not None and cached.fresh:
            return cached.value
        message = _message(kind, value)  # refuses a bad value before any vault round trip
        try:
            secret = self.vault.get_or_create(self.tenant, kind.value, self._lookups(message))
        except SubjectVaultUnavailableError:
            if cached is None:
                raise
            # A subject seen before keeps its pseudonym through a vault outage (an erasure
            # made meanwhile is learnt on the next successful refresh); one retry per TTL.
            log.warning("subject vault unavailable: reusing a cached %s pseudonym", kind.value)
            self._subjects.put((kind, value), cached.value)
            return cached.value
        pseudonym = _subject_hash(secret, kind, value)
        self._subjects.put((kind, value), pseudonym)
        return pseudonym

    def candidates(self, kind: PiiKind, value: str) -> dict[str, str]:
        """The pseudonym under every active key, and with a vault the subject's live v2
        pseudonym(s): what a query by raw value must match. Never creates a vault entry."""
        message = _message(kind, value)
        found = {key_id: h.hex(message) for key_id, h in self._hashers.items()}
        if self.vault is not None and kind in SUBJECT_KINDS:
            lookups = self._lookups(message)
            by_lookup = dict(zip(lookups, self._lookup_hashers, strict=True))
            for entry in self.vault.find(self.tenant, kind.value, lookups):
                found[f"subject@{by_lookup[entry.lookup]}"] = _subject_hash(
                    entry.secret, kind, value
                )
        return found

    def subject_lookups(self, kind: PiiKind, value: str) -> tuple[str, ...]:
        """Where the vault files this subject: its v1 pseudonym under every key of the
        keyring, the current key's first (what an erasure must destroy)."""
        return self._lookups(_message(kind, value))

    @cached_property
    def _lookup_hashers(self) -> dict[str, KeyedHash]:
        # Every key, inactive ones included: an entry filed under a key that no longer
        # matches queries must still be found, reused and erasable.
        keys = sorted(self._keyring.keys, key=lambda k: k.key_id != self._keyring.current)
        return {k.key_id: KeyedHash(_tenant_key(k, self.tenant)) for k in keys}

    def _lookups(self, message: bytes) -> tuple[str, ...]:
        return tuple(h.hex(message) for h in self._lookup_hashers.values())


def _message(kind: PiiKind, value: str, label: bytes = _LABEL) -> bytes:
    return label + b"\x00" + kind.value.encode() + b"\x00" + normalize(kind, value).encode()


def _subject_hash(secret: bytes, kind: PiiKind, value: str) -> str:
    return KeyedHash(secret).hex(_message(kind, value, _SUBJECT_LABEL))
