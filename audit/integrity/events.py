"""The audit vocabulary: every `event.action` is a member of `EventAction` (`subject.action`).

Each action carries its ECS categorisation and whether it is *critical*: critical records
are never dropped by the per-session rate limiter (job outcomes, security events, erasure
evidence, and the integrity machinery's own records).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from audit.integrity.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class ActionInfo:
    category: tuple[str, ...]  # ECS event.category allowed values
    type: tuple[str, ...]  # ECS event.type allowed values
    critical: bool
    kind: str = "event"  # ECS event.kind


_P, _F, _L, _A, _D = ("process",), ("file",), ("library",), ("authentication",), ("database",)
_C, _S, _I = ("configuration",), ("session",), ("iam",)


class EventAction(StrEnum):
    """Each member is its value and its `ActionInfo`, given together in its definition, so
    an action cannot exist without its categorisation (a separate table could miss one)."""

    _value_: str
    info: ActionInfo

    def __new__(cls, value: str, info: ActionInfo | None = None) -> EventAction:
        # Runs only while the members are defined; afterwards EventAction(value) is a lookup
        # that never comes here, which is why `info` is optional to the type checker.
        if info is None:
            raise TypeError(f"action {value!r} is defined without its ActionInfo")
        member = str.__new__(cls, value)
        member._value_ = value
        member.info = info
        return member

    # Critical: it holds the job's parameters, which no limiter may lose (issue 14).
    JOB_SUBMITTED = "job.submitted", ActionInfo(_P, ("creation",), critical=True)
    JOB_STARTED = "job.started", ActionInfo(_P, ("start",), critical=False)
    JOB_COMPLETED = "job.completed", ActionInfo(_P, ("end",), critical=True)
    JOB_FAILED = "job.failed", ActionInfo(_P, ("end", "error"), critical=True)
    # An attempted use that never ran (no model, bad input, queue full): still provable.
    JOB_REFUSED = "job.refused", ActionInfo(_P, ("denied",), critical=True)
    FACE_DETECTED = "face.detected", ActionInfo(_P, ("info",), critical=False)
    FACE_SWAPPED = "face.swapped", ActionInfo(_P, ("change",), critical=False)
    FACE_ANONYMIZED = "face.anonymized", ActionInfo(_P, ("change",), critical=False)
    FRAME_FAILED = "frame.failed", ActionInfo(_P, ("error",), critical=False)
    MODEL_LOADED = "model.loaded", ActionInfo(_L, ("start",), critical=False)
    MODEL_REJECTED = "model.rejected", ActionInfo(_L, ("denied",), critical=True)
    INPUT_ERASED = "input.erased", ActionInfo(_F, ("deletion",), critical=True)
    RESULT_DELETED = "result.deleted", ActionInfo(_F, ("deletion",), critical=True)
    SESSION_STARTED = "session.started", ActionInfo(_S, ("start",), critical=False)
    SESSION_ENDED = "session.ended", ActionInfo(_S, ("end",), critical=False)
    AUTH_FAILED = "auth.failed", ActionInfo(_A, ("denied",), critical=True)
    ACCESS_DENIED = "access.denied", ActionInfo(_I, ("denied",), critical=True)
    AUDIT_CHECKPOINT = "audit.checkpoint", ActionInfo(_D, ("info",), critical=True, kind="state")
    AUDIT_RATE_LIMITED = (
        "audit.rate_limited",
        ActionInfo(_D, ("info",), critical=True, kind="metric"),
    )
    # The log of the logs: what people did with the audit trail itself.
    AUDIT_QUERIED = "audit.queried", ActionInfo(_D, ("access",), critical=True)
    AUDIT_VERIFIED = "audit.verified", ActionInfo(_D, ("access",), critical=True)
    AUDIT_EXPORTED = "audit.exported", ActionInfo(_D, ("access",), critical=True)
    STREAM_REGISTERED = "stream.registered", ActionInfo(_C, ("creation",), critical=True)
    # Administration of retention, holds, erasure and alerts (also the log of the logs).
    RETENTION_POLICY_CHANGED = (
        "retention.policy_changed",
        ActionInfo(_C, ("change",), critical=True),
    )
    RETENTION_PURGED = "retention.purged", ActionInfo(_D, ("change",), critical=True)
    RETENTION_FAILED = "retention.failed", ActionInfo(_D, ("change", "error"), critical=True)
    ARCHIVE_RESTORED = "archive.restored", ActionInfo(_D, ("change",), critical=True)
    HOLD_PLACED = "hold.placed", ActionInfo(_C, ("creation",), critical=True)
    HOLD_RELEASED = "hold.released", ActionInfo(_C, ("deletion",), critical=True)
    SUBJECT_ERASED = "subject.erased", ActionInfo(_I, ("user", "deletion"), critical=True)
    ALERT_RULE_CHANGED = "alert_rule.changed", ActionInfo(_C, ("change",), critical=True)
    ALERT_ACKNOWLEDGED = "alert.acknowledged", ActionInfo(_C, ("change",), critical=True)
    ALERT_RESOLVED = "alert.resolved", ActionInfo(_C, ("change",), critical=True)
    WEBHOOK_CHANGED = "webhook.changed", ActionInfo(_C, ("change",), critical=True)
    PRODUCER_CHANGED = "producer.changed", ActionInfo(_C, ("change",), critical=True)

    @property
    def critical(self) -> bool:
        return self.info.critical

    @property
    def category(self) -> tuple[str, ...]:
        return self.info.category

    @property
    def kind(self) -> str:
        return self.info.kind


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


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
