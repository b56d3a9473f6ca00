"""Alert tests on real backends: a control database and an event store per test.

"sqlite": SQLite control database and SQL event store; "postgres": PostgreSQL for both;
"elasticsearch": PostgreSQL control database and the Elasticsearch event store.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.repository import AlertRepository
from audit.alerts.scheduler import AlertScheduler, TickReport
from audit.db.session import make_engine, session_factory, upgrade
from audit.models import Alert, AlertRule
from audit.settings import AuditSettings
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore, StoredEvent
from audit.store.sql import SqlEventStore
from audit.streams.repository import StreamRepository
from tests.store.conftest import make_event

# Aligned to every window the tests use (15 s ... 15 min): windows end at T0 + k * step.
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
DELAY = timedelta(seconds=30)
IP_A, IP_B, IP_C = "1" * 64, "2" * 64, "3" * 64


def after(end: datetime) -> datetime:
    """The first `now` at which the window ending at `end` is evaluated."""
    return end + DELAY


@dataclass
class World:
    settings: AuditSettings
    sessions: sessionmaker[Session]
    store: EventStore
    tenant: str
    schedulers: list[AlertScheduler] = field(default_factory=list)
    _sequence: int = 0

    def scheduler(self, **options: Any) -> AlertScheduler:
        """A scheduler of its own ("a replica" or "the service after a restart"): its own
        engine on the same database and its own lease holder id."""
        sessions = session_factory(make_engine(self.settings.database_url))
        scheduler = AlertScheduler(self.settings, sessions, self.store, **options)
        self.schedulers.append(scheduler)
        return scheduler

    async def tick(self, now: datetime) -> TickReport:
        """A tick of this world's service (one scheduler, created on first use)."""
        if not self.schedulers:
            self.scheduler()
        return await self.schedulers[0].tick(now)

    async def write(
        self,
        at: datetime,
        *,
        n: int = 1,
        stream: str = "cam-1",
        tenant: str | None = None,
        **fields: Any,
    ) -> None:
        """`n` records at `at` (a millisecond apart) with the given record fields, e.g.
        write(T0, n=3, **{"event.action": "job.failed"})."""
        events: list[StoredEvent] = []
        for i in range(n):
            self._sequence += 1
            events.append(
                make_event(
                    tenant or self.tenant,
                    self._sequence,
                    stream=stream,
                    timestamp=at + timedelta(milliseconds=i),
                    extra=fields,
                )
            )
        await self.store.write(events)

    def alerts(self, rule: str | None = None) -> list[Alert]:
        with self.sessions() as session:
            return AlertRepository(session).list(tenant_id=self.tenant, rule=rule)

    def add_tenant(self, tenant: str) -> None:
        with self.sessions.begin() as session:
            StreamRepository(session).ensure_tenant(tenant)

    def add_rule(self, *, since: datetime = T0, **columns: Any) -> AlertRule:
        defaults: dict[str, Any] = {
            "tenant_id": self.tenant,
            "name": "custom",
            "severity": "high",
            "filters": {},
            "enabled": True,
        }
        row = AlertRule(**{**defaults, **columns}, created_at=since, updated_at=since)
        with self.sessions.begin() as session:
            return AlertRepository(session).add_rule(row)


WorldFactory = Callable[..., World]


@pytest.fixture(params=["sqlite", "postgres", "elasticsearch"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def world_factory(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[WorldFactory]:
    """world(**settings) -> a World on this test's backend, with a tenant of its own."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/alerts.db"
        upgrade(url)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    made: list[World] = []

    def factory(**overrides: Any) -> World:
        settings = AuditSettings(
            database_url=url,
            forward_enabled=False,
            alert_delay_s=DELAY.total_seconds(),
            alert_evaluation_enabled=False,
            **overrides,
        )
        store: EventStore
        if backend == "elasticsearch":
            prefix = request.getfixturevalue("fresh_es_prefix")
            store = ElasticEventStore(request.getfixturevalue("elasticsearch_url"), prefix=prefix)
        else:
            store = SqlEventStore(url)
        world = World(
            settings, session_factory(make_engine(url)), store, f"t{uuid.uuid4().hex[:10]}"
        )
        world.add_tenant(world.tenant)
        made.append(world)
        return world

    yield factory
    for world in made:
        await world.store.close()


@pytest.fixture
def world(world_factory: WorldFactory) -> World:
    return world_factory()
