"""The producer pipeline: pseudonymise → rate-limit → chain → sign.

Rate limiting happens before sequencing, so a dropped record never leaves a hole in the
chain; the drop itself becomes an `audit.rate_limited` record, so the loss is visible and
covered by the same signatures as everything else.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from audit.integrity import record as f
from audit.integrity.chain import ChainWriter, SealedRecord
from audit.integrity.events import EventAction, Outcome
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.integrity.ratelimit import DropSummary, SessionRateLimiter
from audit.integrity.scrub import Scrubber


@dataclass(slots=True)
class AuditEvent:
    """What a producer knows about one event, raw PII included (it never leaves the sealer)."""

    action: EventAction
    outcome: Outcome = Outcome.SUCCESS
    timestamp: datetime | None = None  # None: now
    actor: str | None = None
    client_ip: str | None = None
    session: str | None = None
    target: str | None = None
    job_id: str | None = None
    file_sha256: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


class Sealer:
    """Turns AuditEvents into sealed records for one stream. Thread-safe."""

    def __init__(
        self,
        writer: ChainWriter,
        pseudonymizer: Pseudonymizer,
        limiter: SessionRateLimiter | None = None,
    ) -> None:
        if pseudonymizer.tenant != writer.tenant:
            raise ValueError("pseudonymizer and chain writer belong to different tenants")
        self.writer = writer
        self._pseudonymizer = pseudonymizer
        self._limiter = limiter
        self._lock = threading.Lock()

    def seal(self, event: AuditEvent) -> list[SealedRecord]:
        """Records to emit for `event`, in order: due drop summaries, the record itself
        (unless the rate limit dropped it), and a checkpoint when one is due."""
        ts = event.timestamp or datetime.now(UTC)
        body = self._body(event)  # outside the lock: pure, and the costly part
        with self._lock:
            out: list[SealedRecord] = []
            admitted = True
            if self._limiter is not None and event.session is not None:
                admission = self._limiter.admit(
                    event.session,
                    event.action.value,
                    critical=event.action.critical,
                    now=ts.timestamp(),
                )
                admitted = admission.admitted
                for summary in admission.due:
                    out += self._summary(summary)
            if admitted:
                out += self.writer.append(event.action, event.outcome, body, ts)
            return out

    def close(self, ts: datetime | None = None) -> list[SealedRecord]:
        """Emit every pending drop summary and the closing checkpoint: the stream ends."""
        return self.checkpoint(ts, closing=True)

    def checkpoint(
        self, ts: datetime | None = None, *, closing: bool = False
    ) -> list[SealedRecord]:
        """Emit every pending drop summary and a signed checkpoint, so that everything
        sealed so far is covered by a signature (a sidecar stopping, to continue later)."""
        with self._lock:
            out: list[SealedRecord] = []
            if self._limiter is not None:
                for summary in self._limiter.flush(None):
                    out += self._summary(summary)
            out.append(self.writer.checkpoint(ts, closing=closing))
            return out

    def _summary(self, summary: DropSummary) -> list[SealedRecord]:
        assert self._limiter is not None
        p = self._pseudonymizer
        body: dict[str, Any] = {
            f.SESSION_HASH: p.pseudonym(PiiKind.SESSION, summary.session),
            f.KEY_ID: p.key_id,
            f.METADATA: {
                "dropped": summary.dropped,
                "actions": dict(summary.actions),
                "window_start": f.format_timestamp(_utc(summary.window_start)),
                "window_end": f.format_timestamp(_utc(summary.window_end)),
                "rate_per_s": self._limiter.rate,
                "burst": self._limiter.burst,
            },
        }
        ts = _utc(summary.window_end)
        return self.writer.append(EventAction.AUDIT_RATE_LIMITED, Outcome.FAILURE, body, ts)

    def _body(self, event: AuditEvent) -> dict[str, Any]:
        pseudonym = self._pseudonymizer.pseudonym
        body: dict[str, Any] = {}
        known: list[tuple[PiiKind, str]] = []
        for name, kind, raw in (
            (f.USER_HASH, PiiKind.USER, event.actor),
            (f.CLIENT_IP_HASH, PiiKind.CLIENT_IP, event.client_ip),
            (f.SESSION_HASH, PiiKind.SESSION, event.session),
            (f.TARGET_HASH, PiiKind.PATH, event.target),
        ):
            if raw is not None:
                body[name] = pseudonym(kind, raw)
                known.append((kind, raw))
        # Always present: scrubbed free text may carry pseudonyms even without these fields.
        body[f.KEY_ID] = self._pseudonymizer.key_id
        if event.job_id is not None:
            body[f.TRACE_ID] = event.job_id
        if event.file_sha256 is not None:
            body[f.FILE_SHA256] = event.file_sha256
        if event.error_type is not None or event.error_message is not None or event.metadata:
            scrub = Scrubber(pseudonym, known)
            if event.error_type is not None:
                body[f.ERROR_TYPE] = scrub.text(event.error_type)
            if event.error_message is not None:
                body[f.ERROR_MESSAGE] = scrub.text(event.error_message)
            if event.metadata:
                body[f.METADATA] = scrub.metadata(event.metadata)
        return body


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
