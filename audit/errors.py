"""The one error hierarchy of the audit package.

Every error carries the exit code the CLI returns and the HTTP status the service answers
with, so one handler per front end turns any of them into a clear message (sigstore's
`Error`, polar's `PolarError`). Messages never include raw PII: callers pass pseudonyms or
positions (line, sequence), not values.
"""

from __future__ import annotations

# The root and the errors the integrity kernel raises live in the kernel, which imports
# nothing else of the service; they are the same classes here.
from audit.integrity.errors import (
    CanonicalizationError,
    FFAuditError,
    InvalidInputError,
    KeyMaterialError,
    SubjectVaultUnavailableError,
    UsageError,
)

__all__ = [
    "AuthenticationError",
    "BusyError",
    "CanonicalizationError",
    "ConflictError",
    "FFAuditError",
    "ForbiddenError",
    "IntegrityError",
    "InvalidInputError",
    "KeyMaterialError",
    "NotFoundError",
    "ServiceRefusedError",
    "StoreUnavailableError",
    "SubjectVaultUnavailableError",
    "TooManyRequestsError",
    "UsageError",
    "WebhookSignatureError",
]


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


class WebhookSignatureError(AuthenticationError):
    """A webhook request's signature header is malformed, stale, or does not match the body
    (raised on the receiver's side, by audit.webhooks.signing.verify_signature)."""
