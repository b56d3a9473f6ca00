"""The one error hierarchy of the audit package.

Every error carries the exit code the CLI returns and the HTTP status the service answers
with, so one handler per front end turns any of them into a clear message (sigstore's
`Error`, polar's `PolarError`). Messages never include raw PII: callers pass pseudonyms or
positions (line, sequence), not values.
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


class IntegrityError(FFAuditError):
    """Records failed verification: something was modified, dropped, forged or reordered."""

    exit_code = 1
    http_status = 409


class NotFoundError(FFAuditError):
    """The named object does not exist (or is not visible to the caller's tenant)."""

    exit_code = 2
    http_status = 404


class ConflictError(FFAuditError):
    """The request contradicts stored state (e.g. a stream registered with another key)."""

    exit_code = 2
    http_status = 409


class StoreUnavailableError(FFAuditError):
    """The event store cannot take or serve records now; the caller withholds its ack."""

    exit_code = 2
    http_status = 503


class BusyError(FFAuditError):
    """Temporarily unable to complete (e.g. contention on a chain head): retry later."""

    exit_code = 2
    http_status = 503


class AuthenticationError(FFAuditError):
    """No credentials, or credentials that do not verify (forged, expired, wrong audience)."""

    exit_code = 2
    http_status = 401


class ForbiddenError(FFAuditError):
    """Authenticated, but the caller's role or tenant does not allow this."""

    exit_code = 2
    http_status = 403


class TooManyRequestsError(FFAuditError):
    """The caller is over a budget (e.g. of unverifiable input); retry later, or send less."""

    exit_code = 2
    http_status = 429


class ServiceRefusedError(FFAuditError):
    """The audit service answered a CLI request with an error."""

    exit_code = 2
    http_status = 502


class SubjectVaultUnavailableError(FFAuditError):
    """The subject vault (per-subject pseudonym keys) cannot be read or written now."""

    exit_code = 2
    http_status = 503


class WebhookSignatureError(AuthenticationError):
    """A webhook request's signature header is malformed, stale, or does not match the body
    (raised on the receiver's side, by audit.webhooks.signing.verify_signature)."""
