"""The alert vocabulary shared by the modules that ask for alerts and the one that raises them.

Kept apart from the catalogue (audit.alerts.rules) and the repository: the ingest planner,
which is pure, builds `PlannedAlert`s without importing the database or the event store.
Values are stored in the control database (`alerts.rule`, `alerts.severity`) and returned by
the API and webhooks: they never change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

# What a JSON column holds; an alert's detail is stored as JSON.
JsonValue: TypeAlias = (
    str | int | float | bool | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None
)


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class RuleId(StrEnum):
    """Every built-in rule (audit.alerts.rules.BUILTIN_RULES has one entry per member).
    Custom rules are named `custom:<id>` and are not members."""

    INTEGRITY_FAILURE = "integrity_failure"
    FORK = "fork"
    STORE_TAMPERED = "store_tampered"
    CHAIN_ATTACK = "chain_attack"
    SEQUENCE_GAP = "sequence_gap"
    UNKNOWN_STREAM = "unknown_stream"
    # No longer raised (stream names are per tenant); older alerts still carry it.
    WRONG_TENANT = "wrong_tenant"
    MALFORMED_RECORD = "malformed_record"
    UNAUTHORIZED_PRODUCER = "unauthorized_producer"
    RETENTION_FAILED = "retention_failed"
    RATE_LIMITED = "rate_limited"
    CLIENT_IP_BURST = "client_ip_burst"
    FAILED_JOB_RATIO = "failed_job_ratio"
    ADMIN_EXPORT = "admin_export"


@dataclass(frozen=True, slots=True)
class PlannedAlert:
    """An event-driven alert decided now and raised in the transaction that commits what it
    is about (audit.alerts.service.raise_planned_alert).

    No severity and no dedup key: the catalogue gives a built-in rule its severity, and an
    incident is one per rule + tenant + `group` (audit.alerts.rules.dedup_key), so a
    producer cannot file an alert under a severity or key of its own making."""

    rule: RuleId
    title: str
    group: str  # what one incident covers within its rule and tenant, e.g. "cam-1:modified"
    detail: Mapping[str, JsonValue]
