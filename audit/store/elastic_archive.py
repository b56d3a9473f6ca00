"""Snapshot archives: what Elasticsearch's purged days become (audit.store.archive).

A purged day's index goes into a snapshot of a registered `fs` repository; the snapshot must
report SUCCESS with no failed shard, and hold every index asked for, before anything is
deleted. Restoring brings the index back under its own name, and refuses while an index of
that name exists (records of the day that arrived after the purge, or an earlier restore).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import date, datetime
from typing import Final, Protocol, TypeVar

from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from audit.errors import ConflictError, IntegrityError, StoreUnavailableError
from audit.models import RetentionArchive
from audit.store.archive import ArchiveKind, DayArchive, RunCollector
from audit.store.protocol import StoredEvent, day_bounds

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class _Response(Protocol[T_co]):
    """The client's responses (elastic_transport's ApiResponse, a dependency's own type)."""

    @property
    def body(self) -> T_co: ...


class SnapshotSource(Protocol):
    """What the snapshot archiver needs of the Elasticsearch store (ElasticEventStore)."""

    @property
    def client(self) -> AsyncElasticsearch: ...

    @property
    def prefix(self) -> str: ...

    def index_for(self, tenant: str, timestamp: datetime) -> str: ...

    def scan_day(self, tenant: str, day: date) -> AsyncIterator[StoredEvent]: ...


class SnapshotArchiver:
    """Daily indices into snapshots of the `fs` repository `repository` at `location`."""

    kind: Final = ArchiveKind.SNAPSHOT

    def __init__(self, store: SnapshotSource, repository: str, location: str) -> None:
        self.store = store
        self.repository = repository
        self.location = location

    @staticmethod
    async def _call(what: str, call: Awaitable[_Response[T]]) -> T:
        try:
            return (await call).body
        except (ApiError, TransportError) as exc:
            raise StoreUnavailableError(f"elasticsearch {what}: {exc}") from exc

    async def ensure_repository(self) -> None:
        await self._call(
            "snapshot repository",
            self.store.client.snapshot.create_repository(
                name=self.repository,
                repository={"type": "fs", "settings": {"location": self.location}},
            ),
        )

    async def archive(self, tenant: str, days: list[date], run_id: str) -> list[DayArchive]:
        out: list[DayArchive] = []
        for day in days:
            collector = RunCollector()
            async for event in self.store.scan_day(tenant, day):
                collector.add(event)
            if collector.records:
                index = self.store.index_for(tenant, day_bounds(day)[0])
                out.append(
                    DayArchive(
                        day=day,
                        records=collector.records,
                        runs=collector.runs,
                        per_stream=collector.per_stream,
                        kind=self.kind,
                        location="",
                        index_name=index,
                    )
                )
        if not out:
            return out
        await self.ensure_repository()
        name = f"{self.store.prefix}-{tenant}-{run_id}".lower()
        indices = [a.index_name for a in out if a.index_name]
        info = await self._call(
            "snapshot",
            self.store.client.snapshot.create(
                repository=self.repository,
                snapshot=name,
                indices=indices,
                include_global_state=False,
                wait_for_completion=True,
                metadata={"ffaudit": "retention", "tenant": tenant, "run": run_id},
            ),
        )
        snap = info.get("snapshot", {})
        shards = snap.get("shards", {})
        if (
            snap.get("state") != "SUCCESS"
            or shards.get("failed", 1) != 0
            or not set(indices) <= set(snap.get("indices", []))
        ):
            raise StoreUnavailableError(
                f"snapshot {name} did not succeed (state {snap.get('state')}, "
                f"{shards.get('failed')} failed shards): nothing deleted"
            )
        for archived in out:
            archived.location = f"{self.repository}/{name}"
        return out

    async def restore(self, archive: RetentionArchive) -> int:
        index = archive.index_name
        repository, _, snapshot = archive.location.partition("/")
        if not index or not snapshot:
            raise IntegrityError(f"archive {archive.id} names no snapshot index")
        client = self.store.client
        if await self._call("exists", client.indices.exists(index=index)):
            raise ConflictError(
                f"index {index} exists (records for that day arrived after the purge, or it "
                "was restored already): delete or rename it before restoring"
            )
        await self.ensure_repository()
        info = await self._call(
            "restore",
            client.snapshot.restore(
                repository=repository,
                snapshot=snapshot,
                indices=[index],
                include_global_state=False,
                include_aliases=False,
                wait_for_completion=True,
                index_settings={"index.blocks.write": False},
            ),
        )
        shards = info.get("snapshot", {}).get("shards", {})
        if shards.get("failed", 1) != 0:
            raise StoreUnavailableError(f"restoring {index} from {snapshot} failed: {shards}")
        await self._call("refresh", client.indices.refresh(index=index))
        counted = await self._call("count", client.count(index=index))
        return int(counted["count"])
