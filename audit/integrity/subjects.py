"""The subject vault's contract: what the Pseudonymizer and the erasure service rely on.

Kept free of SQL so that the integrity core (audit.integrity.pseudonym) depends on this
interface only; audit.subjects.vault is the implementation on any SQLAlchemy URL.

A producer (the engine) opens a vault by URL through `open_vault`, which finds the
implementation as a plugin (entry-point group `ffaudit.subject_vaults`, registered in
pyproject.toml) rather than importing it: the engine then depends on this contract alone,
and SQLAlchemy is loaded only by an engine that is configured with a vault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Protocol, cast

from audit.integrity.errors import UsageError

SECRET_BYTES = 32
VAULT_PLUGINS = "ffaudit.subject_vaults"
SQL_VAULT = "sql"  # the service's implementation: any SQLAlchemy URL


@dataclass(frozen=True, slots=True)
class SubjectEntry:
    lookup: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class Erasure:
    """A tombstone: what was erased, never whose id."""

    erasure_id: str
    tenant: str
    kind: str
    entries: int
    erased_at: datetime


class SubjectVault(Protocol):
    """Per-subject secrets keyed by (tenant, kind, lookup).

    `lookups` are one subject's lookup values under every key of the tenant keyring, the
    current key's first: after a keyring rotation an entry created under an older key is
    still found, and a new entry is always filed under the current key.
    """

    def get_or_create(self, tenant: str, kind: str, lookups: Sequence[str]) -> bytes:
        """The subject's secret, created (SECRET_BYTES random bytes, filed under lookups[0])
        when no entry exists. Concurrent callers for one lookup all get the same secret."""
        ...

    def find(self, tenant: str, kind: str, lookups: Sequence[str]) -> list[SubjectEntry]:
        """The subject's live entries, in the order of `lookups`; never creates one."""
        ...

    def erase(self, tenant: str, kind: str, lookups: Sequence[str]) -> Erasure:
        """Destroy every entry under any of `lookups` and keep a tombstone, atomically."""
        ...

    def erasures(self, tenant: str, limit: int) -> list[Erasure]:
        """The tenant's tombstones, newest first."""
        ...


def preferred(entries: Sequence[SubjectEntry], lookups: Sequence[str]) -> SubjectEntry:
    """The entry a sealer uses when several exist for one subject (an entry created under
    the current key by one producer and under an older key by one not yet rotated): the
    earliest in `lookups`, so every producer with the same keyring picks the same one."""
    rank = {lookup: i for i, lookup in enumerate(lookups)}
    return min(entries, key=lambda e: rank.get(e.lookup, len(rank)))


class VaultConnection(SubjectVault, Protocol):
    """A vault a producer opened by URL: it owns the connection and checks it at start."""

    def ping(self) -> None:
        """Raise SubjectVaultUnavailableError unless the vault can be read."""
        ...

    def close(self) -> None: ...


class VaultFactory(Protocol):
    def from_url(self, url: str) -> VaultConnection: ...


def open_vault(url: str, implementation: str = SQL_VAULT) -> VaultConnection:
    """The vault at `url`, through the implementation registered under that name."""
    found = entry_points(group=VAULT_PLUGINS, name=implementation)
    if not found:
        raise UsageError(
            f"no subject vault implementation {implementation!r} is installed "
            f"(entry point group {VAULT_PLUGINS}); install the audit service's package"
        )
    factory = cast(VaultFactory, next(iter(found)).load())
    return factory.from_url(url)
