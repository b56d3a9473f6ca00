"""Queries over stored events, shared by every event store: the query, its page, the cursor
and the free-text rule.

**Free text** is a case-insensitive match on whole-word *prefixes* over non-PII text only: a
record matches when every word of `EventQuery.text` begins some word of the record's
searchable text. `searchable_words` builds that text at write time from `event.action`,
`error.type`, `error.message` and the string and number values of `ffaudit.metadata` (nested
objects and lists included) except those under a key ending in `_hash`, the sealer's
pseudonyms. Words are runs of Unicode letters and digits (so `_`, `.`, `-`, `:` separate
words), case-folded and cut to 64 characters. Integral numbers are spelt as integers (`2.0`
is `2`, as RFC 8785 writes it), other floats as Python's repr. A word of 16 or more hex
digits is never searchable, wherever it appears: that is the shape of a pseudonym (64) and
of the scrubber's `[user:…]` tokens (16), so free text cannot become a way round the
pseudonym filters; long decimal numbers and digests go with them. Only the first 1000
distinct words of a record are kept. Both stores apply this one function and this one rule
(SQL: `LIKE` on a space-separated column; Elasticsearch: `prefix` on a keyword array), so
they return the same records.

**File hashes** (`EventQuery.file_hashes`) select the records about a file, wherever a record
names it: `file.hash.sha256` (the job's target input) and, in `ffaudit.metadata`, the
`input_sha256`, `source_sha256` and `output_sha256` the engine records. `file_hashes_of`
derives that set at write time (lowercase 64-hex values only), and both stores match on it
(SQL: the digests at their fixed places in a space-separated column; Elasticsearch: `terms`
on a keyword array).

**Cursors** are opaque to callers: `v1.` and the unpadded base64url of the JSON array
`[query digest, order, time_us, stream, sequence, doc_id]`, i.e. the sort key of the last
record returned (`@timestamp` as integer microseconds since the epoch, UTC). The digest is
the first 128 bits of the SHA-256 of the query's canonical form (tenant included), so a
cursor only continues the query that issued it. It is a binding, not a secret: a caller who
forges a sort key can only move within its own query's results.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson

from audit.errors import InvalidInputError
from audit.integrity.digest import sha256_hex
from audit.integrity.record import FILE_SHA256, METADATA
from audit.store.fields import VALUE_FILTERS
from audit.store.fields import GroupField as GroupField  # re-exported: the query vocabulary
from audit.store.fields import StatsBy as StatsBy

if TYPE_CHECKING:
    from audit.store.protocol import StoredEvent

Order = Literal["asc", "desc"]
# What `EventStore.stats` and `count_by` group on: the counted fields of audit.store.fields.
STATS_BY: tuple[str, ...] = get_args(StatsBy)
GROUP_FIELDS: tuple[str, ...] = get_args(GroupField)
# (@timestamp as epoch microseconds, stream, sequence, doc_id): the order of every page.
SortKey = tuple[int, str, int, str]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Enough for "every active pseudonym key times a handful of ids"; bounds query size.
MAX_VALUES = 1000
MAX_QUERY_WORDS = 32
WORD_CHARS = 64
MAX_RECORD_WORDS = 1000
_WORD = re.compile(r"[^\W_]+")
# What the OpenAPI document promises for free text: 1 to MAX_QUERY_WORDS words (runs of
# letters and digits), whatever separates them. Unambiguous (a word is always followed by
# separators or the end), so no regex engine backtracks on it.
TEXT_PATTERN = rf"^[\W_]*(?:[^\W_]+(?:[\W_]+|$)){{1,{MAX_QUERY_WORDS}}}$"
TEXT_SCHEMA: dict[str, Any] = {"pattern": TEXT_PATTERN}
_PSEUDONYM_LIKE = re.compile(r"[0-9a-f]{16,}")
_SEARCHED_FIELDS = ("event.action", "error.type", "error.message")
_CURSOR_VERSION = "v1."
# The tuple-valued filters (audit.store.fields), each an attribute of EventQuery.
_VALUE_FIELDS = tuple(VALUE_FILTERS)
# Those added after cursors were first issued: left out of the digest when unused, so a
# cursor issued before the upgrade still continues its query.
_LATER_FIELDS = tuple(name for name, field in VALUE_FILTERS.items() if not field.first_cursors)
_MAX_CURSOR = 4096
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Where the engine records the files of a job in `ffaudit.metadata` (engine.jobs.runner).
FILE_HASH_KEYS = ("input_sha256", "source_sha256", "output_sha256")
MAX_FILE_HASHES = 1 + len(FILE_HASH_KEYS)  # file.hash.sha256 and those


@dataclass(frozen=True, slots=True)
class EventQuery:
    """What `EventStore.search` and `stats` select. Empty tuples do not filter; values in one
    tuple are alternatives (IN), fields are combined with AND. Invalid values raise
    InvalidInputError on construction."""

    tenant: str  # always required: every read is tenant-scoped
    actor_hashes: tuple[str, ...] = ()  # user.hash, under every active pseudonym key
    actions: tuple[str, ...] = ()  # event.action
    outcomes: tuple[str, ...] = ()  # event.outcome
    session_hashes: tuple[str, ...] = ()  # ffaudit.session.hash
    target_hashes: tuple[str, ...] = ()  # ffaudit.target.hash
    job_ids: tuple[str, ...] = ()  # trace.id
    streams: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()  # ok | pending | broken | rejected
    client_ip_hashes: tuple[str, ...] = ()  # ffaudit.client.ip_hash, under every key
    file_hashes: tuple[str, ...] = ()  # SHA-256 of an input or output file: file_hashes_of
    since: datetime | None = None  # @timestamp >= since
    until: datetime | None = None  # @timestamp < until
    text: str | None = None  # free text, module docstring
    order: Order = "desc"  # by (@timestamp, stream, sequence, doc_id)
    # event.action values left out (records without an action stay in): the console hides
    # the log of the logs' reads with it. A short exclusion, where listing every other
    # action made each query match a disjunction of dozens of terms over most records.
    excluded_actions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant:
            raise InvalidInputError("a query needs its tenant")
        for name in (*_VALUE_FIELDS, "excluded_actions"):
            values = getattr(self, name)
            # A bare string would silently become a tuple of its characters.
            if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
                raise InvalidInputError(f"{name} must be a tuple of strings")
            if len(values) > MAX_VALUES:
                raise InvalidInputError(f"{name}: at most {MAX_VALUES} values")
        # Digests as file_hashes_of keeps them: any other spelling would match nothing.
        if not all(_SHA256.fullmatch(v) for v in self.file_hashes):
            raise InvalidInputError("file_hashes: SHA-256 digests in lowercase hex only")
        for name in ("since", "until"):
            when = getattr(self, name)
            if when is not None and (not isinstance(when, datetime) or when.tzinfo is None):
                raise InvalidInputError(f"{name} must be a timezone-aware datetime")
        if self.order not in ("asc", "desc"):
            raise InvalidInputError("order must be 'asc' or 'desc'")
        if self.text is not None:
            query_words(self.text)

    def words(self) -> tuple[str, ...]:
        """The free-text words, each to be a prefix of some searchable word of a match."""
        return () if self.text is None else query_words(self.text)

    def range_us(self) -> tuple[int | None, int | None]:
        """(since, until) as epoch microseconds."""
        return (
            None if self.since is None else to_micros(self.since),
            None if self.until is None else to_micros(self.until),
        )

    def digest(self) -> str:
        """What a cursor is bound to: equal for queries that select the same records in the
        same order (value order and repeats inside a filter do not count)."""
        since, until = self.range_us()
        values = {name: sorted(set(getattr(self, name))) for name in _VALUE_FIELDS}
        for name in _LATER_FIELDS:
            if not values[name]:
                del values[name]
        if self.excluded_actions:  # left out when unused: earlier cursors still continue
            values["excluded_actions"] = sorted(set(self.excluded_actions))
        canonical = {
            "v": 1,
            **values,
            "tenant": self.tenant,
            "since": since,
            "until": until,
            "words": sorted(set(self.words())),
            "order": self.order,
        }
        return sha256_hex(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))[:32]


@dataclass(frozen=True, slots=True)
class ErrorTypeGroup:
    """`EventStore.error_types`: the records of one error.type ("" for records without
    one), per UTC day, and the job (trace.id) of the group's latest record."""

    error_type: str
    count: int
    per_day: dict[str, int]  # YYYY-MM-DD -> records
    last_job: str | None


# error.type as the stores group on it: a string of at most this many characters (longer
# or other values count as no error type; Elasticsearch leaves such a value unindexed).
ERROR_TYPE_LONGEST = 1024


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_cursor: str | None  # opaque; None when no more


# -- time ------------------------------------------------------------------------------------


def to_micros(when: datetime) -> int:
    return (when - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    try:
        return EPOCH + micros * _MICROSECOND
    except OverflowError as exc:
        raise InvalidInputError("cursor time out of range") from exc


def sort_key(event: StoredEvent) -> SortKey:
    return (to_micros(event.timestamp), event.stream, event.sequence, event.doc_id)


# -- validation ------------------------------------------------------------------------------


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError("limit must be an integer of at least 1")


def check_stats_by(by: str) -> None:
    if by not in STATS_BY:
        raise InvalidInputError(f"stats by {by!r}: one of {', '.join(STATS_BY)}")


def check_count_by(field: str, more_than: int) -> None:
    if field not in GROUP_FIELDS:
        raise InvalidInputError(f"count by {field!r}: one of {', '.join(GROUP_FIELDS)}")
    if isinstance(more_than, bool) or not isinstance(more_than, int) or more_than < 0:
        raise InvalidInputError("more_than must be an integer of at least 0")


def check_job(tenant: str, job_id: str) -> None:
    if not isinstance(tenant, str) or not tenant:
        raise InvalidInputError("a query needs its tenant")
    if not isinstance(job_id, str):
        raise InvalidInputError("job_id must be a string")


# -- cursors ---------------------------------------------------------------------------------


def encode_cursor(query: EventQuery, key: Sequence[Any]) -> str:
    time_us, stream, sequence, doc_id = key
    payload = orjson.dumps([query.digest(), query.order, time_us, stream, sequence, doc_id])
    return _CURSOR_VERSION + base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def decode_cursor(query: EventQuery, cursor: str) -> SortKey:
    """The sort key a cursor continues after; InvalidInputError unless it is one this query
    issued (same tenant, filters and order)."""
    if (
        not isinstance(cursor, str)
        or len(cursor) > _MAX_CURSOR
        or not cursor.startswith(_CURSOR_VERSION)
    ):
        raise InvalidInputError("malformed cursor")
    body = cursor[len(_CURSOR_VERSION) :]
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise InvalidInputError("malformed cursor") from exc
    if not (
        isinstance(payload, list)
        and len(payload) == 6
        and all(isinstance(payload[i], str) for i in (0, 1, 3, 5))
        and all(_is_int(payload[i]) for i in (2, 4))
    ):
        raise InvalidInputError("malformed cursor")
    digest, order, time_us, stream, sequence, doc_id = payload
    if digest != query.digest() or order != query.order:
        raise InvalidInputError("the cursor belongs to another query")
    return (time_us, stream, sequence, doc_id)


def _is_int(value: object) -> bool:
    # Sort values are 64-bit in Elasticsearch: anything wider is no cursor of ours.
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def make_page(
    query: EventQuery, found: Sequence[tuple[StoredEvent, Sequence[Any]]], limit: int
) -> EventPage:
    """A page from up to `limit + 1` (event, sort key) pairs in order: the extra one only
    says that more follow, so the last page never needs a request of its own."""
    page = found[:limit]
    more = len(found) > limit and bool(page)
    return EventPage(
        events=[event for event, _key in page],
        next_cursor=encode_cursor(query, page[-1][1]) if more else None,
    )


# -- free text -------------------------------------------------------------------------------


def _words(text: str) -> Iterable[str]:
    for word in _WORD.findall(text.casefold()):
        yield word[:WORD_CHARS]


def query_words(text: str) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise InvalidInputError("text must be a string")
    words = tuple(dict.fromkeys(_words(text)))
    if not words:
        raise InvalidInputError("text has no words to search for")
    if len(words) > MAX_QUERY_WORDS:
        raise InvalidInputError(f"text: at most {MAX_QUERY_WORDS} words")
    return words


def searchable_words(record: Mapping[str, Any]) -> list[str]:
    """The record's searchable words, distinct, in order of appearance (metadata keys
    sorted), by the rule in the module docstring."""
    # Every word is gathered, then the list cut: the same first MAX_RECORD_WORDS distinct
    # words as stopping early, at a cost bounded by MAX_RECORD_BYTES, and per value one
    # C-level dict update instead of a Python call per word (ingest runs this per record).
    found: dict[str, None] = {}
    for field in _SEARCHED_FIELDS:
        value = record.get(field)
        if isinstance(value, str):
            found.update(_searchable(value))
    metadata = record.get(METADATA)
    if metadata is not None:
        _gather(metadata, found)
    words = list(found)
    return words[:MAX_RECORD_WORDS] if len(words) > MAX_RECORD_WORDS else words


def _gather(value: Any, found: dict[str, None]) -> None:
    if isinstance(value, str):
        found.update(_searchable(value))
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        found.update(_searchable(str(value)))
    elif isinstance(value, float):
        if math.isfinite(value):
            found.update(_searchable(_float_text(value)))
    elif isinstance(value, Mapping):
        # Keys in sorted order: the SQL store keeps records in RFC 8785 form (keys sorted),
        # and words from a record read back must be those from the record as written.
        for key in sorted(k for k in value if isinstance(k, str)):
            # `<key>_hash` holds a pseudonym: the scrubber puts PII-named values there.
            if not key.endswith("_hash"):
                _gather(value[key], found)
    elif isinstance(value, list | tuple):
        for item in value:
            _gather(item, found)


def _searchable(text: str) -> dict[str, None]:
    """The words of `text` as dict keys (to merge with one update); never mutate it."""
    # Metadata values and error messages repeat across a job's records: split each short
    # one once (long ones are rarer and would make the cache's memory unbounded).
    return _searchable_short(text) if len(text) <= 256 else _split(text)


@lru_cache(maxsize=4096)
def _searchable_short(text: str) -> dict[str, None]:
    return _split(text)


def _split(text: str) -> dict[str, None]:
    return dict.fromkeys(word for word in _words(text) if not _PSEUDONYM_LIKE.fullmatch(word))


def _float_text(value: float) -> str:
    # As RFC 8785 writes it where that matters for words: integral floats as integers (2.0
    # is stored by the SQL store as 2 and must give the same words read back); otherwise
    # repr, which reads back to the same float and so to the same text.
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def file_hashes_of(record: Mapping[str, Any]) -> list[str]:
    """The SHA-256 digests of the files `record` names (module docstring), distinct and
    sorted: what the file-hash filter matches. Values of another shape (a null source, a
    broken record's number) name no file."""
    values = [record.get(FILE_SHA256)]
    metadata = record.get(METADATA)
    if isinstance(metadata, Mapping):
        values += [metadata.get(key) for key in FILE_HASH_KEYS]
    return sorted({v for v in values if isinstance(v, str) and _SHA256.fullmatch(v)})


def search_text(record: Mapping[str, Any]) -> str:
    """The SQL store's form of `searchable_words`: each word preceded by a space, so that
    `LIKE '% word%'` is a word-prefix match."""
    return "".join(" " + word for word in searchable_words(record))


def file_hashes_text(record: Mapping[str, Any]) -> str | None:
    """The SQL store's form of `file_hashes_of`: the digests, space-separated (so the n-th
    starts at character 65 * n); None when the record names no file, so most rows store
    nothing."""
    return " ".join(file_hashes_of(record)) or None


def like_prefix(word: str) -> str:
    """A LIKE pattern (escape character `\\`) for `word` as a word prefix in `search_text`."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"% {escaped}%"
