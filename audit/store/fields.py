"""The query fields: one table of what every event store filters, groups and counts on.

Each row is one field a query can select by: where its value comes from, how it is kept,
and which query names use it. The backends derive what they need from the table alone: the
SQL store its column map, copies, filters and groups (audit.store.sql), Elasticsearch its
mapping, copies, filters and aggregations (audit.store.elastic); EventQuery takes its value
filters from it (audit.store.query). tests/store/test_fields.py holds the derivations to it.

To add a query field that copies a record field: a row here (its `release` the next
number, and its name in StatsBy / GroupField if it is counted), the EventQuery attribute
that filters on it, and the SQL store's column (audit/models/events.py and a migration
that fills it for stored rows). Elasticsearch needs nothing more: its template maps the
field on new indices, `ensure_templates` on live ones, and `backfill()` (run by `ffaudit
db upgrade`) reindexes the documents stored before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

# The typed names of the counted fields (the API's and the alert rules' vocabularies): the
# rows' `stats` and `group`, spelt out because a type checker cannot read them from the
# table. A test holds the two to each other.
StatsBy = Literal["action", "outcome", "actor", "day", "verdict", "client_ip", "session", "stream"]
GroupField = Literal[
    "user.hash",
    "ffaudit.client.ip_hash",
    "ffaudit.session.hash",
    "event.action",
    "event.outcome",
    "trace.id",
    "stream",
]

INGEST: Final = "ffaudit.ingest."  # the service's own annotations beside a stored record


class Kind(StrEnum):
    """How a field's values are kept and matched."""

    KEYWORD = "keyword"  # one exact value per record: a pseudonym, an action, a verdict
    # One exact value the producer chose freely: an index leaves an oversized one out
    # rather than refuse the record.
    FREE = "free"
    KEYWORDS = "keywords"  # several exact values per record (multi-valued)
    WORDS = "words"  # several words per record, each matched as a prefix (free text)
    LONG = "long"  # the record time in epoch microseconds: ranges and the order of pages
    DATE = "date"  # the record time as a date: groups by UTC day


# Kinds whose query attribute is a tuple of alternatives matched exactly.
EXACT: Final = frozenset({Kind.KEYWORD, Kind.FREE, Kind.KEYWORDS})


class Source(StrEnum):
    """Where a stored field's value comes from."""

    # The record's own field `key`, copied only when it is a string of at most `longest`
    # characters: a broken record's odd value matches no filter, on every backend.
    RECORD = "record"
    # What the service assigned (StoredEvent), never what the producer wrote: a producer
    # cannot move its record to another stream or verdict.
    SERVICE = "service"
    # Computed from the record at write time (audit.store.query: searchable_words,
    # file_hashes_of).
    DERIVED = "derived"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryField:
    key: str  # in a stored document: the record's own key, or an annotation (INGEST)
    kind: Kind
    source: Source
    column: str  # the SQL store's column (audit/models/events.py)
    query: str | None = None  # the EventQuery attribute that selects by it
    stats: str | None = None  # its StatsBy name: `stats` counts records per value
    group: str | None = None  # its GroupField name: `count_by` counts records per value
    longest: int | None = None  # RECORD: the longest value copied (the column's size)
    # The version of Elasticsearch's query fields (elastic.QUERY_FIELDS) that added it; 0:
    # mapped since the first release. A field added now takes the next number: live indices
    # then get its mapping, and `backfill()` reindexes the documents stored before it.
    release: int = 0
    # In every cursor's digest since cursors exist. A field added since is left out of the
    # digest while unused, so a cursor issued before the upgrade continues its query.
    first_cursors: bool = False

    def __post_init__(self) -> None:
        # Only a copy has a size, and a copy without one would never be made.
        if (self.source is Source.RECORD) != (self.longest is not None):
            raise ValueError(f"{self.key}: `longest` is for, and only for, record copies")


FIELDS: Final[tuple[QueryField, ...]] = (
    QueryField(
        key="user.hash",
        kind=Kind.KEYWORD,
        source=Source.RECORD,
        column="user_hash",
        query="actor_hashes",
        stats="actor",
        group="user.hash",
        longest=64,
        first_cursors=True,
    ),
    QueryField(
        key="event.action",
        kind=Kind.KEYWORD,
        source=Source.RECORD,
        column="action",
        query="actions",
        stats="action",
        group="event.action",
        longest=64,
        first_cursors=True,
    ),
    QueryField(
        key="event.outcome",
        kind=Kind.KEYWORD,
        source=Source.RECORD,
        column="outcome",
        query="outcomes",
        stats="outcome",
        group="event.outcome",
        longest=16,
        first_cursors=True,
    ),
    QueryField(
        key="ffaudit.session.hash",
        kind=Kind.KEYWORD,
        source=Source.RECORD,
        column="session_hash",
        query="session_hashes",
        stats="session",
        group="ffaudit.session.hash",
        longest=64,
        first_cursors=True,
    ),
    QueryField(
        key="ffaudit.target.hash",
        kind=Kind.KEYWORD,
        source=Source.RECORD,
        column="target_hash",
        query="target_hashes",
        longest=64,
        first_cursors=True,
    ),
    QueryField(
        key="trace.id",
        kind=Kind.FREE,
        source=Source.RECORD,
        column="trace_id",
        query="job_ids",
        group="trace.id",
        longest=256,
        first_cursors=True,
    ),
    QueryField(
        key="ffaudit.client.ip_hash",
        kind=Kind.KEYWORD,
        source=Source.RECORD,
        column="client_ip_hash",
        query="client_ip_hashes",
        stats="client_ip",
        group="ffaudit.client.ip_hash",
        longest=64,
        first_cursors=True,
    ),
    QueryField(
        key=INGEST + "stream",
        kind=Kind.KEYWORD,
        source=Source.SERVICE,
        column="stream",
        query="streams",
        stats="stream",
        group="stream",
        first_cursors=True,
    ),
    QueryField(
        key=INGEST + "verdict",
        kind=Kind.KEYWORD,
        source=Source.SERVICE,
        column="verdict",
        query="verdicts",
        stats="verdict",
        first_cursors=True,
    ),
    QueryField(
        key=INGEST + "file_hashes",
        kind=Kind.KEYWORDS,
        source=Source.DERIVED,
        column="file_hashes",
        query="file_hashes",
        release=2,
    ),
    # Free text: EventQuery.text, a word-prefix match.
    QueryField(
        key=INGEST + "search_words",
        kind=Kind.WORDS,
        source=Source.DERIVED,
        column="search_text",
        query="text",
        release=1,
    ),
    # The record time: the order of every page, and EventQuery.since / until.
    QueryField(
        key=INGEST + "time_us",
        kind=Kind.LONG,
        source=Source.SERVICE,
        column="timestamp",
        release=1,
    ),
    # The record time by day: `stats(by="day")`, and what lets Elasticsearch skip the daily
    # indices outside a time range.
    QueryField(
        key=INGEST + "timestamp",
        kind=Kind.DATE,
        source=Source.SERVICE,
        column="timestamp",
        stats="day",
    ),
)

# The views the backends and EventQuery use.
BY_KEY: Final = {f.key: f for f in FIELDS}
STREAM: Final = BY_KEY[INGEST + "stream"]
VERDICT: Final = BY_KEY[INGEST + "verdict"]
FILE_HASHES: Final = BY_KEY[INGEST + "file_hashes"]
WORDS: Final = BY_KEY[INGEST + "search_words"]
TIME: Final = BY_KEY[INGEST + "time_us"]
DAY: Final = BY_KEY[INGEST + "timestamp"]
# The record fields copied (key -> longest value copied).
COPIED: Final = {f.key: f.longest for f in FIELDS if f.longest is not None}
# EventQuery's tuple-valued filters (attribute -> field), in table order.
VALUE_FILTERS: Final = {f.query: f for f in FIELDS if f.query is not None and f.kind in EXACT}
BY_STATS: Final = {f.stats: f for f in FIELDS if f.stats is not None}
BY_GROUP: Final = {f.group: f for f in FIELDS if f.group is not None}
