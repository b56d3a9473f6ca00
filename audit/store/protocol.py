"""The event store contract: what the ingest service needs from Elasticsearch or SQL.

Both implementations pass the same contract suite (tests/store/test_contract.py). The rules
every implementation keeps:

* `write` is create-only and durable when it returns: an id that exists is left as it is and
  reported in `WriteResult.existing`, so a retried batch is harmless.
* Every read takes the tenant and never returns another tenant's record, whatever doc id is
  asked for: the tenant is the one the service assigned (`StoredEvent.tenant`), never a
  value read from the producer's record.
* `StoredEvent.record` reads back equal to what was written (the JSON value; the SQL store
  keeps its RFC 8785 form, so `1.0` may read back as `1`, which hashes the same).
* Queries (`search`, `stats`, `by_job`) select by the same fields on every backend and return
  the same records in the same order: the fields are one table (audit.store.fields); the
  query types, the cursor and the free-text rule are in audit.store.query
  (tests/store/test_query.py is their contract suite).
* Each backend supplies the archiver retention uses for its purged days (`archiver`, under
  the contract of audit.store.archive), so retention never asks which backend it has.

A new backend: a module beside these implementing EventStore (for `archiver`, the signed
files of audit.store.ndjson_archive work on any store; a backend with snapshots of its own
adds an archiver module and an ArchiveKind), a branch in `audit.store.make_event_store`,
and its fixture in tests/store/conftest.py, so that the contract suites run on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from audit.errors import InvalidInputError
from audit.store.archive import Archiver, ArchiveSettings
from audit.store.query import ErrorTypeGroup, EventPage, EventQuery, GroupField, StatsBy

# (doc_id, timestamp, verdict, failure); the timestamp addresses the record's daily index.
VerdictUpdate = tuple[str, datetime, str, str | None]


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day: the records of one daily index."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def split_sequences(low: int, high: int, parts: int) -> list[tuple[int, int]]:
    """`low`..`high` as at most `parts` contiguous ranges of about equal width: sequences
    are dense, so equal widths are about equal numbers of records."""
    width = max(1, -(-(high - low + 1) // max(1, parts)))
    return [(first, min(high, first + width - 1)) for first in range(low, high + 1, width)]


# The widest histogram bucket: a year; a finer one than a second is not asked for.
MAX_INTERVAL_S = 366 * 86400


def check_interval(interval_s: int) -> None:
    """`EventStore.histogram`'s interval: whole seconds, 1 to a year."""
    if (
        isinstance(interval_s, bool)
        or not isinstance(interval_s, int)
        or not 1 <= interval_s <= MAX_INTERVAL_S
    ):
        raise InvalidInputError(f"a histogram interval is 1 to {MAX_INTERVAL_S} whole seconds")


class Verdict(StrEnum):
    """What ingest decided about a record (the `verdict` of a stored event)."""

    OK = "ok"
    DUPLICATE = "duplicate"  # a reply only: a copy of a stored record is not stored again
    PENDING = "pending"  # waiting for its predecessor
    BROKEN = "broken"  # placed in the chain, with a failure (gap, fork, late, after_close)
    REJECTED = "rejected"  # kept as evidence (forged, unlinked, modified), never in the chain


@dataclass(frozen=True, slots=True)
class StoredEvent:
    doc_id: str  # "{stream}:{sequence}", or "…:{event_hash[:16]}" for a rival record
    tenant: str
    stream: str
    sequence: int
    event_hash: str
    timestamp: datetime  # the record's @timestamp, UTC; picks the daily index
    record: dict[str, Any]  # as received: flat dotted keys, event.hash and signature included
    verdict: str  # a Verdict: ok | pending | broken | rejected
    failure: str | None  # the failure kind when broken: "modified", "fork", "gap", ...
    received_at: datetime


@dataclass(frozen=True, slots=True)
class WriteResult:
    written: int
    existing: tuple[str, ...]  # doc ids that were already stored (left untouched)


@dataclass(frozen=True, slots=True)
class SequenceRange:
    """Sequences `first`..`last` of one stream, and how many of its records there are in
    the chain (any verdict but rejected) in the snapshot that counted them."""

    first: int
    last: int
    chained: int


class SnapshotReader(Protocol):
    """A handle on one stream's snapshot that pickles: a worker process opens its own
    client with it and reads ranges of the same snapshot the parent counted."""

    def scan(self, first: int, last: int) -> AsyncIterator[StoredEvent]:
        """As `EventStore.scan(tenant, stream, first, last)`, in the snapshot."""
        ...


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """`EventStore.snapshot`: contiguous sequence ranges covering the stream's records,
    ascending; `reader` None where another process cannot read this store (an in-memory
    database)."""

    ranges: tuple[SequenceRange, ...]
    reader: SnapshotReader | None
    # The backend's own handle (an Elasticsearch point in time), for `release`.
    handle: str | None = None


class EventStore(Protocol):
    async def write(self, events: Sequence[StoredEvent]) -> WriteResult:
        """Durable when it returns. Never overwrites: an existing doc_id is left as it is and
        reported in `existing` (idempotent retries). Raises StoreUnavailableError when the
        backend cannot take the write (the caller then withholds its ack)."""
        ...

    async def update_verdicts(self, tenant: str, updates: Sequence[VerdictUpdate]) -> None:
        """(doc_id, timestamp, verdict, failure): e.g. a pending record whose gap filled
        becomes ok. Ids the tenant does not have are ignored."""
        ...

    async def get(self, tenant: str, doc_id: str) -> StoredEvent | None:
        """The tenant's record stored under `doc_id`, also when written moments ago."""
        ...

    async def get_many(
        self, tenant: str, doc_ids: Sequence[str], *, fresh: bool = False
    ) -> dict[str, StoredEvent]:
        """The tenant's records under any of `doc_ids` (missing ones are absent): one round
        trip for a whole batch, e.g. a producer replaying thousands of records. `fresh`:
        also whatever any writer stored up to now, even in a backend whose reads lag its
        writes (ingest deciding whether a resent record is stored must not guess)."""
        ...

    def scan(
        self, tenant: str, stream: str, start: int = 1, end: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        """Every stored record of the stream with start <= sequence <= end, ascending by
        sequence, then doc_id; forks included. Pages through the backend."""
        ...

    async def count(self, tenant: str, stream: str | None = None) -> int: ...

    async def snapshot(
        self, tenant: str, stream: str, start: int = 1, end: int | None = None, *, parts: int
    ) -> StreamSnapshot:
        """The records `scan(tenant, stream, start, end)` would read, fixed as they are now
        where the backend can (Elasticsearch: a point in time; SQL reads committed rows),
        split into at most `parts` contiguous sequence ranges of about equal width, each
        with its count of chained records: what parallel verification reads, a range per
        worker. No ranges when the stream holds none. `release` it when done."""
        ...

    async def release(self, snapshot: StreamSnapshot) -> None:
        """Free what `snapshot` holds in the backend (idempotent, never raises for a
        snapshot that expired)."""
        ...

    async def search(
        self, query: EventQuery, *, limit: int, cursor: str | None = None
    ) -> EventPage:
        """Up to `limit` (>= 1) of the query's records, ordered by (@timestamp, stream,
        sequence, doc_id) in `query.order`, after the record `cursor` points at.

        Keyset pagination: a page starts strictly after the previous page's last sort key, so
        records stored meanwhile never shift or repeat later pages; they appear or not in the
        part not yet read. `next_cursor` is None on the last page. A malformed cursor, or one
        issued for another query (other tenant, filters or order), raises InvalidInputError.
        """
        ...

    async def stats(self, query: EventQuery, *, by: StatsBy) -> dict[str, int]:
        """Exact record counts per group over the whole query (not a page): "action",
        "outcome", "actor" (user.hash), "verdict", or "day" (UTC date of @timestamp,
        YYYY-MM-DD). Records without the field count under ""; empty groups are absent."""
        ...

    async def facets(
        self, query: EventQuery, *, by: Sequence[StatsBy]
    ) -> dict[StatsBy, dict[str, int]]:
        """`stats` of the query by each of `by` at once, as ONE request of the backend (the
        filters are evaluated once, not once per grouping): each entry equals what
        `stats(query, by=...)` returns."""
        ...

    async def time_span(self, query: EventQuery) -> tuple[datetime, datetime] | None:
        """The earliest and latest @timestamp (UTC) of the query's records, in ONE
        aggregation (min and max together); None when nothing matches."""
        ...

    async def error_types(self, query: EventQuery) -> list[ErrorTypeGroup]:
        """The query's records grouped by error.type (a string of at most
        ERROR_TYPE_LONGEST characters; others and records without one under ""), each with
        its exact count per UTC day of @timestamp and the trace.id of its latest record
        (by @timestamp, stream, sequence, doc_id; None when that record has no string
        trace.id): store aggregations, never rows read back. Ordered by count descending,
        then error type."""
        ...

    async def histogram(self, query: EventQuery, *, interval_s: int) -> list[tuple[datetime, int]]:
        """Exact record counts of the whole query per time bucket of `interval_s` (>= 1)
        seconds of @timestamp, in ONE aggregation of the backend: buckets start at multiples
        of `interval_s` since the Unix epoch (UTC), ascending; empty buckets are absent."""
        ...

    async def count_by(
        self, query: EventQuery, *, field: GroupField, more_than: int = 0
    ) -> dict[str, int]:
        """Exact record counts per value of `field` over the whole query, only for values
        with more than `more_than` records (threshold alert rules). Records without the
        field, or with a value the store does not index (not a string, too long), are in no
        group."""
        ...

    async def by_job(self, tenant: str, job_id: str, *, limit: int = 10_000) -> list[StoredEvent]:
        """The first `limit` records with trace.id = `job_id`, in chain order (stream,
        sequence, doc_id)."""
        ...

    def scan_day(self, tenant: str, day: date) -> AsyncIterator[StoredEvent]:
        """Every record of the tenant whose @timestamp falls on the UTC `day` (one
        Elasticsearch daily index), stream by stream, each ascending by (sequence, doc_id):
        what retention archives and purges as one unit."""
        ...

    async def delete_day(self, tenant: str, day: date, *, expected: int) -> int:
        """Delete the tenant's records of the UTC `day` only if exactly `expected` are
        stored (the number archived): otherwise nothing is deleted and ConflictError is
        raised, so a record that arrived after archiving is never lost. Returns the count."""
        ...

    def archiver(self, settings: ArchiveSettings) -> Archiver:
        """What archives this store's days before `delete_day` removes them, and restores
        them (audit.store.archive)."""
        ...

    async def refresh(self, tenant: str | None = None) -> None:
        """Make writes visible to search now (Elasticsearch refresh; SQL: nothing to do):
        every tenant's, or `tenant`'s only. Reads see this store's own writes without it;
        a reader comparing against what other replicas acknowledged (a chain head) needs
        it."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
