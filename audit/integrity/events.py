"""The audit vocabulary: every `event.action` is a member of `EventAction` (`subject.action`).

Each action carries its ECS categorisation and whether it is *critical*: critical records
are never dropped by the per-session rate limiter (job outcomes, security events, erasure
evidence, and the integrity machinery's own records).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from audit.integrity.errors import InvalidInputError


class EventAction(StrEnum):
    JOB_SUBMITTED = "job.submitted"
    JOB_STARTED = "job.started"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_REFUSED = "job.refused"
    FACE_DETECTED = "face.detected"
    FACE_SWAPPED = "face.swapped"
    FACE_ANONYMIZED = "face.anonymized"
    FRAME_FAILED = "frame.failed"
    MODEL_LOADED = "model.loaded"
    MODEL_REJECTED = "model.rejected"
    INPUT_ERASED = "input.erased"
    RESULT_DELETED = "result.deleted"
    SESSION_STARTED = "session.started"
    SESSION_ENDED = "session.ended"
    AUTH_FAILED = "auth.failed"
    ACCESS_DENIED = "access.denied"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    AUDIT_RATE_LIMITED = "audit.rate_limited"
    # The log of the logs: what people did with the audit trail itself.
    AUDIT_QUERIED = "audit.queried"
    AUDIT_VERIFIED = "audit.verified"
    AUDIT_EXPORTED = "audit.exported"
    STREAM_REGISTERED = "stream.registered"
    # Administration of retention, holds, erasure and alerts (also the log of the logs).
    RETENTION_POLICY_CHANGED = "retention.policy_changed"
    RETENTION_PURGED = "retention.purged"
    RETENTION_FAILED = "retention.failed"
    ARCHIVE_RESTORED = "archive.restored"
    HOLD_PLACED = "hold.placed"
    HOLD_RELEASED = "hold.released"
    SUBJECT_ERASED = "subject.erased"
    ALERT_RULE_CHANGED = "alert_rule.changed"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERT_RESOLVED = "alert.resolved"
    WEBHOOK_CHANGED = "webhook.changed"
    PRODUCER_CHANGED = "producer.changed"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ActionInfo:
    category: tuple[str, ...]  # ECS event.category allowed values
    type: tuple[str, ...]  # ECS event.type allowed values
    critical: bool
    kind: str = "event"  # ECS event.kind


_P, _F, _L, _A, _D = ("process",), ("file",), ("library",), ("authentication",), ("database",)
_C = ("configuration",)
ACTIONS: dict[EventAction, ActionInfo] = {
    # Critical: it holds the job's parameters, which no limiter may lose (issue 14).
    EventAction.JOB_SUBMITTED: ActionInfo(_P, ("creation",), critical=True),
    EventAction.JOB_STARTED: ActionInfo(_P, ("start",), critical=False),
    EventAction.JOB_COMPLETED: ActionInfo(_P, ("end",), critical=True),
    EventAction.JOB_FAILED: ActionInfo(_P, ("end", "error"), critical=True),
    # An attempted use that never ran (no model, bad input, queue full): still provable.
    EventAction.JOB_REFUSED: ActionInfo(_P, ("denied",), critical=True),
    EventAction.FACE_DETECTED: ActionInfo(_P, ("info",), critical=False),
    EventAction.FACE_SWAPPED: ActionInfo(_P, ("change",), critical=False),
    EventAction.FACE_ANONYMIZED: ActionInfo(_P, ("change",), critical=False),
    EventAction.FRAME_FAILED: ActionInfo(_P, ("error",), critical=False),
    EventAction.MODEL_LOADED: ActionInfo(_L, ("start",), critical=False),
    EventAction.MODEL_REJECTED: ActionInfo(_L, ("denied",), critical=True),
    EventAction.INPUT_ERASED: ActionInfo(_F, ("deletion",), critical=True),
    EventAction.RESULT_DELETED: ActionInfo(_F, ("deletion",), critical=True),
    EventAction.SESSION_STARTED: ActionInfo(("session",), ("start",), critical=False),
    EventAction.SESSION_ENDED: ActionInfo(("session",), ("end",), critical=False),
    EventAction.AUTH_FAILED: ActionInfo(_A, ("denied",), critical=True),
    EventAction.ACCESS_DENIED: ActionInfo(("iam",), ("denied",), critical=True),
    EventAction.AUDIT_CHECKPOINT: ActionInfo(_D, ("info",), critical=True, kind="state"),
    EventAction.AUDIT_RATE_LIMITED: ActionInfo(_D, ("info",), critical=True, kind="metric"),
    EventAction.AUDIT_QUERIED: ActionInfo(_D, ("access",), critical=True),
    EventAction.AUDIT_VERIFIED: ActionInfo(_D, ("access",), critical=True),
    EventAction.AUDIT_EXPORTED: ActionInfo(_D, ("access",), critical=True),
    EventAction.STREAM_REGISTERED: ActionInfo(("configuration",), ("creation",), critical=True),
    EventAction.RETENTION_POLICY_CHANGED: ActionInfo(_C, ("change",), critical=True),
    EventAction.RETENTION_PURGED: ActionInfo(_D, ("change",), critical=True),
    EventAction.RETENTION_FAILED: ActionInfo(_D, ("change", "error"), critical=True),
    EventAction.ARCHIVE_RESTORED: ActionInfo(_D, ("change",), critical=True),
    EventAction.HOLD_PLACED: ActionInfo(_C, ("creation",), critical=True),
    EventAction.HOLD_RELEASED: ActionInfo(_C, ("deletion",), critical=True),
    EventAction.SUBJECT_ERASED: ActionInfo(("iam",), ("user", "deletion"), critical=True),
    EventAction.ALERT_RULE_CHANGED: ActionInfo(_C, ("change",), critical=True),
    EventAction.ALERT_ACKNOWLEDGED: ActionInfo(_C, ("change",), critical=True),
    EventAction.ALERT_RESOLVED: ActionInfo(_C, ("change",), critical=True),
    EventAction.WEBHOOK_CHANGED: ActionInfo(_C, ("change",), critical=True),
    EventAction.PRODUCER_CHANGED: ActionInfo(_C, ("change",), critical=True),
}

# Plain event files written to the brief's example use snake_case verbs ("face_swap").
_ALIASES: dict[str, EventAction] = {
    "face_swap": EventAction.FACE_SWAPPED,
    "face_detect": EventAction.FACE_DETECTED,
    "face_anonymize": EventAction.FACE_ANONYMIZED,
    "anonymize": EventAction.FACE_ANONYMIZED,
    "job_submit": EventAction.JOB_SUBMITTED,
    "job_start": EventAction.JOB_STARTED,
    "job_complete": EventAction.JOB_COMPLETED,
    "job_fail": EventAction.JOB_FAILED,
    "frame_fail": EventAction.FRAME_FAILED,
    "model_load": EventAction.MODEL_LOADED,
    "model_reject": EventAction.MODEL_REJECTED,
    "input_erase": EventAction.INPUT_ERASED,
    "login_failed": EventAction.AUTH_FAILED,
}
# Producers may not write the integrity machinery's own records.
_RESERVED = frozenset({EventAction.AUDIT_CHECKPOINT, EventAction.AUDIT_RATE_LIMITED})


def parse_action(name: str) -> EventAction:
    """Map a producer's action name (enum value or brief-style alias) to the enum."""
    action = _ALIASES.get(name)
    if action is None:
        try:
            action = EventAction(name)
        except ValueError:
            known = ", ".join(sorted([*(a.value for a in EventAction), *_ALIASES]))
            raise InvalidInputError(f"unknown action {name!r}; known: {known}") from None
    if action in _RESERVED:
        raise InvalidInputError(f"action {action.value!r} is reserved for the audit chain")
    return action
