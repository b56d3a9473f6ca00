"""The integrity kernel's errors, and the root of the audit package's one error hierarchy.

The kernel (audit.integrity) is a leaf: producers and outside verifiers import it without
the service, so its errors cannot live in the service's module. `audit.errors` re-exports
these classes and adds the service's own; every error carries the exit code the CLI returns
and the HTTP status the service answers with.
"""

from __future__ import annotations


class FFAuditError(Exception):
    """Base class: anything ffaudit raises on purpose."""

    exit_code: int = 2
    http_status: int = 500

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index  # the offending record's position, for batch input


class UsageError(FFAuditError):
    """The caller asked for something that cannot work (bad option, missing file)."""

    exit_code = 2
    http_status = 400


class InvalidInputError(FFAuditError):
    """Input data is malformed; the message names where (line, field)."""

    exit_code = 2
    http_status = 422


class CanonicalizationError(InvalidInputError):
    """A value has no exact RFC 8785 representation (NaN, out-of-range number, bytes...)."""


class KeyMaterialError(FFAuditError):
    """Key files are missing, unreadable, of the wrong type or unsafe."""

    exit_code = 2
    http_status = 500


class SubjectVaultUnavailableError(FFAuditError):
    """The subject vault (per-subject pseudonym keys) cannot be read or written now."""

    exit_code = 2
    http_status = 503
