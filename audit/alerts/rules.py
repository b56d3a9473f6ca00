"""The rule catalogue: built-in rules (event-driven and scheduled) and custom threshold rules.

Event-driven rules fire where the evidence appears (ingest: integrity failures, forks,
persistent gaps, quarantined records; the retention job: its failures). Scheduled rules
are evaluated by audit.alerts.scheduler over windows of event time: a window of `window`
seconds ends at every multiple of `step` seconds since the epoch, and each closed window is
evaluated once. `step < window` gives overlapping (hopping) windows, so a burst that
straddles one window boundary still falls whole into another window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from audit.alerts.kinds import RuleId, Severity
from audit.integrity.digest import sha256_hex
from audit.integrity.events import EventAction
from audit.models import AlertRule
from audit.settings import AuditSettings
from audit.store.protocol import EventStore, StoredEvent
from audit.store.query import EventQuery, GroupField

CUSTOM_PREFIX = "custom:"
_DEDUP_MAX = 256  # alerts.dedup_key
_PAGE = 500


class RuleSource(StrEnum):
    """Where a built-in rule fires (GET /v1/alert-rules shows it)."""

    INGEST = "ingest"
    RETENTION = "retention"
    SCHEDULE = "schedule"
    REVERIFY = "reverify"


@dataclass(frozen=True, slots=True)
class BuiltinRule:
    id: RuleId
    severity: Severity
    source: RuleSource
    description: str


BUILTIN_RULES: dict[RuleId, BuiltinRule] = {
    rule.id: rule
    for rule in (
        BuiltinRule(
            RuleId.INTEGRITY_FAILURE,
            Severity.CRITICAL,
            RuleSource.INGEST,
            "a record or checkpoint fails verification (modified, broken link, bad signature)",
        ),
        BuiltinRule(
            RuleId.FORK, Severity.CRITICAL, RuleSource.INGEST, "two records claim one sequence"
        ),
        BuiltinRule(
            RuleId.STORE_TAMPERED,
            Severity.CRITICAL,
            RuleSource.REVERIFY,
            "re-verification found the event store changed since ingest (edited, deleted, "
            "re-hashed records)",
        ),
        BuiltinRule(
            RuleId.CHAIN_ATTACK,
            Severity.CRITICAL,
            RuleSource.INGEST,
            "a signed checkpoint proves records of a stream forged (kept aside as evidence)",
        ),
        BuiltinRule(
            RuleId.SEQUENCE_GAP,
            Severity.HIGH,
            RuleSource.INGEST,
            "records of a stream never arrived",
        ),
        BuiltinRule(
            RuleId.UNKNOWN_STREAM,
            Severity.HIGH,
            RuleSource.INGEST,
            "records of an unregistered stream",
        ),
        BuiltinRule(
            RuleId.WRONG_TENANT,
            Severity.HIGH,
            RuleSource.INGEST,
            "records claim another tenant than their stream's (no longer raised: stream names "
            "are per tenant; kept so older alerts keep their rule)",
        ),
        BuiltinRule(
            RuleId.MALFORMED_RECORD,
            Severity.MEDIUM,
            RuleSource.INGEST,
            "input that is not a record",
        ),
        BuiltinRule(
            RuleId.UNAUTHORIZED_PRODUCER,
            Severity.HIGH,
            RuleSource.INGEST,
            "a producer tried to write a stream it is not bound to (refused, nothing stored)",
        ),
        BuiltinRule(
            RuleId.RETENTION_FAILED, Severity.HIGH, RuleSource.RETENTION, "a retention run failed"
        ),
        BuiltinRule(
            RuleId.RATE_LIMITED,
            Severity.MEDIUM,
            RuleSource.SCHEDULE,
            "a producer dropped records (rate limit)",
        ),
        BuiltinRule(
            RuleId.CLIENT_IP_BURST,
            Severity.HIGH,
            RuleSource.SCHEDULE,
            "one client IP pseudonym made too many requests in a window",
        ),
        BuiltinRule(
            RuleId.FAILED_JOB_RATIO,
            Severity.HIGH,
            RuleSource.SCHEDULE,
            "the share of failed jobs of a stream is over the threshold",
        ),
        BuiltinRule(
            RuleId.ADMIN_EXPORT,
            Severity.MEDIUM,
            RuleSource.SCHEDULE,
            "an administrator exported records",
        ),
    )
}


def dedup_key(rule: str, tenant: str | None, group: str) -> str:
    """rule + tenant + group: one incident per key (a long group is replaced by its digest)."""
    key = f"{rule}:{tenant or '-'}:{group}"
    if len(key) <= _DEDUP_MAX:
        return key
    return f"{rule}:{tenant or '-'}:sha256:{sha256_hex(group.encode())}"


@dataclass(frozen=True, slots=True)
class Finding:
    """What one window of one rule found for one group: an alert, or a repeat of one."""

    group: str
    count: int  # the records behind it: the largest groups are alerted first
    title: str
    detail: dict[str, Any]
    stream_id: str | None = None


class WindowRule(Protocol):
    """A scheduled rule: evaluated once per closed window, per tenant."""

    @property
    def rule(self) -> str: ...  # the alert's rule id, and the watermark's name

    @property
    def severity(self) -> str: ...

    @property
    def window(self) -> timedelta: ...

    @property
    def step(self) -> timedelta: ...

    @property
    def since(self) -> datetime | None: ...  # no window ends at or before this

    async def evaluate(
        self, store: EventStore, tenant: str, start: datetime, end: datetime
    ) -> list[Finding]: ...


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """More than `threshold` records matching `filters` per value of `group_by`."""

    rule: str
    severity: str
    name: str
    group_by: GroupField
    threshold: int
    window: timedelta
    step: timedelta
    filters: dict[str, Any] = field(default_factory=dict)
    since: datetime | None = None

    def query(self, tenant: str, start: datetime, end: datetime) -> EventQuery:
        return EventQuery(
            tenant=tenant,
            actions=tuple(self.filters.get("actions", ())),
            outcomes=tuple(self.filters.get("outcomes", ())),
            streams=tuple(self.filters.get("streams", ())),
            verdicts=tuple(self.filters.get("verdicts", ())),
            text=self.filters.get("text"),
            since=start,
            until=end,
        )

    async def evaluate(
        self, store: EventStore, tenant: str, start: datetime, end: datetime
    ) -> list[Finding]:
        query = self.query(tenant, start, end)
        counts = await store.count_by(query, field=self.group_by, more_than=self.threshold)
        seconds = int(self.window.total_seconds())
        findings = []
        for value, n in counts.items():
            # From the alert to its records: the events query that lists them, and a few.
            shown = _records_query(query, self.group_by, value)
            sample = await store.search(_narrowed(query, self.group_by, value), limit=_SAMPLE)
            findings.append(
                Finding(
                    group=value,
                    count=n,
                    title=f"{self.name}: {n} records with {self.group_by} {_short(value)} "
                    f"in {seconds} s (threshold {self.threshold})",
                    detail=_window_detail(
                        start,
                        end,
                        group_by=self.group_by,
                        value=value,
                        count=n,
                        records_query=shown,
                        sample_records=[e.doc_id for e in sample.events],
                    ),
                    stream_id=value if self.group_by == "stream" else None,
                )
            )
        return findings


@dataclass(frozen=True, slots=True)
class FailedJobRatioRule:
    """job.failed / (job.completed + job.failed) of a stream over `ratio`, given enough jobs."""

    ratio: float
    min_jobs: int
    window: timedelta
    step: timedelta
    rule: str = RuleId.FAILED_JOB_RATIO
    severity: str = Severity.HIGH.value
    since: datetime | None = None

    async def evaluate(
        self, store: EventStore, tenant: str, start: datetime, end: datetime
    ) -> list[Finding]:
        ended = (EventAction.JOB_COMPLETED.value, EventAction.JOB_FAILED.value)
        finished = await store.count_by(
            EventQuery(tenant=tenant, actions=ended, since=start, until=end),
            field="stream",
            more_than=self.min_jobs - 1,
        )
        if not finished:
            return []
        failed = await store.count_by(
            EventQuery(tenant=tenant, actions=ended[1:], since=start, until=end),
            field="stream",
        )
        findings = []
        for stream, total in finished.items():
            share = failed.get(stream, 0) / total
            if share > self.ratio:
                findings.append(
                    Finding(
                        group=stream,
                        count=failed[stream],
                        title=f"{failed[stream]} of {total} jobs failed on stream {stream} "
                        f"({share:.0%}, threshold {self.ratio:.0%})",
                        detail=_window_detail(
                            start, end, failed=failed[stream], finished=total, ratio=share
                        ),
                        stream_id=stream,
                    )
                )
        return findings


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    """Producers that dropped records for their rate limit, per stream: the alert counts the
    dropped events (each summary record carries its count), not the summaries, and names the
    sessions that were limited."""

    window: timedelta
    step: timedelta
    rule: str = RuleId.RATE_LIMITED
    severity: str = Severity.MEDIUM.value
    since: datetime | None = None

    async def evaluate(
        self, store: EventStore, tenant: str, start: datetime, end: datetime
    ) -> list[Finding]:
        query = EventQuery(
            tenant=tenant,
            actions=(EventAction.AUDIT_RATE_LIMITED.value,),
            since=start,
            until=end,
            order="asc",
        )
        dropped: dict[str, int] = {}
        sessions: dict[str, dict[str, int]] = {}
        samples: dict[str, list[str]] = {}
        async for event in _every(store, query):
            meta = event.record.get("ffaudit.metadata")
            n = meta.get("dropped") if isinstance(meta, dict) else None
            n = n if type(n) is int and n > 0 else 1  # a summary says at least one
            dropped[event.stream] = dropped.get(event.stream, 0) + n
            session = str(event.record.get("ffaudit.session.hash", "-"))
            per = sessions.setdefault(event.stream, {})
            per[session] = per.get(session, 0) + n
            if len(samples.setdefault(event.stream, [])) < _SAMPLE:
                samples[event.stream].append(event.doc_id)
        findings = []
        for stream, n in dropped.items():
            worst = sorted(sessions[stream].items(), key=lambda kv: (-kv[1], kv[0]))
            findings.append(
                Finding(
                    group=stream,
                    count=n,
                    title=f"{n} event(s) dropped by the rate limit in stream {stream} "
                    f"({len(worst)} session(s))",
                    detail=_window_detail(
                        start,
                        end,
                        dropped=n,
                        sessions=[{"session_hash": s, "dropped": d} for s, d in worst[:20]],
                        records_query=_records_query(query, "stream", stream),
                        sample_records=samples[stream],
                    ),
                    stream_id=stream,
                )
            )
        return findings


@dataclass(frozen=True, slots=True)
class AdminExportRule:
    """An audit.exported record of the service's own stream whose caller held the admin role
    (the export route records the caller's roles)."""

    service_stream: str
    window: timedelta
    step: timedelta
    rule: str = RuleId.ADMIN_EXPORT
    severity: str = Severity.MEDIUM.value
    since: datetime | None = None

    async def evaluate(
        self, store: EventStore, tenant: str, start: datetime, end: datetime
    ) -> list[Finding]:
        # Only the service writes its own streams (they are signed with its key and
        # verified at ingest); a producer's look-alike record elsewhere does not count.
        own = f"{self.service_stream}.{tenant}."
        query = EventQuery(
            tenant=tenant,
            actions=(EventAction.AUDIT_EXPORTED.value,),
            since=start,
            until=end,
            order="asc",
        )
        by_actor: dict[str, list[str]] = {}
        async for event in _every(store, query):
            meta = event.record.get("ffaudit.metadata")
            if not event.stream.startswith(own) or not isinstance(meta, dict):
                continue
            roles = meta.get("roles")
            if isinstance(roles, list) and "admin" in roles:
                actor = str(event.record.get("user.hash", "-"))
                by_actor.setdefault(actor, []).append(str(meta.get("export_id", "")))
        return [
            Finding(
                group=actor,
                count=len(exports),
                title=f"an administrator ({_short(actor)}) exported audit records "
                f"({len(exports)} export(s))",
                detail=_window_detail(start, end, actor=actor, exports=exports[:20]),
            )
            for actor, exports in by_actor.items()
        ]


def builtin_window_rules(settings: AuditSettings) -> list[WindowRule]:
    """The scheduled built-in rules, with their thresholds from the settings."""
    s = settings
    return [
        ThresholdRule(
            rule=RuleId.CLIENT_IP_BURST,
            severity=Severity.HIGH.value,
            name="client IP burst",
            group_by="ffaudit.client.ip_hash",
            threshold=s.alert_ip_burst_threshold,
            window=timedelta(seconds=s.alert_ip_burst_window_s),
            step=timedelta(seconds=min(s.alert_ip_burst_step_s, s.alert_ip_burst_window_s)),
            filters={"actions": list(s.alert_ip_request_actions)},
        ),
        RateLimitRule(
            window=timedelta(seconds=s.alert_rate_limit_window_s),
            step=timedelta(seconds=s.alert_rate_limit_window_s),
        ),
        FailedJobRatioRule(
            ratio=s.alert_failed_job_ratio,
            min_jobs=s.alert_failed_job_min_jobs,
            window=timedelta(seconds=s.alert_failed_job_window_s),
            step=timedelta(seconds=s.alert_failed_job_window_s),
        ),
        AdminExportRule(
            service_stream=s.service_stream,
            window=timedelta(seconds=s.alert_admin_export_window_s),
            step=timedelta(seconds=s.alert_admin_export_window_s),
        ),
    ]


def custom_rule(row: AlertRule) -> ThresholdRule:
    return ThresholdRule(
        rule=f"{CUSTOM_PREFIX}{row.id}",
        severity=row.severity,
        name=row.name,
        group_by=row.group_by,  # type: ignore[arg-type]  # validated when stored
        threshold=row.threshold,
        window=timedelta(seconds=row.window_s),
        step=timedelta(seconds=row.step_s),
        filters=dict(row.filters),
        # A new or changed rule looks at windows ending after the change, not at history.
        since=row.updated_at,
    )


def _short(value: str) -> str:
    return value if len(value) <= 24 else value[:16] + "…"


_SAMPLE = 5  # record ids an alert names
# GroupField -> (the EventQuery field, the GET /v1/events parameter) that select one group.
_GROUP_FILTERS: dict[str, tuple[str, str]] = {
    "user.hash": ("actor_hashes", "actor_hash"),
    "ffaudit.client.ip_hash": ("client_ip_hashes", "client_ip_hash"),
    "ffaudit.session.hash": ("session_hashes", "session_hash"),
    "event.action": ("actions", "action"),
    "event.outcome": ("outcomes", "outcome"),
    "trace.id": ("job_ids", "job"),
    "stream": ("streams", "stream"),
}


async def _every(store: EventStore, query: EventQuery) -> AsyncIterator[StoredEvent]:
    """Every event `query` selects, page after page."""
    cursor = None
    while True:
        page = await store.search(query, limit=_PAGE, cursor=cursor)
        for event in page.events:
            yield event
        cursor = page.next_cursor
        if cursor is None:
            return


def _narrowed(query: EventQuery, group_by: str, value: str) -> EventQuery:
    changes: dict[str, Any] = {_GROUP_FILTERS[group_by][0]: (value,)}
    return replace(query, **changes)


def _records_query(query: EventQuery, group_by: str, value: str) -> dict[str, Any]:
    """GET /v1/events parameters that list the records behind a finding."""
    params: dict[str, Any] = {
        "action": list(query.actions),
        "outcome": list(query.outcomes),
        "stream": list(query.streams),
        "verdict": list(query.verdicts),
        "q": query.text,
        "since": query.since.isoformat() if query.since else None,
        "until": query.until.isoformat() if query.until else None,
    }
    name = _GROUP_FILTERS[group_by][1]
    params[name] = [value] if isinstance(params.get(name), list) else value
    return {"path": "/v1/events", "params": {k: v for k, v in params.items() if v}}


def _window_detail(start: datetime, end: datetime, **extra: Any) -> dict[str, Any]:
    return {"window_start": start.isoformat(), "window_end": end.isoformat(), **extra}
