"""What the alert API takes and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from audit.errors import InvalidInputError
from audit.integrity.events import EventAction, Outcome
from audit.jsontypes import JsonInt
from audit.models import Alert, AlertRule
from audit.store.query import TEXT_SCHEMA, GroupField, query_words

State = Literal["open", "acknowledged", "resolved"]
SeverityName = Literal["critical", "high", "medium", "low"]
Verdict = Literal["ok", "pending", "broken", "rejected"]
_WEEK = 7 * 24 * 3600


class AlertOut(BaseModel):
    id: int
    rule: str
    severity: str
    state: str
    title: str
    stream_id: str | None
    detail: dict[str, Any]
    count: int = Field(description="sightings of this incident (repeats bump it)")
    records: int | None = Field(
        default=None,
        description="the events behind its latest sighting (requests of a burst, dropped "
        "events of a flood), where the rule counts them",
    )
    first_seen: datetime
    last_seen: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None

    @classmethod
    def of(cls, alert: Alert) -> AlertOut:
        return cls(
            id=alert.id,
            rule=alert.rule,
            severity=alert.severity,
            state=alert.state,
            title=alert.title,
            stream_id=alert.stream_id,
            detail=alert.detail,
            count=alert.count,
            records=_records(alert.detail),
            first_seen=alert.first_seen,
            last_seen=alert.last_seen,
            acknowledged_at=alert.acknowledged_at,
            resolved_at=alert.resolved_at,
        )


class AlertPageOut(BaseModel):
    alerts: list[AlertOut]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page")


class RuleFilter(BaseModel):
    """Which records count (as in GET /v1/events): values in a list are alternatives, fields
    are combined with AND; empty lists do not filter."""

    model_config = ConfigDict(extra="forbid")

    action: list[EventAction] = Field(default_factory=list, max_length=50)
    outcome: list[Outcome] = Field(default_factory=list, max_length=3)
    stream: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=100
    )
    verdict: list[Verdict] = Field(default_factory=list, max_length=4)
    q: str | None = Field(
        default=None, max_length=200, description="free text", json_schema_extra=TEXT_SCHEMA
    )

    @model_validator(mode="after")
    def _values(self) -> RuleFilter:
        if any(not 1 <= len(s) <= 128 for s in self.stream):
            raise ValueError("stream names are 1 to 128 characters")
        if self.q is not None:
            try:
                query_words(self.q)
            except InvalidInputError as exc:
                raise ValueError(exc.message) from None
        return self

    def stored(self) -> dict[str, Any]:
        return {
            "actions": [a.value for a in self.action],
            "outcomes": [o.value for o in self.outcome],
            "streams": list(self.stream),
            "verdicts": list(self.verdict),
            "text": self.q,
        }

    @classmethod
    def of(cls, stored: dict[str, Any]) -> RuleFilter:
        return cls(
            action=stored.get("actions", []),
            outcome=stored.get("outcomes", []),
            stream=stored.get("streams", []),
            verdict=stored.get("verdicts", []),
            q=stored.get("text"),
        )


class RuleIn(BaseModel):
    """A threshold rule: an alert per value of `group_by` with more than `threshold`
    matching records in a window of `window_s` seconds. Windows end every `step_s` seconds
    (default: `window_s`, windows side by side; smaller: overlapping windows)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    severity: SeverityName = "medium"
    filter: RuleFilter = Field(default_factory=RuleFilter)
    group_by: GroupField
    # Strict numbers: `false` or "5" are not counts (the schema says integer).
    window_s: JsonInt = Field(ge=5, le=_WEEK)
    step_s: JsonInt | None = Field(default=None, ge=5, le=_WEEK)
    threshold: JsonInt = Field(ge=0, le=1_000_000_000)
    enabled: StrictBool = True  # `0` is not a boolean: the schema says so, and so does this

    @model_validator(mode="after")
    def _step(self) -> RuleIn:
        if self.step_s is not None and self.step_s > self.window_s:
            raise ValueError("step_s may not exceed window_s (records between windows)")
        return self


class RuleOut(BaseModel):
    id: int
    rule: str = Field(description="the `rule` of the alerts it raises")
    name: str
    severity: str
    filter: RuleFilter
    group_by: str
    window_s: int
    step_s: int
    threshold: int
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: AlertRule, rule: str) -> RuleOut:
        return cls(
            id=row.id,
            rule=rule,
            name=row.name,
            severity=row.severity,
            filter=RuleFilter.of(row.filters),
            group_by=row.group_by,
            window_s=row.window_s,
            step_s=row.step_s,
            threshold=row.threshold,
            enabled=row.enabled,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class BuiltinRuleOut(BaseModel):
    rule: str
    severity: str
    source: str = Field(description="ingest, retention, or schedule")
    description: str


class RulesOut(BaseModel):
    builtin: list[BuiltinRuleOut]
    custom: list[RuleOut]


class TransitionIn(BaseModel):
    """Why an alert is acknowledged or resolved (kept in the log of the logs)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, min_length=1, max_length=1000)


def _records(detail: dict[str, Any]) -> int | None:
    for name in ("dropped", "count"):
        value = detail.get(name)
        if type(value) is int:
            return value
    return None
