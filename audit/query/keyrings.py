"""Tenants' pseudonym keyrings on the service side.

Records hold keyed pseudonyms only. To answer "what did alice do?" the service must
compute alice's pseudonym under every active key of her tenant, so each tenant's keyring
(the producers' pii.key) is imported by an administrator: `ffaudit keyrings import`.
Without it, queries by raw id are refused rather than silently matching nothing.

With the subject vault (audit.subjects), a raw user id or e-mail also matches the subject's
per-subject (v2) pseudonym while its vault entry lives; after an erasure it no longer does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import ConflictError, UsageError
from audit.integrity.keys import Keyring
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.streams.schemas import validate_tenant

if TYPE_CHECKING:
    from audit.subjects.protocol import SubjectVault


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
        keyring = Keyring.loads(data, "keyring")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".import-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(keyring.dumps())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path(tenant))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return keyring

    def _path(self, tenant: str) -> Path:
        try:
            validate_tenant(tenant)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return self.directory / f"{tenant}.pii.key"
