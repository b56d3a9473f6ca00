from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from audit.alerts.kinds import PlannedAlert, RuleId
from audit.alerts.rules import BUILTIN_RULES
from audit.db.session import make_engine, session_factory, upgrade
from audit.ingest.planner import Incoming, Plan, PlannedVerdict, Planner
from audit.ingest.schemas import IngestFailure, joined
from audit.ingest.service import IngestService
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from audit.settings import AuditSettings
from audit.store.elastic import ElasticEventStore
from audit.store.protocol import EventStore, Verdict
from audit.store.sql import SqlEventStore
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService
from tests.integrity.conftest import T0, sample_event


@dataclass
class Env:
    settings: AuditSettings
    service: IngestService
    streams: StreamService
    store: EventStore
    signer: Signer

    def register(
        self, stream: str = "cam-1", tenant: str = "acme", signer: Signer | None = None
    ) -> None:
        key = (signer or self.signer).verifier.pem().decode()
        self.streams.register(StreamRegistration(stream=stream, tenant=tenant, public_key_pem=key))


def make_records(
    signer: Signer,
    n: int,
    *,
    stream: str = "cam-1",
    tenant: str = "acme",
    every: int = 5,
    close: bool = True,
) -> list[dict[str, Any]]:
    sealer = Sealer(
        ChainWriter(stream, tenant, signer, policy=CheckpointPolicy(every, None)),
        Pseudonymizer(Keyring.generate(), tenant),
    )
    out = [r.record for i in range(n) for r in sealer.seal(sample_event(i))]
    if close:
        out += [r.record for r in sealer.close(T0 + timedelta(hours=1))]
    return out


Factory = Callable[..., Env]


@pytest.fixture(params=["sqlite", "postgres+elasticsearch"])
async def env_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Service instances ("replicas") sharing one control database built by the migrations:
    SQLite with the embedded SQL store, or PostgreSQL with Elasticsearch."""
    made: list[Env] = []
    signer = Signer.generate()
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ffaudit.db"
        upgrade(url)
        es_url: str | None = None
        prefix = ""
    else:
        url = request.getfixturevalue("fresh_postgres_url")
        es_url = request.getfixturevalue("elasticsearch_url")
        prefix = request.getfixturevalue("fresh_es_prefix")

    def factory(**overrides: Any) -> Env:
        settings = AuditSettings(database_url=url, forward_enabled=False, **overrides)
        sessions = session_factory(make_engine(url))
        store: EventStore = (
            SqlEventStore(url) if es_url is None else ElasticEventStore(es_url, prefix=prefix)
        )
        env = Env(
            settings,
            IngestService(settings, sessions, store),
            StreamService(sessions),
            store,
            signer,
        )
        made.append(env)
        return env

    yield factory
    for env in made:
        await env.store.close()


def assert_typed(plan: Plan) -> None:
    """What mypy cannot see at run time: every outcome, failure kind and alert of a plan is a
    member of its enum, and what the store and the API get reads back as those members."""
    for result in plan.results:
        assert type(result.outcome) is Verdict, result
        assert all(type(kind) is IngestFailure for kind in result.failures), result
        assert result.failure == joined(result.failures)
    for event in plan.writes:
        assert type(event.verdict) is Verdict, event
        assert event.verdict != Verdict.DUPLICATE, event
        assert joined(IngestFailure.parse(event.failure)) == event.failure, event
    for verdict in plan.verdicts:
        assert type(verdict) is PlannedVerdict
        assert type(verdict.verdict) is Verdict, verdict
        assert all(type(kind) is IngestFailure for kind in verdict.failures), verdict
    for alert in plan.alerts:
        assert type(alert) is PlannedAlert, alert
        assert type(alert.rule) is RuleId, alert
        assert alert.rule in BUILTIN_RULES, alert
        # Stored as JSON: plain values only, reading back as they were.
        assert json.loads(json.dumps(alert.detail)) == alert.detail, alert


@pytest.fixture(autouse=True)
def typed_plans(monkeypatch: pytest.MonkeyPatch) -> list[Plan]:
    """Every plan any ingest test makes, checked by `assert_typed` as it is made."""
    plans: list[Plan] = []
    run = Planner.run

    def checked(self: Planner, batch: list[Incoming]) -> Plan:
        plan = run(self, batch)
        assert_typed(plan)
        plans.append(plan)
        return plan

    monkeypatch.setattr(Planner, "run", checked)
    return plans
