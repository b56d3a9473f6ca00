"""Plain events as producers write them (the brief's example record) → AuditEvent.

{"timestamp": "2026-11-21T10:00:00.123Z", "user_id": "alice", "action": "face_swap",
 "target": "/data/in.png", "status": "success", "metadata": {...}, "client_ip": "203.0.113.7",
 "session_id": "s-1", "job_id": "j-1", "error": "..." | {"type": ..., "message": ...}}

Unknown fields are an error rather than ignored: a field nobody maps is data silently lost.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from audit.integrity.errors import InvalidInputError
from audit.integrity.events import Outcome, parse_action
from audit.integrity.seal import AuditEvent

_HEX64 = re.compile(r"[0-9a-f]{64}")
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonEmpty = Annotated[str, Field(min_length=1, max_length=4096)]


class PlainError(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: NonEmpty | None = None
    message: Annotated[str, Field(max_length=65536)] | None = None


class PlainEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: AwareDatetime
    user_id: NonEmpty
    action: NonEmpty
    status: Literal["success", "failure", "unknown"]
    target: NonEmpty | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    client_ip: NonEmpty | None = None
    session_id: NonEmpty | None = None
    job_id: NonEmpty | None = None
    error: Annotated[str, Field(max_length=65536)] | PlainError | None = None
    file_sha256: Hex64 | None = None

    def to_event(self) -> AuditEvent:
        error_type = error_message = None
        if isinstance(self.error, PlainError):
            error_type, error_message = self.error.type, self.error.message
        elif self.error is not None:
            error_message = self.error
        metadata = dict(self.metadata)
        file_sha256 = self.file_sha256
        # Jobs record their input hash in metadata; ECS has a field for it.
        candidate = metadata.get("input_sha256")
        if file_sha256 is None and isinstance(candidate, str) and _HEX64.fullmatch(candidate):
            file_sha256 = candidate
        return AuditEvent(
            action=parse_action(self.action),
            outcome=Outcome(self.status),
            timestamp=self.timestamp,
            actor=self.user_id,
            client_ip=self.client_ip,
            session=self.session_id,
            target=self.target,
            job_id=self.job_id,
            file_sha256=file_sha256,
            error_type=error_type,
            error_message=error_message,
            metadata=metadata,
        )


def parse_plain_event(line: bytes) -> AuditEvent:
    """Parse one JSON line; errors name the field but never echo its (possibly PII) value."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise InvalidInputError("an event must be a JSON object")
    try:
        return PlainEvent.model_validate(doc).to_event()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(problems) from None
