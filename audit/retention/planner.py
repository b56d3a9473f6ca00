"""Which of a tenant's UTC days retention may purge.

The unit is a day (one Elasticsearch daily index). A day may go when every record in it is
past its class's retention and no active legal hold covers any record in it. Everything is
decided from per-day counts (`EventStore.stats(by="day")`), one query per class and per
kind of hold, so planning costs the same whatever the number of records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from audit.models import LegalHold
from audit.retention.classes import FOLLOWERS, ActionClass, actions_of
from audit.store.protocol import EventStore, day_bounds
from audit.store.query import MAX_VALUES, EventQuery


@dataclass(slots=True)
class DayPlan:
    day: date
    records: int
    classes: dict[str, int]  # action class -> records ("other": actions outside the table)
    keep_days: int  # the longest retention among the day's classes
    expires_at: datetime  # the end of the day + keep_days
    holds: list[int] = field(default_factory=list)  # active holds covering a record of it
    purgeable: bool = False


async def plan_days(
    store: EventStore,
    tenant: str,
    policies: dict[ActionClass, int],
    holds: list[LegalHold],
    now: datetime,
) -> list[DayPlan]:
    """Every day holding records of the tenant, oldest first, with its verdict."""
    totals = await store.stats(EventQuery(tenant=tenant), by="day")
    if not totals:
        return []
    per_class = {
        cls: await store.stats(EventQuery(tenant=tenant, actions=actions_of(cls)), by="day")
        for cls in ActionClass
    }
    followers = await store.stats(
        EventQuery(tenant=tenant, actions=tuple(sorted(a.value for a in FOLLOWERS))), by="day"
    )
    held = await _held_days(store, tenant, holds)
    longest = max(policies.values())
    plans: list[DayPlan] = []
    for name in sorted(totals):
        if not name:
            continue  # a record whose time the store could not index (no daily index)
        day = date.fromisoformat(name)
        classes = {cls.value: per_class[cls][name] for cls in ActionClass if name in per_class[cls]}
        other = totals[name] - sum(classes.values()) - followers.get(name, 0)
        # Checkpoints follow the day's longest class; an action outside the table (a broken
        # record's), or a day of checkpoints only, keeps the longest retention there is.
        keep = max((policies[ActionClass(c)] for c in classes), default=longest)
        if other > 0:
            classes["other"] = other
            keep = longest
        expires = day_bounds(day)[1] + timedelta(days=keep)
        covering = sorted(hold_id for hold_id, days in held.items() if days is None or name in days)
        plans.append(
            DayPlan(
                day=day,
                records=totals[name],
                classes=classes,
                keep_days=keep,
                expires_at=expires,
                holds=covering,
                purgeable=expires <= now and not covering,
            )
        )
    return plans


async def _held_days(
    store: EventStore, tenant: str, holds: list[LegalHold]
) -> dict[int, set[str] | None]:
    """hold id -> the days with a record it covers (None: every day)."""
    out: dict[int, set[str] | None] = {}
    for hold in holds:
        if hold.scope == "tenant":
            out[hold.id] = None
            continue
        days: set[str] = set()
        values = list(hold.values)
        for start in range(0, len(values), MAX_VALUES):
            chunk = tuple(values[start : start + MAX_VALUES])
            if hold.scope == "stream":
                query = EventQuery(tenant=tenant, streams=chunk)
            elif hold.scope == "job":
                query = EventQuery(tenant=tenant, job_ids=chunk)
            else:
                query = EventQuery(tenant=tenant, actor_hashes=chunk)
            days.update(await store.stats(query, by="day"))
        out[hold.id] = days
    return out
