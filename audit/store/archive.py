"""Archives of purged days: the contract between retention and a backend's archiver.

Retention never knows which backend it purges: it asks the store for its archiver
(`EventStore.archiver`), archives the due days with it, signs retention checkpoints over the
chain runs each archive reports, and deletes. Every archiver keeps these rules:

* `archive` is durable when it returns (files fsynced, or a snapshot confirmed SUCCESS), and
  reports each day's exact record count: the store deletes a day only if that many are
  there.
* `restore` writes records back create-only, so restoring twice, or over records still
  stored, is harmless; it refuses an archive it cannot prove intact.
* `kind` names the archives it makes and is the only kind it restores.

The implementations: audit.store.ndjson_archive (any store: signed NDJSON.gz files, the SQL
store's) and audit.store.elastic_archive (Elasticsearch snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from audit.errors import CanonicalizationError
from audit.integrity import record as f
from audit.integrity.chain import record_hash
from audit.integrity.keys import Signer
from audit.models import RetentionArchive
from audit.settings import AuditSettings

if TYPE_CHECKING:
    from audit.store.protocol import StoredEvent


class ArchiveKind(StrEnum):
    """What an archive is (`RetentionArchive.kind`, and a retention checkpoint's)."""

    NDJSON_GZ = "ndjson.gz"  # a file per tenant and day, with a signed manifest
    SNAPSHOT = "snapshot"  # an Elasticsearch daily index in a snapshot


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """Where archives go: each archiver takes the part it needs."""

    directory: Path  # files and their manifests, one folder per tenant
    signer: Signer  # the service key, which signs file manifests
    snapshot_repository: str  # Elasticsearch: the `fs` snapshot repository's name
    snapshot_location: str  # its location, under Elasticsearch's path.repo

    @classmethod
    def of(cls, settings: AuditSettings, signer: Signer) -> ArchiveSettings:
        return cls(
            directory=settings.retention_archive_dir,
            signer=signer,
            snapshot_repository=settings.retention_snapshot_repository,
            snapshot_location=settings.retention_snapshot_location,
        )


@dataclass(slots=True)
class StreamRun:
    """Consecutive sequences first..last of one stream within one purged day."""

    stream: str
    first: int
    last: int
    first_prev: str
    last_hash: str
    # Every record's content hashed to its event.hash and linked to its predecessor.
    intact: bool


class RunCollector:
    """Fed a day's records stream by stream in sequence order (EventStore.scan_day); keeps
    only the runs' boundaries, so memory does not grow with the day."""

    def __init__(self) -> None:
        self.runs: list[StreamRun] = []
        self.records = 0
        self.per_stream: dict[str, int] = {}
        self._run: StreamRun | None = None

    def add(self, event: StoredEvent) -> None:
        self.records += 1
        self.per_stream[event.stream] = self.per_stream.get(event.stream, 0) + 1
        if event.doc_id != f.document_id(event.stream, event.sequence):
            return  # a fork's second record: archived and purged, not part of the chain
        prev = event.record.get(f.PREV)
        intact = _content_ok(event) and isinstance(prev, str)
        run = self._run
        if run is not None and run.stream == event.stream and event.sequence == run.last + 1:
            run.intact = run.intact and intact and prev == run.last_hash
            run.last, run.last_hash = event.sequence, event.event_hash
            return
        self._run = StreamRun(
            event.stream,
            event.sequence,
            event.sequence,
            prev if isinstance(prev, str) else "",
            event.event_hash,
            intact,
        )
        self.runs.append(self._run)


def _content_ok(event: StoredEvent) -> bool:
    try:
        return record_hash(event.record) == event.event_hash == event.record.get(f.EVENT_HASH)
    except CanonicalizationError:
        return False


@dataclass(slots=True)
class DayArchive:
    """One archived day, before the control database knows of it."""

    day: date
    records: int
    runs: list[StreamRun]
    per_stream: dict[str, int]
    kind: ArchiveKind
    location: str
    index_name: str | None = None
    sha256: str | None = None


@runtime_checkable
class Archiver(Protocol):
    """What retention needs of a backend's archives (module docstring)."""

    @property
    def kind(self) -> ArchiveKind:
        """The kind of archive it makes, and the only kind it restores."""
        ...

    async def archive(self, tenant: str, days: list[date], run_id: str) -> list[DayArchive]:
        """Archive the tenant's `days` (days without records may be left out); durable when
        it returns."""
        ...

    async def restore(self, archive: RetentionArchive) -> int:
        """Bring an archived day's records back; returns how many were written."""
        ...
