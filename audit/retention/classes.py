"""Action classes: the granularity of retention policies.

Every `EventAction` belongs to one class by its subject (the part before the dot), so an
action added later falls into a class without touching this table. Checkpoints and
rate-limit summaries belong to none: they follow the longest class of the day they are in
(they prove the records around them, so they must not go before those).
"""

from __future__ import annotations

from enum import StrEnum

from audit.integrity.events import EventAction


class ActionClass(StrEnum):
    PROCESSING = "processing"  # jobs, faces, frames, inputs, engine sessions
    MODELS = "models"  # model loading and rejection
    SECURITY = "security"  # failed authentication, denied access
    AUDIT = "audit"  # the log of the logs and administration


_BY_SUBJECT = {
    "job": ActionClass.PROCESSING,
    "face": ActionClass.PROCESSING,
    "frame": ActionClass.PROCESSING,
    "input": ActionClass.PROCESSING,
    "session": ActionClass.PROCESSING,
    "model": ActionClass.MODELS,
    "auth": ActionClass.SECURITY,
    "access": ActionClass.SECURITY,
}
FOLLOWERS = frozenset({EventAction.AUDIT_CHECKPOINT, EventAction.AUDIT_RATE_LIMITED})


def action_class(action: EventAction) -> ActionClass | None:
    """The class of `action`; None for the chain machinery's own records (FOLLOWERS)."""
    if action in FOLLOWERS:
        return None
    return _BY_SUBJECT.get(action.value.split(".", 1)[0], ActionClass.AUDIT)


def actions_of(cls: ActionClass) -> tuple[str, ...]:
    return tuple(sorted(a.value for a in EventAction if action_class(a) is cls))
