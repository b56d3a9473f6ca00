"""A retention test bed: the service's parts wired as the app wires them, on SQLite or
PostgreSQL with the embedded SQL store, or on PostgreSQL with Elasticsearch; and records
sealed with old timestamps, spread over whole UTC days."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from sqlalchemy.orm import Session, sessionmaker

from audit.db.session import make_engine, session_factory, upgrade
from audit.ingest.service import IngestService
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from audit.query.service import QueryService, StreamVerification
from audit.retention.service import RetentionService
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings
from audit.store import make_event_store
from audit.store.protocol import EventStore
from audit.store.query import EventQuery
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
# Three old days, far past the 180-day default, and one recent day.
OLD = [TODAY - timedelta(days=400 - n) for n in range(3)]
RECENT = TODAY - timedelta(days=1)
HELD_JOB = "job-held"


def day_of(when: datetime) -> date:
    return when.date()


@dataclass
class RetentionEnv:
    backend: str
    tenant: str
    settings: AuditSettings
    sessions: sessionmaker[Session]
    store: EventStore
    ingest: IngestService
    servicelog: ServiceLog
    retention: RetentionService
    queries: QueryService
    signer: Signer
    keyring: Keyring

    def register(self, stream: str) -> None:
        StreamService(self.sessions).register(
            StreamRegistration(
                stream=stream,
                tenant=self.tenant,
                public_key_pem=self.signer.verifier.pem().decode(),
            )
        )

    def sealer(self, stream: str) -> Sealer:
        return Sealer(
            ChainWriter(stream, self.tenant, self.signer, policy=CheckpointPolicy(5, None)),
            Pseudonymizer(self.keyring, self.tenant),
        )

    async def seed(self, stream: str, days: list[datetime], per_day: int = 6) -> None:
        """`per_day` events on each day (the second old day's job is HELD_JOB), sealed with
        checkpoints every 5 records and closed on the last day, then ingested."""
        self.register(stream)
        sealer = self.sealer(stream)
        records: list[dict[str, Any]] = []
        for d, start in enumerate(days):
            for i in range(per_day):
                action = (EventAction.JOB_STARTED, EventAction.FACE_SWAPPED)[i % 2]
                event = AuditEvent(
                    action=action,
                    outcome=Outcome.SUCCESS,
                    timestamp=start + timedelta(hours=10, minutes=i),
                    actor=("alice", "bob")[i % 2],
                    session=f"s-{d}",
                    job_id=HELD_JOB if start == OLD[1] else f"job-{d}",
                    metadata={"frame": i},
                )
                records += [r.record for r in sealer.seal(event)]
        records += [r.record for r in sealer.close(days[-1] + timedelta(hours=11))]
        report = await self.ingest.ingest(records, source="http")
        assert report.counts() == {"ok": len(records)}, report.counts()

    async def per_day(self, stream: str | None = None) -> dict[str, int]:
        streams = (stream,) if stream else ()
        return await self.store.stats(EventQuery(tenant=self.tenant, streams=streams), by="day")

    async def verify(self, stream: str) -> StreamVerification:
        return await self.queries.verify_stream(self.tenant, stream)

    async def actions(self) -> list[str]:
        """The tenant's log of the logs, oldest first."""
        query = EventQuery(
            tenant=self.tenant, streams=(self.servicelog.stream_for(self.tenant),), order="asc"
        )
        page = await self.store.search(query, limit=1000)
        return [e.record["event.action"] for e in page.events]


EnvFactory = Callable[..., RetentionEnv]


@pytest.fixture(params=["sqlite", "postgres", "elasticsearch"])
async def make_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EnvFactory]:
    """make_env(**settings) -> a RetentionEnv; SQLite or PostgreSQL with the SQL store in the
    same database, or PostgreSQL + Elasticsearch with a snapshot repository of this test
    only."""
    made: list[RetentionEnv] = []
    signer, keyring = Signer.generate(), Keyring.generate()
    tenant = f"t{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {}
    es_url: str | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ffaudit.db"
        upgrade(url)
    elif request.param == "postgres":
        url = request.getfixturevalue("fresh_postgres_url")
    else:
        url = request.getfixturevalue("fresh_postgres_url")
        es_url = request.getfixturevalue("elasticsearch_url")
        prefix = request.getfixturevalue("fresh_es_prefix")
        options = {
            "elasticsearch_url": es_url,
            "elasticsearch_index_prefix": prefix,
            "retention_snapshot_repository": f"{prefix}-repo",
            "retention_snapshot_location": prefix,
        }

    def factory(**overrides: Any) -> RetentionEnv:
        settings = AuditSettings(
            database_url=url,
            forward_enabled=False,
            service_keys_dir=tmp_path / "service-keys",
            keyrings_dir=tmp_path / "keyrings",
            **{
                "retention_archive_dir": tmp_path / "archives",
                "retention_interval_s": 0,
                **options,
                **overrides,
            },
        )
        sessions = session_factory(make_engine(url))
        store = make_event_store(settings)
        ingest = IngestService(settings, sessions, store)
        servicelog = ServiceLog(settings, sessions, ingest)
        keyrings = TenantKeyrings(settings.keyrings_dir)
        keyrings.import_keyring(tenant, keyring.dumps())
        retention = RetentionService(settings, sessions, store, servicelog, keyrings)
        queries = QueryService(store, keyrings, StreamService(sessions), purged=retention.purged)
        env = RetentionEnv(
            str(request.param),
            tenant,
            settings,
            sessions,
            store,
            ingest,
            servicelog,
            retention,
            queries,
            signer,
            keyring,
        )
        made.append(env)
        return env

    yield factory
    for env in made:
        await env.store.close()
    if es_url is not None:
        _drop_snapshots(es_url, options["retention_snapshot_repository"])


def _drop_snapshots(url: str, repository: str) -> None:
    """Delete the test's snapshots and repository, then the repository's directory."""
    with Elasticsearch(url) as client:
        found = client.options(ignore_status=404).snapshot.get(repository=repository, snapshot="*")
        for snap in found.body.get("snapshots", []) if isinstance(found.body, dict) else []:
            client.snapshot.delete(repository=repository, snapshot=snap["snapshot"])
        described = client.options(ignore_status=404).snapshot.get_repository(name=repository)
        location = described.body.get(repository, {}).get("settings", {}).get("location")
        nodes = client.nodes.info(metric="settings").body["nodes"]
        client.options(ignore_status=404).snapshot.delete_repository(name=repository)
    roots = {r for n in nodes.values() for r in n["settings"].get("path", {}).get("repo", [])}
    if isinstance(location, str) and "/" not in location:
        for root in roots:  # a local node: its path.repo is on this machine
            shutil.rmtree(Path(root) / location, ignore_errors=True)
