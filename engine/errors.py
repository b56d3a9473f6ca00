"""The one error hierarchy of the engine: each error carries its exit code and HTTP status."""

from __future__ import annotations


class FFEngineError(Exception):
    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Set where the refusal was already written to the audit trail (job.refused under
        # `job_id`), so that no outer layer records it twice.
        self.audited = False
        self.job_id: str | None = None


class UsageError(FFEngineError):
    """Bad arguments or configuration."""

    exit_code = 2
    http_status = 400


class InputError(FFEngineError):
    """An input file is missing, unreadable or not an image/video."""

    exit_code = 2
    http_status = 422


class TooLargeError(FFEngineError):
    """An upload is over FFENGINE_MAX_UPLOAD_BYTES."""

    exit_code = 2
    http_status = 413


class ModelError(FFEngineError):
    """A model is missing, tampered with, of the wrong shape, or its licence forbids use."""

    exit_code = 3
    http_status = 409


class JobFailedError(FFEngineError):
    """The face pipeline failed on a job (after the failure was audited)."""

    exit_code = 4
    http_status = 500


class AuditUnavailableError(FFEngineError):
    """The audit trail cannot accept records (spool full): no job may run unaudited."""

    exit_code = 5
    http_status = 503


class NotFoundError(FFEngineError):
    """No such job (or not the caller's: the answer is the same)."""

    exit_code = 2
    http_status = 404


class UnauthorizedError(FFEngineError):
    """No usable bearer token. The answer never says more than that."""

    exit_code = 2
    http_status = 401


class ForbiddenError(FFEngineError):
    """An authenticated caller asked for what is not theirs (another user's session)."""

    exit_code = 2
    http_status = 403


class ConflictError(FFEngineError):
    """The job is not in a state that allows it (a result of a running job)."""

    exit_code = 2
    http_status = 409


class BusyError(FFEngineError):
    """The job queue is full: try again later (HTTP 503 with Retry-After)."""

    exit_code = 5
    http_status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
