"""Tenants' pseudonym keyrings on the service side.

Records hold keyed pseudonyms only. To answer "what did alice do?" the service must
compute alice's pseudonym under every active key of her tenant, so each tenant's keyring
(the producers' pii.key) is imported by an administrator: `ffaudit keyrings import`.
Without it, queries by raw id are refused rather than silently matching nothing.

With the subject vault (audit.subjects), a raw user id or e-mail also matches the subject's
per-subject (v2) pseudonym while its vault entry lives; after an erasure it no longer does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from audit.common.files import write_atomic
from audit.errors import ConflictError, UsageError
from audit.integrity.keys import Keyring
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.streams.schemas import validate_tenant

if TYPE_CHECKING:
    from audit.integrity.subjects import SubjectVault


class TenantKeyrings:
    def __init__(self, directory: Path, vault: SubjectVault | None = None) -> None:
        self.directory = directory
        self.vault = vault

    def pseudonymizer(self, tenant: str) -> Pseudonymizer | None:
        path = self._path(tenant)
        if not path.is_file():
            return None
        return Pseudonymizer(Keyring.load(path), tenant, vault=self.vault)

    def require(self, tenant: str) -> Pseudonymizer:
        pseudonymizer = self.pseudonymizer(tenant)
        if pseudonymizer is None:
            raise ConflictError(
                f"tenant {tenant!r} has no pseudonym keyring on this service: queries by "
                "raw id need it (ffaudit keyrings import)"
            )
        return pseudonymizer

    def candidates(self, tenant: str, kind: PiiKind, raw: str) -> tuple[str, ...]:
        """The pseudonyms `raw` has under every active key of the tenant, and its live
        per-subject pseudonym when the vault holds one."""
        pseudonymizer = self.require(tenant)
        return tuple(sorted(set(pseudonymizer.candidates(kind, raw).values())))

    def import_keyring(self, tenant: str, data: bytes) -> Keyring:
        """Add the keys of a producer's keyring to the tenant's: every engine of a tenant may
        have its own pii.key, and a query by raw id must match under all of them (replacing
        the tenant's keyring made the other producers' records silently unfindable). Keys
        already held are skipped; a key id held with another secret is refused."""
        incoming = Keyring.loads(data, "keyring")
        path = self._path(tenant)
        keyring = _merged(Keyring.load(path), incoming) if path.is_file() else incoming
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._path(tenant), keyring.dumps(), mode=0o600)
        return keyring

    def keys(self, tenant: str) -> tuple[str, ...]:
        """The ids of the tenant's active pseudonym keys (what a raw-id query covers)."""
        path = self._path(tenant)
        return tuple(k.key_id for k in Keyring.load(path).active) if path.is_file() else ()

    def _path(self, tenant: str) -> Path:
        try:
            validate_tenant(tenant)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return self.directory / f"{tenant}.pii.key"


def _merged(held: Keyring, incoming: Keyring) -> Keyring:
    known = {k.key_id: k for k in held.keys}
    added = []
    for key in incoming.keys:
        same = known.get(key.key_id)
        if same is None:
            added.append(key)
        elif same.secret != key.secret:
            raise ConflictError(
                f"pseudonym key {key.key_id!r} is already held with another secret: "
                "refusing to replace it (records sealed under it would become unfindable)"
            )
    return Keyring((*held.keys, *added), held.current)
