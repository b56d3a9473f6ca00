"""The embedded event store: one table (`events`) on SQLite or PostgreSQL.

The schema comes from the Alembic migrations only; this module never creates tables.
Synchronous SQLAlchemy runs in worker threads (`asyncio.to_thread`) so the event loop never
waits on the database. A write commits before it returns (SQLite in WAL mode with
`synchronous=FULL`, see audit.db.session), so an acknowledged record survives a crash.

Queries (`search`, `stats`, `by_job`) filter on the copied columns, so a value the copy left
out (wrong type, too long) matches no filter, as in Elasticsearch. Pages are keyset reads on
(timestamp, stream, sequence, doc_id) through the (tenant, timestamp) index; ties on stream
and doc_id break in the database's collation: byte order on SQLite and under PostgreSQL's
"C", as in Elasticsearch. Free text is `LIKE '% word%'` on `search_text` (migration 0003
fills it for rows stored before it existed); no index serves a leading-wildcard LIKE, so it
narrows what the other filters and the tenant's time range select. File hashes match the
digests in `file_hashes` (migration 0014 fills it for older rows), likewise unindexed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from audit.db.session import make_engine, session_factory
from audit.errors import ConflictError, StoreUnavailableError, UsageError
from audit.integrity.canonical import canonicalize
from audit.models.events import Event
from audit.store.archive import Archiver, ArchiveSettings
from audit.store.fields import (
    BY_GROUP,
    BY_KEY,
    BY_STATS,
    COPIED,
    DAY,
    FIELDS,
    FILE_HASHES,
    TIME,
    VALUE_FILTERS,
    WORDS,
    Kind,
)
from audit.store.ndjson_archive import NdjsonArchiver
from audit.store.protocol import (
    SequenceRange,
    StoredEvent,
    StreamSnapshot,
    Verdict,
    VerdictUpdate,
    WriteResult,
    check_interval,
    day_bounds,
    split_sequences,
)
from audit.store.query import (
    ERROR_TYPE_LONGEST,
    MAX_FILE_HASHES,
    ErrorTypeGroup,
    EventPage,
    EventQuery,
    GroupField,
    StatsBy,
    check_count_by,
    check_job,
    check_limit,
    check_stats_by,
    decode_cursor,
    file_hashes_text,
    from_micros,
    like_prefix,
    make_page,
    search_text,
    sort_key,
)

T = TypeVar("T")
_TABLE = cast(Table, Event.__table__)
# Rows per INSERT statement: 17 columns stay far below SQLite's and PostgreSQL's bind limits.
_INSERT_CHUNK = 500
# Each query field's column (audit.store.fields names it): one missing fails here, at import.
_COLUMNS: dict[str, ColumnElement[Any]] = {f.key: _TABLE.c[f.column] for f in FIELDS}
# EventQuery attribute -> the column its values are matched against (`IN`). The one
# multi-valued field, the file hashes, is matched by its slots (_FILE_SLOTS).
_FILTERS = tuple(
    (name, _COLUMNS[f.key]) for name, f in VALUE_FILTERS.items() if f.kind is not Kind.KEYWORDS
)
# StatsBy -> the column `stats` groups on; a date groups by UTC day (SqlEventStore._day).
_STATS_COLUMNS = {name: _COLUMNS[f.key] for name, f in BY_STATS.items() if f.kind is not Kind.DATE}
# GroupField -> the column `count_by` groups on.
_GROUP_COLUMNS = {name: _COLUMNS[f.key] for name, f in BY_GROUP.items()}
# A record names at most MAX_FILE_HASHES files, stored in `file_hashes` 64 hex digits and a
# space apart: the n-th digest is a fixed substring, which an IN list matches exactly.
_FILE_SLOTS = tuple(
    func.substr(_COLUMNS[FILE_HASHES.key], 1 + 65 * n, 64, type_=String)
    for n in range(MAX_FILE_HASHES)
)
_PAGE_ORDER = (Event.timestamp, Event.stream, Event.sequence, Event.doc_id)


class SqlEventStore:
    """`EventStore` on the `events` table of `url` (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, page_size: int = 1000) -> None:
        if page_size < 1:
            raise UsageError("page_size must be at least 1")
        self._engine: Engine = make_engine(url)
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            self._insert: Callable[..., Any] = postgresql.insert
        elif dialect == "sqlite":
            self._insert = sqlite.insert
        else:
            raise UsageError(f"the SQL event store supports SQLite and PostgreSQL, not {dialect}")
        self._sessions = session_factory(self._engine)
        self.page_size = page_size
        self._url = url

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except (OperationalError, InterfaceError) as exc:
            raise StoreUnavailableError(f"event database unavailable: {exc.orig or exc}") from exc

    # -- writes -----------------------------------------------------------------------------

    async def write(self, events: Sequence[StoredEvent]) -> WriteResult:
        if not events:
            return WriteResult(written=0, existing=())
        rows = [_row(event) for event in events]
        inserted = await self._run(self._insert_rows, rows)
        claimed: set[tuple[str, str]] = set()
        existing: list[str] = []
        for event in events:
            key = (event.tenant, event.doc_id)
            # A doc id repeated inside one batch is written once; its repeats are "existing".
            if key in inserted and key not in claimed:
                claimed.add(key)
            else:
                existing.append(event.doc_id)
        return WriteResult(written=len(claimed), existing=tuple(existing))

    def _insert_rows(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        inserted: set[tuple[str, str]] = set()
        # One transaction for the batch; ON CONFLICT DO NOTHING (both dialects) leaves any
        # stored row untouched, also one a concurrent writer committed a moment ago.
        with self._engine.begin() as conn:
            for i in range(0, len(rows), _INSERT_CHUNK):
                stmt = (
                    self._insert(_TABLE)
                    .values(rows[i : i + _INSERT_CHUNK])
                    .on_conflict_do_nothing(index_elements=["tenant", "doc_id"])
                    .returning(_TABLE.c.tenant, _TABLE.c.doc_id)
                )
                inserted.update((row.tenant, row.doc_id) for row in conn.execute(stmt))
        return inserted

    async def update_verdicts(self, tenant: str, updates: Sequence[VerdictUpdate]) -> None:
        if updates:
            await self._run(self._update, tenant, updates)

    def _update(self, tenant: str, updates: Sequence[VerdictUpdate]) -> None:
        stmt = (
            update(_TABLE)
            .where(_TABLE.c.tenant == tenant, _TABLE.c.doc_id == bindparam("b_doc_id"))
            .values(verdict=bindparam("b_verdict"), failure=bindparam("b_failure"))
        )
        params = [
            {"b_doc_id": doc_id, "b_verdict": verdict, "b_failure": failure}
            for doc_id, _timestamp, verdict, failure in updates
        ]
        with self._engine.begin() as conn:
            conn.execute(stmt, params)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, tenant: str, doc_id: str) -> StoredEvent | None:
        return (await self.get_many(tenant, [doc_id])).get(doc_id)

    async def get_many(
        self, tenant: str, doc_ids: Sequence[str], *, fresh: bool = False
    ) -> dict[str, StoredEvent]:
        # Committed rows are visible at once: every read is fresh.
        return await self._run(self._get_many, tenant, sorted(set(doc_ids)))

    def _get_many(self, tenant: str, doc_ids: list[str]) -> dict[str, StoredEvent]:
        found: dict[str, StoredEvent] = {}
        with self._sessions() as session:
            for start in range(0, len(doc_ids), self.page_size):
                chunk = doc_ids[start : start + self.page_size]
                rows = session.scalars(
                    select(Event).where(Event.tenant == tenant, Event.doc_id.in_(chunk))
                )
                found.update((row.doc_id, _event(row)) for row in rows)
        return found

    async def scan(
        self, tenant: str, stream: str, start: int = 1, end: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        async for event in self._keyset_scan(self._page, tenant, stream, start, end):
            yield event

    def _page(
        self, tenant: str, stream: str, start: int, end: int | None, after: tuple[int, str] | None
    ) -> list[StoredEvent]:
        conditions = [Event.tenant == tenant, Event.stream == stream, Event.sequence >= start]
        if end is not None:
            conditions.append(Event.sequence <= end)
        return self._keyset_page(conditions, after)

    async def _keyset_scan(
        self, page: Callable[..., list[StoredEvent]], *args: Any
    ) -> AsyncIterator[StoredEvent]:
        """Every event of `page(*args, after)`, page after page (see _keyset_page)."""
        after: tuple[int, str] | None = None
        while True:
            found = await self._run(page, *args, after)
            for event in found:
                yield event
            if len(found) < self.page_size:
                return
            after = (found[-1].sequence, found[-1].doc_id)

    def _keyset_page(
        self, conditions: list[ColumnElement[bool]], after: tuple[int, str] | None
    ) -> list[StoredEvent]:
        """Keyset paging on (sequence, doc_id) within one stream: the page of the events
        matching `conditions` after `after`, each page one indexed range read."""
        if after is not None:
            sequence, doc_id = after
            conditions = [
                *conditions,
                or_(
                    Event.sequence > sequence,
                    and_(Event.sequence == sequence, Event.doc_id > doc_id),
                ),
            ]
        stmt = (
            select(Event)
            .where(*conditions)
            .order_by(Event.sequence, Event.doc_id)
            .limit(self.page_size)
        )
        with self._sessions() as session:
            return [_event(row) for row in session.scalars(stmt)]

    async def snapshot(
        self, tenant: str, stream: str, start: int = 1, end: int | None = None, *, parts: int
    ) -> StreamSnapshot:
        # No snapshot spans connections here: the ranges are read later in their own
        # transactions, as `scan` reads its pages. Rows are create-only, so what a reader
        # can meet is a record stored after the count; the caller compares the counts.
        ranges = await self._run(self._ranges, tenant, stream, start, end, parts)
        url = make_url(self._url)
        in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        reader = None if in_memory else SqlSnapshotReader(self._url, self.page_size, tenant, stream)
        return StreamSnapshot(tuple(ranges), reader)

    async def release(self, snapshot: StreamSnapshot) -> None:
        return None

    def _ranges(
        self, tenant: str, stream: str, start: int, end: int | None, parts: int
    ) -> list[SequenceRange]:
        conditions = [Event.tenant == tenant, Event.stream == stream, Event.sequence >= start]
        if end is not None:
            conditions.append(Event.sequence <= end)
        with self._sessions() as session:
            low, high = session.execute(
                select(func.min(Event.sequence), func.max(Event.sequence)).where(*conditions)
            ).one()
            if low is None or high is None:
                return []
            cuts = split_sequences(int(low), int(high), parts)
            width = cuts[0][1] - cuts[0][0] + 1
            # One indexed range read counts every part: the part is (sequence - low) // width.
            part = ((Event.sequence - int(low)) // width).label("part")
            rows = session.execute(
                select(part, func.count())
                .where(*conditions, Event.verdict != Verdict.REJECTED.value)
                .group_by(part)
            )
            counted = {int(index): int(n) for index, n in rows}
        return [
            SequenceRange(first, last, int(counted.get(i, 0)))
            for i, (first, last) in enumerate(cuts)
        ]

    async def count(self, tenant: str, stream: str | None = None) -> int:
        return await self._run(self._count, tenant, stream)

    def _count(self, tenant: str, stream: str | None) -> int:
        stmt = select(func.count()).select_from(Event).where(Event.tenant == tenant)
        if stream is not None:
            stmt = stmt.where(Event.stream == stream)
        with self._sessions() as session:
            return int(session.scalar(stmt) or 0)

    # -- queries ----------------------------------------------------------------------------

    async def search(
        self, query: EventQuery, *, limit: int, cursor: str | None = None
    ) -> EventPage:
        check_limit(limit)
        after: tuple[datetime, str, int, str] | None = None
        if cursor is not None:
            time_us, stream, sequence, doc_id = decode_cursor(query, cursor)
            after = (from_micros(time_us), stream, sequence, doc_id)
        found = await self._run(self._search, query, limit + 1, after)
        return make_page(query, [(event, sort_key(event)) for event in found], limit)

    def _search(
        self, query: EventQuery, size: int, after: tuple[datetime, str, int, str] | None
    ) -> list[StoredEvent]:
        conditions = _where(query)
        if after is not None:
            key = tuple_(*_PAGE_ORDER)
            bound = tuple_(*(literal(v, c.type) for v, c in zip(after, _PAGE_ORDER, strict=True)))
            # The row comparison is the keyset condition; the redundant bound on timestamp
            # alone is what lets the (tenant, timestamp) index start at the cursor.
            if query.order == "asc":
                conditions += [Event.timestamp >= after[0], key > bound]
            else:
                conditions += [Event.timestamp <= after[0], key < bound]
        order = _PAGE_ORDER if query.order == "asc" else tuple(c.desc() for c in _PAGE_ORDER)
        stmt = select(Event).where(*conditions).order_by(*order).limit(size)
        with self._sessions() as session:
            return [_event(row) for row in session.scalars(stmt)]

    async def stats(self, query: EventQuery, *, by: StatsBy) -> dict[str, int]:
        check_stats_by(by)
        return await self._run(self._stats, query, by)

    def _stats(self, query: EventQuery, by: str) -> dict[str, int]:
        group = self._day() if BY_STATS[by].kind is Kind.DATE else _STATS_COLUMNS[by]
        # Grouped in a subquery: PostgreSQL refuses GROUP BY on an expression whose literals
        # are bound separately from the select list's.
        keyed = select(group.label("k")).where(*_where(query)).subquery()
        stmt = select(keyed.c.k, func.count()).group_by(keyed.c.k)
        counts: dict[str, int] = {}
        with self._engine.connect() as conn:
            for key, n in conn.execute(stmt):
                name = "" if key is None else str(key)
                counts[name] = counts.get(name, 0) + int(n)
        return counts

    def _day(self) -> ColumnElement[Any]:
        when = _COLUMNS[DAY.key]
        if self._engine.dialect.name == "postgresql":
            return func.to_char(func.timezone("UTC", when), "YYYY-MM-DD", type_=String)
        # SQLite keeps UTC times as "YYYY-MM-DD HH:MM:SS.ffffff" text.
        return func.substr(when, 1, 10, type_=String)

    async def facets(
        self, query: EventQuery, *, by: Sequence[StatsBy]
    ) -> dict[StatsBy, dict[str, int]]:
        for name in by:
            check_stats_by(name)
        return await self._run(self._facets, query, list(dict.fromkeys(by)))

    def _facets(self, query: EventQuery, by: list[StatsBy]) -> dict[StatsBy, dict[str, int]]:
        if not by:
            return {}
        # One statement: a UNION ALL of the groupings, each over the same filters.
        parts = []
        for n, name in enumerate(by):
            group = self._day() if BY_STATS[name].kind is Kind.DATE else _STATS_COLUMNS[name]
            keyed = select(group.label("k")).where(*_where(query)).subquery()
            parts.append(
                select(literal(n).label("n"), keyed.c.k, func.count().label("c")).group_by(
                    keyed.c.k
                )
            )
        stmt = union_all(*parts)
        counts: dict[StatsBy, dict[str, int]] = {name: {} for name in by}
        with self._engine.connect() as conn:
            for n, key, count in conn.execute(stmt):
                found = counts[by[int(n)]]
                value = "" if key is None else str(key)
                found[value] = found.get(value, 0) + int(count)
        return counts

    async def time_span(self, query: EventQuery) -> tuple[datetime, datetime] | None:
        return await self._run(self._time_span, query)

    def _time_span(self, query: EventQuery) -> tuple[datetime, datetime] | None:
        when = _COLUMNS[TIME.key]
        stmt = select(func.min(when), func.max(when)).where(*_where(query))
        with self._engine.connect() as conn:
            first, last = conn.execute(stmt).one()
        if first is None or last is None:
            return None
        return _utc(first), _utc(last)

    async def error_types(self, query: EventQuery) -> list[ErrorTypeGroup]:
        return await self._run(self._error_types, query)

    def _error_types(self, query: EventQuery) -> list[ErrorTypeGroup]:
        kind = self._error_type()
        # Grouped in subqueries: PostgreSQL refuses GROUP BY on expressions with bound
        # literals (as in _stats).
        keyed = select(kind.label("k"), self._day().label("d")).where(*_where(query)).subquery()
        per_day = select(keyed.c.k, keyed.c.d, func.count()).group_by(keyed.c.k, keyed.c.d)
        rank = (
            func.row_number()
            .over(
                partition_by=kind,
                order_by=tuple(c.desc() for c in _PAGE_ORDER),
            )
            .label("r")
        )
        ranked = select(kind.label("k"), Event.trace_id, rank).where(*_where(query)).subquery()
        latest = select(ranked.c.k, ranked.c.trace_id).where(ranked.c.r == 1)
        groups: dict[str, ErrorTypeGroup] = {}
        with self._engine.connect() as conn:
            for key, day, n in conn.execute(per_day):
                name = "" if key is None else str(key)
                group = groups.setdefault(name, ErrorTypeGroup(name, 0, {}, None))
                days = group.per_day
                days[str(day)] = days.get(str(day), 0) + int(n)
            last = {("" if key is None else str(key)): job for key, job in conn.execute(latest)}
        return sorted(
            (
                replace(g, count=sum(g.per_day.values()), last_job=last.get(g.error_type))
                for g in groups.values()
            ),
            key=lambda g: (-g.count, g.error_type),
        )

    def _error_type(self) -> ColumnElement[Any]:
        """error.type read from the record text (no column copies it): a string of at most
        ERROR_TYPE_LONGEST characters, else "" (as Elasticsearch's index keeps it)."""
        record = _TABLE.c.record
        value: ColumnElement[str]
        if self._engine.dialect.name == "postgresql":
            doc = sql_cast(record, postgresql.JSONB)
            value = doc.op("->>", return_type=String)(literal("error.type"))
            is_text = func.jsonb_typeof(doc.op("->")(literal("error.type"))) == "string"
        else:
            path = '$."error.type"'
            value = func.json_extract(record, path, type_=String)
            is_text = func.json_type(record, path) == "text"
        return case(
            (and_(is_text, func.length(value) <= ERROR_TYPE_LONGEST), value),
            else_=literal(""),
        )

    async def histogram(self, query: EventQuery, *, interval_s: int) -> list[tuple[datetime, int]]:
        check_interval(interval_s)
        return await self._run(self._histogram, query, interval_s)

    def _histogram(self, query: EventQuery, interval_s: int) -> list[tuple[datetime, int]]:
        # One GROUP BY over the bucket number: whole epoch seconds divided by the interval
        # (integer division on both dialects; the interval is an int, inlined as a literal).
        width = literal_column(str(int(interval_s)), BigInteger)
        bucket = sql_cast(self._epoch(), BigInteger) // width
        keyed = select(bucket.label("k")).where(*_where(query)).subquery()
        stmt = select(keyed.c.k, func.count()).group_by(keyed.c.k).order_by(keyed.c.k)
        with self._engine.connect() as conn:
            rows = [(int(k), int(n)) for k, n in conn.execute(stmt) if k is not None]
        return [(datetime.fromtimestamp(k * interval_s, UTC), n) for k, n in rows]

    def _epoch(self) -> ColumnElement[Any]:
        """Whole seconds since the epoch of the record's @timestamp (UTC), an integer."""
        when = _COLUMNS[DAY.key]
        if self._engine.dialect.name == "postgresql":
            return func.floor(func.extract("epoch", when))
        # SQLite keeps UTC times as "YYYY-MM-DD HH:MM:SS.ffffff" text: '%s' reads it.
        return func.strftime("%s", when)

    async def count_by(
        self, query: EventQuery, *, field: GroupField, more_than: int = 0
    ) -> dict[str, int]:
        check_count_by(field, more_than)
        return await self._run(self._count_by, query, field, more_than)

    def _count_by(self, query: EventQuery, field: str, more_than: int) -> dict[str, int]:
        column = _GROUP_COLUMNS[field]
        n = func.count()
        stmt = (
            select(column, n)
            .where(*_where(query), column.is_not(None))
            .group_by(column)
            .having(n > more_than)
        )
        with self._engine.connect() as conn:
            return {str(key): int(count) for key, count in conn.execute(stmt)}

    async def by_job(self, tenant: str, job_id: str, *, limit: int = 10_000) -> list[StoredEvent]:
        check_job(tenant, job_id)
        check_limit(limit)
        return await self._run(self._by_job, tenant, job_id, limit)

    def _by_job(self, tenant: str, job_id: str, limit: int) -> list[StoredEvent]:
        stmt = (
            select(Event)
            .where(Event.tenant == tenant, Event.trace_id == job_id)
            .order_by(Event.stream, Event.sequence, Event.doc_id)
            .limit(limit)
        )
        with self._sessions() as session:
            return [_event(row) for row in session.scalars(stmt)]

    # -- retention --------------------------------------------------------------------------

    async def scan_day(self, tenant: str, day: date) -> AsyncIterator[StoredEvent]:
        window = day_bounds(day)
        # Per stream, keyset pages between the day's lowest and highest sequence: index
        # range reads on (stream, sequence), where paging the whole day in (stream,
        # sequence) order would sort it again for every page.
        for stream, low, high in await self._run(self._day_spans, tenant, window):
            async for event in self._keyset_scan(self._day_page, tenant, stream, window, low, high):
                yield event

    def _day_spans(
        self, tenant: str, window: tuple[datetime, datetime]
    ) -> list[tuple[str, int, int]]:
        stmt = (
            select(Event.stream, func.min(Event.sequence), func.max(Event.sequence))
            .where(Event.tenant == tenant, Event.timestamp >= window[0])
            .where(Event.timestamp < window[1])
            .group_by(Event.stream)
            .order_by(Event.stream)
        )
        with self._engine.connect() as conn:
            return [(str(s), int(low), int(high)) for s, low, high in conn.execute(stmt)]

    def _day_page(
        self,
        tenant: str,
        stream: str,
        window: tuple[datetime, datetime],
        low: int,
        high: int,
        after: tuple[int, str] | None,
    ) -> list[StoredEvent]:
        conditions = [
            Event.tenant == tenant,
            Event.stream == stream,
            Event.sequence >= low,
            Event.sequence <= high,
            Event.timestamp >= window[0],
            Event.timestamp < window[1],
        ]
        return self._keyset_page(conditions, after)

    async def delete_day(self, tenant: str, day: date, *, expected: int) -> int:
        return await self._run(self._delete_day, tenant, day, expected)

    def _delete_day(self, tenant: str, day: date, expected: int) -> int:
        start, end = day_bounds(day)
        stmt = delete(_TABLE).where(
            _TABLE.c.tenant == tenant, _TABLE.c.timestamp >= start, _TABLE.c.timestamp < end
        )
        with self._engine.begin() as conn:
            deleted = int(conn.execute(stmt).rowcount)
            if deleted != expected:
                # Raised inside the transaction: the delete is rolled back.
                raise ConflictError(
                    f"{deleted} records of tenant {tenant!r} on {day} where {expected} were "
                    "archived: nothing deleted"
                )
        return deleted

    def archiver(self, settings: ArchiveSettings) -> Archiver:
        """Signed NDJSON.gz files: a database has no snapshots of one tenant's day."""
        return NdjsonArchiver(self, settings.directory, settings.signer)

    # -- lifecycle --------------------------------------------------------------------------

    async def refresh(self, tenant: str | None = None) -> None:
        """Nothing to do: a committed row is visible to every later read."""

    async def ping(self) -> bool:
        try:
            await self._run(self._ping)
        except StoreUnavailableError:
            return False
        return True

    def _ping(self) -> None:
        with self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)


def _row(event: StoredEvent) -> dict[str, Any]:
    row: dict[str, Any] = {
        "doc_id": event.doc_id,
        "tenant": event.tenant,
        "stream": event.stream,
        "sequence": event.sequence,
        "event_hash": event.event_hash,
        "timestamp": event.timestamp,
        "verdict": event.verdict,
        "failure": event.failure,
        "received_at": event.received_at,
        "record": canonicalize(event.record).decode("utf-8"),
        WORDS.column: search_text(event.record),
        FILE_HASHES.column: file_hashes_text(event.record),
    }
    for key, longest in COPIED.items():
        value = event.record.get(key)
        # Copies serve lookups only: a value of the wrong type or size (a broken record's)
        # is left out of its column, while the record text keeps it verbatim.
        copy = value if isinstance(value, str) and len(value) <= longest else None
        row[BY_KEY[key].column] = copy
    return row


def _where(query: EventQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Event.tenant == query.tenant]
    for name, column in _FILTERS:
        values: tuple[str, ...] = getattr(query, name)
        if values:
            conditions.append(column.in_(values))
    when = _COLUMNS[TIME.key]
    if query.since is not None:
        conditions.append(when >= query.since)
    if query.until is not None:
        conditions.append(when < query.until)
    # search_text and the words are both case-folded in Python: SQLite's lower() is
    # ASCII-only, so lowering in SQL would differ between the two databases.
    words = _COLUMNS[WORDS.key]
    for word in query.words():
        conditions.append(words.like(like_prefix(word), escape="\\"))
    if query.file_hashes:
        digests = sorted(set(query.file_hashes))
        conditions.append(or_(*(slot.in_(digests) for slot in _FILE_SLOTS)))
    if query.excluded_actions:
        action = _COLUMNS[VALUE_FILTERS["actions"].key]
        # NOT IN alone would drop the records without an action (NULL): they stay.
        conditions.append(or_(action.is_(None), action.not_in(sorted(set(query.excluded_actions)))))
    return conditions


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _event(row: Event) -> StoredEvent:
    return StoredEvent(
        doc_id=row.doc_id,
        tenant=row.tenant,
        stream=row.stream,
        sequence=row.sequence,
        event_hash=row.event_hash,
        timestamp=row.timestamp,
        record=orjson.loads(row.record),
        verdict=row.verdict,
        failure=row.failure,
        received_at=row.received_at,
    )


@dataclass(frozen=True, slots=True)
class SqlSnapshotReader:
    """`SnapshotReader` of the SQL store: the URL, opened again in the reading process."""

    url: str
    page_size: int
    tenant: str
    stream: str

    async def scan(self, first: int, last: int) -> AsyncIterator[StoredEvent]:
        store = SqlEventStore(self.url, page_size=self.page_size)
        try:
            async for event in store.scan(self.tenant, self.stream, first, last):
                yield event
        finally:
            await store.close()
