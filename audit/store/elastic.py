"""The Elasticsearch event store: daily per-tenant indices under one composable template.

Promises:

* **Durable on ack.** `write` returns after Elasticsearch acknowledged every document, and
  the indices use `index.translog.durability: request`: the translog is fsynced before a
  bulk request is acknowledged, so an acknowledged record survives a node crash.
* **Searchable within 1 s** (`refresh_interval`) for everyone; at once for this store's own
  reads: after a write it refreshes the tenant's indices before its next read of that
  tenant, so `get`/`scan`/`count` see what this process wrote (read-your-writes).
* **Create-only.** Documents are written with `op_type: create`; a 409 means the id exists
  and the stored document is left untouched. Ids are unique within a daily index: a caller
  that reuses a doc id for a record of another day gets a second document.

Layout: index `<prefix>-<tenant>-<YYYY.MM.DD>` (record time, UTC), `_id` = doc id, `_source`
= the record's flat dotted keys as received plus `ffaudit.ingest.*` annotations. The record
reads back as `_source` minus those keys. The annotations include the service-assigned
tenant, stream, sequence and hash, which every query filters and sorts on: a producer's own
`ffaudit.tenant` is never trusted for isolation. A record whose fields cannot be indexed (a
value of the wrong type, a key under `ffaudit.ingest`) is still stored, whole and
unindexed, under `ffaudit.ingest.record`, beside copies of its query fields that are valid
strings (as the SQL store copies them into columns), so queries still find it.

Queries (`search`, `stats`, `by_job`) filter with `terms`/`range`/`prefix` in a bool filter
and page with `search_after`. Annotations exist for them: `ffaudit.ingest.time_us`, the
record time in epoch microseconds (`@timestamp` is a millisecond `date`, too coarse to order
records as the SQL store does, and absent from unindexed documents),
`ffaudit.ingest.search_words`, the record's non-PII words, `ffaudit.ingest.file_hashes`, the
digests of the files it names (audit.store.query), and `ffaudit.ingest.query_fields`, the
version of this set a document carries (QUERY_FIELDS). Indices made before these fields
existed get their mappings on the first write (`ensure_templates`); the documents stored in
them get the values from `backfill()`, run once after upgrading: until then they sort last
(no time_us) and match no time range, free text or file hash they lack.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache, partial
from typing import Any, TypeVar

import orjson
from elasticsearch import ApiError, AsyncElasticsearch
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch import ConnectionTimeout as ESConnectionTimeout
from elasticsearch.serializer import OrjsonSerializer

from audit.errors import ConflictError, StoreUnavailableError, UsageError
from audit.store.archive import Archiver, ArchiveSettings
from audit.store.elastic_archive import SnapshotArchiver
from audit.store.fields import (
    BY_GROUP,
    BY_STATS,
    COPIED,
    DAY,
    FIELDS,
    FILE_HASHES,
    STREAM,
    TIME,
    VALUE_FILTERS,
    VERDICT,
    WORDS,
    Kind,
)
from audit.store.fields import INGEST as INGEST  # re-exported: the annotations' prefix
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
    file_hashes_of,
    from_micros,
    make_page,
    searchable_words,
    to_micros,
)

T = TypeVar("T")
_RECORD = INGEST + "record"
_BULK_REPLY = "items.*.status,items.*.error"
_INDEX_NAMES_KEPT = 4096  # (tenant, day) index names remembered by a store
_TENANT = INGEST + "tenant"
_SEQUENCE = INGEST + "sequence"
_DOC_ID = INGEST + "doc_id"
# The query fields the store writes and reads itself (the rest only through the table).
_STREAM = STREAM.key
_VERDICT = VERDICT.key
_TIMESTAMP = DAY.key
_TIME_US = TIME.key
_WORDS = WORDS.key
_FILE_HASHES = FILE_HASHES.key
_QUERY_FIELDS = INGEST + "query_fields"
_ACTION = VALUE_FILTERS["actions"].key
# Grouped on by `error_types` (mapped below as free text: an oversized value unindexed).
_ERROR_TYPE = "error.type"
_TRACE_LONGEST = COPIED["trace.id"]
# The version of the query fields `to_document` writes, the table's latest `release`: 1 was
# time_us and search_words (documents from before have no version), 2 added file_hashes.
# `backfill()` brings every document below it up to date.
QUERY_FIELDS = max(f.release for f in FIELDS)
# Tenant ids are slugs; anything else could not be part of an index name.
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TRANSIENT = (ESConnectionError, ESConnectionTimeout)

_KEYWORD: dict[str, Any] = {"type": "keyword"}
# Producer-chosen text: an oversized value stays in _source instead of failing the write.
_FREE: dict[str, Any] = {"type": "keyword", "ignore_above": 1024}
_LONG: dict[str, Any] = {"type": "long"}
_DATE: dict[str, Any] = {"type": "date"}
_INTEGER: dict[str, Any] = {"type": "integer"}
# How each kind of query field is mapped (a keyword takes an array as it takes one value).
_KINDS: dict[Kind, Mapping[str, Any]] = {
    Kind.KEYWORD: _KEYWORD,
    Kind.FREE: _FREE,
    Kind.KEYWORDS: _KEYWORD,
    Kind.WORDS: _KEYWORD,
    Kind.LONG: _LONG,
    Kind.DATE: _DATE,
}
# EventQuery attribute -> the indexed field its values are matched against (`terms`).
_FILTERS = {name: field.key for name, field in VALUE_FILTERS.items()}
# StatsBy -> the indexed field `stats` groups on; a date groups by UTC day.
_STATS_FIELDS = {name: f.key for name, f in BY_STATS.items() if f.kind is not Kind.DATE}
_STATS_PAGE = 1000
# A point in time lives this long after the last request that named it (each page renews it).
_PIT_KEEP_ALIVE = "2m"
# GroupField -> the indexed field `count_by` groups on.
_GROUP_FIELDS = {name: f.key for name, f in BY_GROUP.items()}

# Everything else mapped, by dotted key: stored fields no query selects by.
_UNQUERIED: dict[str, Mapping[str, Any]] = {
    "@timestamp": _DATE,
    "event.id": _KEYWORD,
    "event.kind": _KEYWORD,
    "event.category": _KEYWORD,
    "event.type": _KEYWORD,
    "event.dataset": _KEYWORD,
    "event.hash": _KEYWORD,
    "event.sequence": _LONG,
    "ffaudit.schema": _INTEGER,
    "ffaudit.stream": _KEYWORD,
    "ffaudit.tenant": _KEYWORD,
    "ffaudit.prev": _KEYWORD,
    "ffaudit.key_id": _KEYWORD,
    "ffaudit.checkpoint.first_sequence": _LONG,
    "ffaudit.checkpoint.records": _LONG,
    "ffaudit.checkpoint.closing": {"type": "boolean"},
    "ffaudit.checkpoint.signer": _KEYWORD,
    # One field however many keys producers invent: the mapping cannot explode.
    "ffaudit.metadata": {"type": "flattened", "ignore_above": 1024},
    INGEST + "failure": _KEYWORD,
    INGEST + "received_at": _DATE,
    _TENANT: _KEYWORD,
    _SEQUENCE: _LONG,
    _DOC_ID: _KEYWORD,
    INGEST + "event_hash": _KEYWORD,
    _RECORD: {"type": "object", "enabled": False},
    "file.hash.sha256": _KEYWORD,
    "error.type": _FREE,
    "error.message": {"type": "text", "fields": {"keyword": _FREE}},
}


def _properties(fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mapping properties from dotted keys: `a.b` is `b` among the properties of `a`."""
    properties: dict[str, Any] = {}
    for key, spec in fields.items():
        *parents, leaf = key.split(".")
        node = properties
        for parent in parents:
            node = node.setdefault(parent, {"properties": {}})["properties"]
        node[leaf] = dict(spec)
    return properties


MAPPINGS: dict[str, Any] = {
    # Unknown fields stay in _source but add nothing to the mapping.
    "dynamic": False,
    "properties": _properties(
        {
            **_UNQUERIED,
            **{f.key: _KINDS[f.kind] for f in FIELDS},
            _QUERY_FIELDS: _INTEGER,
        }
    ),
}
# The fields added after the first release, put on indices the older template made.
QUERY_MAPPINGS: dict[str, Any] = _properties(
    {**{f.key: _KINDS[f.kind] for f in FIELDS if f.release}, _QUERY_FIELDS: _INTEGER}
)


def index_settings(replicas: int) -> dict[str, Any]:
    """`replicas` 0 (the default) lets Elasticsearch keep one replica whenever a second data
    node can hold it and none on a single node, which stays green (auto_expand_replicas
    0-1); a positive count is fixed. Writes keep the default wait_for_active_shards (the
    primary): an acknowledged write is on every in-sync copy (docs/capacity.md)."""
    return {
        "index": {
            "number_of_shards": 1,
            "number_of_replicas": replicas,
            "auto_expand_replicas": "0-1" if replicas == 0 else "false",
            "refresh_interval": "1s",
            "translog": {"durability": "request"},
        }
    }


def elasticsearch_hosts(url: str) -> list[str]:
    """`url`, or several separated by commas (nodes of one cluster), as the client's hosts."""
    hosts = [part.strip() for part in url.split(",") if part.strip()]
    if not hosts or not all(h.startswith(("http://", "https://")) for h in hosts):
        raise UsageError(
            "elasticsearch_url: one http(s) URL, or several separated by commas "
            "(nodes of one cluster)"
        )
    return hosts


class ElasticEventStore:
    """`EventStore` on Elasticsearch 8 (official async client)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ffaudit-events",
        page_size: int = 1000,
        replicas: int = 0,
        retry_budget_s: float = 30.0,
        request_timeout_s: float = 30.0,
        bulk_chunk: int = 1000,
    ) -> None:
        if page_size < 1 or bulk_chunk < 1:
            raise UsageError("page_size and bulk_chunk must be at least 1")
        hosts = elasticsearch_hosts(url)
        # Retries are ours (bounded by retry_budget_s), not the client's, but for one kind:
        # given several nodes, a request whose node cannot be reached goes to the next one
        # at once (the client marks the node dead for a while), so losing the node a
        # replica happened to talk to refuses nothing. Statuses are never retried there.
        # orjson for responses; bulk bodies are serialised by write() itself. The stdlib
        # json serializer cost as much CPU as the rest of ingest together.
        fast = OrjsonSerializer()
        self.client = AsyncElasticsearch(
            hosts,
            request_timeout=request_timeout_s,
            max_retries=len(hosts) - 1,
            retry_on_status=(),
            retry_on_timeout=False,
            serializers={"application/json": fast, "application/vnd.elasticsearch+json": fast},
        )
        self.prefix = prefix
        self.page_size = page_size
        self._url = url
        self._request_timeout_s = request_timeout_s
        self.replicas = replicas
        self.retry_budget_s = retry_budget_s
        self.bulk_chunk = bulk_chunk
        self._templates_ready = False
        self._templates_lock = asyncio.Lock()
        self._dirty: set[str] = set()  # tenants written since this store last refreshed them
        self._indices: dict[tuple[str, int, int, int], str] = {}  # (tenant, day) -> index
        self._refreshing: dict[str, asyncio.Lock] = {}  # per tenant: one refresh at a time

    # -- naming -----------------------------------------------------------------------------

    def index_for(self, tenant: str, timestamp: datetime) -> str:
        if timestamp.tzinfo is None:
            raise UsageError("event timestamps must be timezone-aware")
        day = timestamp.astimezone(UTC)
        key = (tenant, day.year, day.month, day.day)
        # Remembered: every written record names its index, and strftime is not cheap.
        name = self._indices.get(key)
        if name is None:
            if not _TENANT_RE.fullmatch(tenant):
                raise UsageError(f"tenant id {tenant!r} cannot name an index (lowercase slug)")
            if len(self._indices) >= _INDEX_NAMES_KEPT:
                self._indices.clear()
            name = self._indices[key] = f"{self.prefix}-{tenant}-{day:%Y.%m.%d}"
        return name

    def _pattern(self, tenant: str) -> str:
        return f"{self.prefix}-{tenant}-*"

    def _owns(self, tenant: str, index: str) -> bool:
        # The pattern for "acme" also matches "acme-eu"'s indices; the exact name does not.
        return (
            re.fullmatch(re.escape(f"{self.prefix}-{tenant}-") + r"\d{4}\.\d{2}\.\d{2}", index)
            is not None
        )

    # -- retries ----------------------------------------------------------------------------

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, retried with exponential backoff on 429, 5xx and connection errors."""
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.05
        while True:
            try:
                return await call()
            except ApiError as exc:
                if exc.status_code != 429 and exc.status_code < 500:
                    raise StoreUnavailableError(f"elasticsearch {what}: {exc}") from exc
                error: Exception = exc
            except _TRANSIENT as exc:
                error = exc
            if time.monotonic() + delay > deadline:
                raise StoreUnavailableError(
                    f"elasticsearch {what} failed for {self.retry_budget_s:g} s: {error}"
                ) from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def ensure_templates(self) -> None:
        """Install (idempotently) the component and index templates for `<prefix>-*`."""
        if self._templates_ready:
            return
        async with self._templates_lock:
            if self._templates_ready:
                return
            settings, mappings = f"{self.prefix}-settings", f"{self.prefix}-mappings"
            await self._retrying(
                "template",
                lambda: self.client.cluster.put_component_template(
                    name=settings, template={"settings": index_settings(self.replicas)}
                ),
            )
            await self._retrying(
                "template",
                lambda: self.client.cluster.put_component_template(
                    name=mappings, template={"mappings": MAPPINGS}
                ),
            )
            await self._retrying(
                "template",
                lambda: self.client.indices.put_index_template(
                    name=self.prefix,
                    index_patterns=[f"{self.prefix}-*"],
                    composed_of=[settings, mappings],
                    priority=200,
                    meta={"managed_by": "ffaudit"},
                ),
            )
            # Templates only shape new indices; today's index may predate the query fields,
            # and with `dynamic: false` it would keep them unindexed. Adding fields is allowed
            # on live indices and a no-op when they are there.
            await self._retrying(
                "mapping",
                lambda: self.client.indices.put_mapping(
                    index=f"{self.prefix}-*",
                    properties=QUERY_MAPPINGS,
                    allow_no_indices=True,
                    ignore_unavailable=True,
                ),
            )
            self._templates_ready = True

    # -- writes -----------------------------------------------------------------------------

    async def write(self, events: Sequence[StoredEvent]) -> WriteResult:
        if not events:
            return WriteResult(written=0, existing=())
        indices = [self.index_for(event.tenant, event.timestamp) for event in events]
        await self.ensure_templates()
        self._dirty.update(event.tenant for event in events)
        docs: dict[int, dict[str, Any]] = {}
        existing: dict[int, str] = {}
        seen: set[tuple[str, str]] = set()
        for i, event in enumerate(events):
            # A doc id repeated inside one batch is written once; its repeats are "existing".
            if (event.tenant, event.doc_id) in seen:
                existing[i] = event.doc_id
            else:
                seen.add((event.tenant, event.doc_id))
                docs[i] = to_document(event)
        written = 0
        unindexed: set[int] = set()
        todo = sorted(docs)
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.05
        while todo:
            retry: list[int] = []
            transient = False
            for start in range(0, len(todo), self.bulk_chunk):
                chunk = todo[start : start + self.bulk_chunk]
                # Pre-serialised lines: the NDJSON serializer passes bytes through as-is.
                # (The client's type hints only know mappings; bytes lines are supported.)
                operations: list[Any] = []
                for i in chunk:
                    operations.append(
                        orjson.dumps({"create": {"_index": indices[i], "_id": events[i].doc_id}})
                    )
                    operations.append(orjson.dumps(docs[i]))
                # Only each item's status and error come back: a full reply is ~200 bytes
                # a record to parse, on the path every acknowledgement waits for.
                response = await self._retrying(
                    "bulk write",
                    partial(self.client.bulk, operations=operations, filter_path=_BULK_REPLY),
                )
                for i, item in zip(chunk, response["items"], strict=True):
                    result = item["create"]
                    status = result["status"]
                    if 200 <= status < 300:
                        written += 1
                    elif status == 409:
                        existing[i] = events[i].doc_id
                    elif status == 429 or status >= 500:
                        retry.append(i)
                        transient = True
                    elif status == 400 and i not in unindexed:
                        # Not indexable as it is (a value of the wrong type, say): keep
                        # it whole and unindexed rather than refuse a record.
                        unindexed.add(i)
                        docs[i] = to_document(events[i], indexed=False)
                        retry.append(i)
                    else:
                        error = result.get("error", {})
                        raise StoreUnavailableError(
                            f"elasticsearch refused {events[i].doc_id!r}: "
                            f"{error.get('type')}: {error.get('reason')}"
                        )
            todo = retry
            if transient:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(
                        f"elasticsearch kept refusing {len(todo)} documents "
                        f"for {self.retry_budget_s:g} s"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return WriteResult(written=written, existing=tuple(existing[i] for i in sorted(existing)))

    async def update_verdicts(self, tenant: str, updates: Sequence[VerdictUpdate]) -> None:
        if not updates or not _TENANT_RE.fullmatch(tenant):
            return
        operations: list[Mapping[str, Any]] = []
        for doc_id, timestamp, verdict, failure in updates:
            # The index comes from the caller's tenant: another tenant's document is
            # unreachable whatever doc id is named.
            # Two replicas may settle one record at once; the partial update is the same
            # either way, so a version conflict is simply retried.
            operations.append(
                {
                    "update": {
                        "_index": self.index_for(tenant, timestamp),
                        "_id": doc_id,
                        "retry_on_conflict": 5,
                    }
                }
            )
            operations.append({"doc": {INGEST + "verdict": verdict, INGEST + "failure": failure}})
        self._dirty.add(tenant)
        for _attempt in range(2):
            response = await self._retrying(
                "verdict update", partial(self.client.bulk, operations=operations)
            )
            pending: list[Mapping[str, Any]] = []
            for n, item in enumerate(response["items"]):
                status = item["update"]["status"]
                if status in (409, 429) or status >= 500:
                    pending += operations[2 * n : 2 * n + 2]
                elif status >= 300 and status != 404:  # 404: no such document; ignored
                    raise StoreUnavailableError(
                        f"elasticsearch refused a verdict update: {item['update'].get('error')}"
                    )
            if not pending:
                return
            operations = pending
        raise StoreUnavailableError("elasticsearch kept refusing verdict updates")

    # -- reads ------------------------------------------------------------------------------

    async def _visible(self, tenant: str, *, force: bool = False) -> None:
        """Read-your-writes: refresh the tenant's indices if this store wrote to them (or
        in any case with `force`)."""
        if force:
            self._dirty.add(tenant)
        lock = self._refreshing.setdefault(tenant, asyncio.Lock())
        if tenant not in self._dirty and not lock.locked():
            return
        # A reader arriving while another's refresh is in flight waits for it: skipping it
        # (the flag already cleared) read before the refresh and missed this store's own
        # writes; the alert scheduler's reads raced ingest's that way, and a resent record
        # looked "late", not stored.
        async with lock:
            if tenant not in self._dirty:
                return
            # Cleared first so a write racing the refresh marks the tenant again; restored
            # when the refresh fails (node down), so the next read tries again.
            self._dirty.discard(tenant)
            try:
                await self._refresh(self._pattern(tenant))
            except BaseException:
                self._dirty.add(tenant)
                raise

    async def _search(self, what: str, tenant: str, **body: Any) -> list[dict[str, Any]]:
        response = await self._retrying(
            what,
            lambda: self.client.search(
                index=self._pattern(tenant),
                ignore_unavailable=True,
                allow_no_indices=True,
                track_total_hits=False,
                allow_partial_search_results=False,
                **body,
            ),
        )
        hits: list[dict[str, Any]] = response["hits"]["hits"]
        return hits

    async def get(self, tenant: str, doc_id: str) -> StoredEvent | None:
        return (await self.get_many(tenant, [doc_id])).get(doc_id)

    async def get_many(
        self, tenant: str, doc_ids: Sequence[str], *, fresh: bool = False
    ) -> dict[str, StoredEvent]:
        found: dict[str, StoredEvent] = {}
        if not _TENANT_RE.fullmatch(tenant) or not doc_ids:
            return found
        # Fresh: refresh even when this store wrote nothing since its last refresh. Writes
        # made before a node restart, or by another replica, are otherwise invisible to
        # search for up to refresh_interval, and ingest took a resent record for missing.
        await self._visible(tenant, force=fresh)
        unique = sorted(set(doc_ids))
        for start in range(0, len(unique), self.page_size):
            chunk = unique[start : start + self.page_size]
            hits = await self._search(
                "get",
                tenant,
                query={"bool": {"filter": [{"ids": {"values": chunk}}, _term(_TENANT, tenant)]}},
                # One id can exist in two daily indices; the first stored one is the record.
                sort=[{INGEST + "received_at": "asc"}],
                size=2 * len(chunk),
            )
            for hit in hits:
                if self._owns(tenant, hit["_index"]):
                    event = _event(hit["_source"])
                    found.setdefault(event.doc_id, event)
        return found

    async def scan(
        self, tenant: str, stream: str, start: int = 1, end: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        if not _TENANT_RE.fullmatch(tenant):
            return
        await self._visible(tenant)
        query = _stream_scope(tenant, stream, start, end)
        sort = [{_SEQUENCE: "asc"}, {_DOC_ID: "asc"}]

        def fetch(after: list[Any] | None) -> asyncio.Task[list[dict[str, Any]]]:
            extra: dict[str, Any] = {} if after is None else {"search_after": after}
            return asyncio.ensure_future(
                self._search("scan", tenant, query=query, sort=sort, size=self.page_size, **extra)
            )

        # aclosing: a caller that stops early cancels the prefetch now, not when collected.
        async with contextlib.aclosing(self._prefetched(tenant, fetch)) as events:
            async for event in events:
                yield event

    async def _prefetched(
        self, tenant: str, fetch: Callable[[list[Any] | None], asyncio.Task[list[dict[str, Any]]]]
    ) -> AsyncGenerator[StoredEvent, None]:
        """The tenant's events of search_after pages from `fetch(after)`, each next page
        fetched while this one is read: Elasticsearch works on it while the caller verifies
        these records. Daily indices: `_owns` once per index name, not per hit."""
        owned: dict[str, bool] = {}
        page: asyncio.Task[list[dict[str, Any]]] | None = fetch(None)
        try:
            while page is not None:
                hits = await page
                page = fetch(hits[-1]["sort"]) if len(hits) >= self.page_size else None
                for hit in hits:
                    index = hit["_index"]
                    own = owned.get(index)
                    if own is None:
                        own = owned[index] = self._owns(tenant, index)
                    if own:
                        yield _event(hit["_source"])
        finally:
            if page is not None:
                _discard(page)

    async def snapshot(
        self, tenant: str, stream: str, start: int = 1, end: int | None = None, *, parts: int
    ) -> StreamSnapshot:
        # A point in time, not sliced scroll: a slice of a scroll is a hash of doc ids,
        # records from anywhere in the chain, where verification needs contiguous runs of
        # sequences. Every worker pages its own sequence range with search_after in the one
        # point in time, so all of them, and the counts below, read the same documents.
        if not _TENANT_RE.fullmatch(tenant):
            return StreamSnapshot((), None)
        await self._visible(tenant)
        opened = await self._retrying(
            "open point in time",
            partial(
                self.client.open_point_in_time,
                index=self._pattern(tenant),
                keep_alive=_PIT_KEEP_ALIVE,
                ignore_unavailable=True,
            ),
        )
        pit: str = opened["id"]
        snapshot = StreamSnapshot((), None, pit)
        try:
            ranges = await self._pit_ranges(pit, tenant, stream, start, end, parts)
        except BaseException:
            await self.release(snapshot)
            raise
        reader = ElasticSnapshotReader(
            self._url, self.prefix, self.page_size, self._request_timeout_s, pit, tenant, stream
        )
        return StreamSnapshot(tuple(ranges), reader, pit)

    async def _pit_ranges(
        self, pit: str, tenant: str, stream: str, start: int, end: int | None, parts: int
    ) -> list[SequenceRange]:
        scope = _stream_scope(tenant, stream, start, end)
        span = await self._pit_search(
            "snapshot span",
            pit,
            query=scope,
            size=0,
            aggs={"low": {"min": {"field": _SEQUENCE}}, "high": {"max": {"field": _SEQUENCE}}},
        )
        # No index of the tenant yet: a point in time over nothing, without aggregations.
        aggs = span.get("aggregations", {})
        low, high = (aggs.get(name, {}).get("value") for name in ("low", "high"))
        if low is None or high is None:
            return []
        # Sequences stay below 2**53: exact as the double the aggregation answers.
        cuts = split_sequences(int(low), int(high), parts)
        chained = {"bool": {**scope["bool"], "must_not": [_term(_VERDICT, Verdict.REJECTED)]}}
        counted = await self._pit_search(
            "snapshot counts",
            pit,
            query=chained,
            size=0,
            aggs={
                "parts": {
                    "range": {
                        "field": _SEQUENCE,
                        "ranges": [{"from": first, "to": last + 1} for first, last in cuts],
                    }
                }
            },
        )
        buckets = counted["aggregations"]["parts"]["buckets"]
        return [
            SequenceRange(first, last, int(bucket["doc_count"]))
            for (first, last), bucket in zip(cuts, buckets, strict=True)
        ]

    async def release(self, snapshot: StreamSnapshot) -> None:
        if snapshot.handle is None:
            return
        # An expired or unknown point in time answers 404: nothing left to free.
        with contextlib.suppress(ApiError, *_TRANSIENT):
            await self.client.options(ignore_status=404).close_point_in_time(id=snapshot.handle)

    async def _pit_search(self, what: str, pit: str, **body: Any) -> dict[str, Any]:
        response = await self._retrying(
            what,
            lambda: self.client.search(
                pit={"id": pit, "keep_alive": _PIT_KEEP_ALIVE},
                track_total_hits=False,
                allow_partial_search_results=False,
                **body,
            ),
        )
        _whole(response, what)
        found: dict[str, Any] = response.body
        return found

    async def scan_snapshot(
        self, pit: str, tenant: str, stream: str, first: int, last: int
    ) -> AsyncIterator[StoredEvent]:
        """`scan` of `first`..`last` in the point in time `pit` (ElasticSnapshotReader)."""
        query = _stream_scope(tenant, stream, first, last)
        sort = [{_SEQUENCE: "asc"}, {_DOC_ID: "asc"}]

        async def page(after: list[Any] | None) -> list[dict[str, Any]]:
            extra: dict[str, Any] = {} if after is None else {"search_after": after}
            response = await self._pit_search(
                "snapshot scan", pit, query=query, sort=sort, size=self.page_size, **extra
            )
            hits: list[dict[str, Any]] = response["hits"]["hits"]
            return hits

        def fetch(after: list[Any] | None) -> asyncio.Task[list[dict[str, Any]]]:
            return asyncio.ensure_future(page(after))

        async with contextlib.aclosing(self._prefetched(tenant, fetch)) as events:
            async for event in events:
                yield event

    async def count(self, tenant: str, stream: str | None = None) -> int:
        if not _TENANT_RE.fullmatch(tenant):
            return 0
        await self._visible(tenant)
        filters = [_term(_TENANT, tenant)]
        if stream is not None:
            filters.append(_term(_STREAM, stream))
        response = await self._retrying(
            "count",
            lambda: self.client.count(
                index=self._pattern(tenant),
                query={"bool": {"filter": filters}},
                ignore_unavailable=True,
                allow_no_indices=True,
            ),
        )
        _whole(response, "count")
        return int(response["count"])

    # -- queries ----------------------------------------------------------------------------

    async def search(
        self, query: EventQuery, *, limit: int, cursor: str | None = None
    ) -> EventPage:
        check_limit(limit)
        after = None if cursor is None else list(decode_cursor(query, cursor))
        if not _TENANT_RE.fullmatch(query.tenant):
            return EventPage(events=[], next_cursor=None)
        await self._visible(query.tenant)
        order = query.order
        sort: list[dict[str, Any]] = [
            # Documents not yet backfilled have no time_us: they sort last in either order.
            {_TIME_US: {"order": order, "missing": "_last", "unmapped_type": "long"}},
            {_STREAM: order},
            {_SEQUENCE: order},
            {_DOC_ID: order},
        ]
        scope = self._scope(query.tenant, *_filters(query))
        hits = await self._sorted("search", query.tenant, scope, sort, limit + 1, after)
        # The cursor carries Elasticsearch's own sort values, which search_after expects back.
        return make_page(query, [(_event(hit["_source"]), hit["sort"]) for hit in hits], limit)

    async def count_by(
        self, query: EventQuery, *, field: GroupField, more_than: int = 0
    ) -> dict[str, int]:
        check_count_by(field, more_than)
        if not _TENANT_RE.fullmatch(query.tenant):
            return {}
        await self._visible(query.tenant)
        # No missing bucket: records without the field belong to no group. The threshold is
        # applied here: this distribution has no bucket_selector (no scripting module).
        source = {"terms": {"field": _GROUP_FIELDS[field]}}
        counts = await self._composite("count by", query, source)
        return {key: n for key, n in counts.items() if n > more_than}

    async def stats(self, query: EventQuery, *, by: StatsBy) -> dict[str, int]:
        check_stats_by(by)
        if not _TENANT_RE.fullmatch(query.tenant):
            return {}
        await self._visible(query.tenant)
        return await self._composite("stats", query, _stats_source(by))

    async def facets(
        self, query: EventQuery, *, by: Sequence[StatsBy]
    ) -> dict[StatsBy, dict[str, int]]:
        for name in by:
            check_stats_by(name)
        wanted = list(dict.fromkeys(by))
        if not _TENANT_RE.fullmatch(query.tenant) or not wanted:
            return {name: {} for name in wanted}
        await self._visible(query.tenant)
        counts = await self._composites(
            "facets", query, {name: _stats_source(name) for name in wanted}
        )
        return {name: counts[name] for name in wanted}

    async def time_span(self, query: EventQuery) -> tuple[datetime, datetime] | None:
        if not _TENANT_RE.fullmatch(query.tenant):
            return None
        await self._visible(query.tenant)
        # On time_us, not the millisecond date: the span's ends are records' own times.
        response = await self._retrying(
            "time span",
            partial(
                self.client.search,
                index=self._pattern(query.tenant),
                query=self._scope(query.tenant, *_filters(query)),
                size=0,
                aggs={"first": {"min": {"field": _TIME_US}}, "last": {"max": {"field": _TIME_US}}},
                track_total_hits=False,
                allow_partial_search_results=False,
                ignore_unavailable=True,
                allow_no_indices=True,
            ),
        )
        aggs: dict[str, Any] = response.body.get("aggregations", {})
        first = aggs.get("first", {}).get("value")
        last = aggs.get("last", {}).get("value")
        if first is None or last is None:
            return None
        # Epoch microseconds stay below 2**53: exact as the double the aggregation answers.
        return from_micros(int(first)), from_micros(int(last))

    async def error_types(self, query: EventQuery) -> list[ErrorTypeGroup]:
        if not _TENANT_RE.fullmatch(query.tenant):
            return []
        await self._visible(query.tenant)
        order = "desc"
        latest: dict[str, Any] = {
            "top_hits": {
                "size": 1,
                "sort": [
                    {_TIME_US: {"order": order, "missing": "_last", "unmapped_type": "long"}},
                    {_STREAM: order},
                    {_SEQUENCE: order},
                    {_DOC_ID: order},
                ],
                "_source": {"includes": ["trace.id"]},
            }
        }
        per_day: dict[str, Any] = {
            "date_histogram": {
                "field": _TIMESTAMP,
                "calendar_interval": "1d",
                "time_zone": "UTC",
                "format": "yyyy-MM-dd",
                "min_doc_count": 1,
            }
        }
        source = {"terms": {"field": _ERROR_TYPE, "missing_bucket": True}}
        groups: list[ErrorTypeGroup] = []
        async for bucket in self._buckets(
            "error types", query, source, {"days": per_day, "latest": latest}
        ):
            key = bucket["key"]["key"]
            hits = bucket["latest"]["hits"]["hits"]
            job = hits[0]["_source"].get("trace.id") if hits else None
            groups.append(
                ErrorTypeGroup(
                    error_type="" if key is None else str(key),
                    count=int(bucket["doc_count"]),
                    per_day={
                        day["key_as_string"]: int(day["doc_count"])
                        for day in bucket["days"]["buckets"]
                        if day["doc_count"]
                    },
                    # As the SQL store's copy: a job id it would keep, or none.
                    last_job=job if isinstance(job, str) and len(job) <= _TRACE_LONGEST else None,
                )
            )
        return sorted(groups, key=lambda g: (-g.count, g.error_type))

    async def histogram(self, query: EventQuery, *, interval_s: int) -> list[tuple[datetime, int]]:
        check_interval(interval_s)
        if not _TENANT_RE.fullmatch(query.tenant):
            return []
        await self._visible(query.tenant)
        # A composite date_histogram: exact counts, paged like the stats; keys are the
        # buckets' starts in epoch milliseconds (fixed intervals count from the epoch, as the
        # SQL store's integer division does).
        source = {"date_histogram": {"field": _TIMESTAMP, "fixed_interval": f"{interval_s}s"}}
        counts = await self._composite("histogram", query, source)
        return sorted(
            (datetime.fromtimestamp(int(key) // 1000, UTC), n) for key, n in counts.items() if key
        )

    async def _composite(
        self, what: str, query: EventQuery, source: dict[str, Any]
    ) -> dict[str, int]:
        return (await self._composites(what, query, {"key": source}))["key"]

    async def _composites(
        self, what: str, query: EventQuery, sources: Mapping[str, dict[str, Any]]
    ) -> dict[str, dict[str, int]]:
        """Exact counts per group of each named source, all in one search request (a
        composite aggregation each): a source with more groups than a page is paged on in
        further requests that carry only the sources not yet exhausted."""
        scope = self._scope(query.tenant, *_filters(query))
        counts: dict[str, dict[str, int]] = {name: {} for name in sources}
        after: dict[str, dict[str, Any] | None] = {name: None for name in sources}
        todo = list(sources)
        # A composite aggregation pages through every group with exact counts, where a
        # `terms` aggregation's counts are approximate once groups outnumber its size.
        while todo:
            aggs: dict[str, Any] = {}
            for name in todo:
                composite: dict[str, Any] = {
                    "size": _STATS_PAGE,
                    "sources": [{"key": sources[name]}],
                }
                if after[name] is not None:
                    composite["after"] = after[name]
                aggs[name] = {"composite": composite}
            response = await self._retrying(
                what,
                partial(
                    self.client.search,
                    index=self._pattern(query.tenant),
                    query=scope,
                    size=0,
                    aggs=aggs,
                    track_total_hits=False,
                    allow_partial_search_results=False,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                ),
            )
            # No aggregations at all when the tenant has no index yet.
            found: dict[str, Any] = response.body.get("aggregations", {})
            more = []
            for name in todo:
                groups: dict[str, Any] = found.get(name, {})
                buckets: list[dict[str, Any]] = groups.get("buckets", [])
                for bucket in buckets:
                    key = bucket["key"]["key"]
                    group = "" if key is None else str(key)
                    counts[name][group] = counts[name].get(group, 0) + int(bucket["doc_count"])
                after[name] = groups.get("after_key")
                if len(buckets) >= _STATS_PAGE and after[name] is not None:
                    more.append(name)
            todo = more
        return counts

    async def _buckets(
        self,
        what: str,
        query: EventQuery,
        source: dict[str, Any],
        sub: Mapping[str, Any],
    ) -> AsyncIterator[dict[str, Any]]:
        """Every bucket of a composite aggregation on `source` with sub-aggregations
        `sub`, page by page."""
        scope = self._scope(query.tenant, *_filters(query))
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {"size": _STATS_PAGE, "sources": [{"key": source}]}
            if after is not None:
                composite["after"] = after
            response = await self._retrying(
                what,
                partial(
                    self.client.search,
                    index=self._pattern(query.tenant),
                    query=scope,
                    size=0,
                    aggs={"groups": {"composite": composite, "aggs": dict(sub)}},
                    track_total_hits=False,
                    allow_partial_search_results=False,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                ),
            )
            groups: dict[str, Any] = response.body.get("aggregations", {}).get("groups", {})
            buckets: list[dict[str, Any]] = groups.get("buckets", [])
            for bucket in buckets:
                yield bucket
            after = groups.get("after_key")
            if len(buckets) < _STATS_PAGE or after is None:
                return

    async def by_job(self, tenant: str, job_id: str, *, limit: int = 10_000) -> list[StoredEvent]:
        check_job(tenant, job_id)
        check_limit(limit)
        if not _TENANT_RE.fullmatch(tenant):
            return []
        await self._visible(tenant)
        scope = self._scope(tenant, _term("trace.id", job_id))
        sort: list[dict[str, Any]] = [{_STREAM: "asc"}, {_SEQUENCE: "asc"}, {_DOC_ID: "asc"}]
        hits = await self._sorted("by job", tenant, scope, sort, limit, None)
        return [_event(hit["_source"]) for hit in hits]

    def _scope(self, tenant: str, *filters: Mapping[str, Any]) -> dict[str, Any]:
        """A bool query over `tenant`'s own documents only.

        Besides the tenant annotation, the index name: `<tenant>-*` also matches the indices
        of a neighbour `<tenant>-eu`, whose names have a further `-` where a day has none.
        (This is `_owns` as a query, so aggregations are scoped as well as hits.)
        """
        own = f"{self.prefix}-{tenant}-*"
        return {
            "bool": {
                "filter": [_term(_TENANT, tenant), {"wildcard": {"_index": own}}, *filters],
                "must_not": [{"wildcard": {"_index": f"{own}-*"}}],
            }
        }

    async def _sorted(
        self,
        what: str,
        tenant: str,
        query: Mapping[str, Any],
        sort: list[dict[str, Any]],
        count: int,
        after: list[Any] | None,
    ) -> list[dict[str, Any]]:
        """Up to `count` hits in `sort` order after `after`, fetched in pages of at most
        `page_size` (one search may not reach past 10 000 hits)."""
        hits: list[dict[str, Any]] = []
        while len(hits) < count:
            size = min(self.page_size, count - len(hits))
            extra: dict[str, Any] = {} if after is None else {"search_after": after}
            page = await self._search(what, tenant, query=query, sort=sort, size=size, **extra)
            hits += page
            if len(page) < size:
                break
            after = page[-1]["sort"]
        return hits

    async def backfill(self, *, batch: int = 500) -> int:
        """Give documents stored before the current query annotations existed their
        `time_us`, `search_words`, `file_hashes` and, for unindexed records, query-field
        copies: the Elasticsearch counterpart of SQL migrations 0003 and 0014, run once
        after upgrading. Resumable and idempotent (it takes documents still below
        QUERY_FIELDS until none is left; records written meanwhile are at it already).
        Returns how many documents it updated."""
        if batch < 1:
            raise UsageError("batch must be at least 1")
        await self.ensure_templates()
        pattern = f"{self.prefix}-*"
        # Our documents only: another deployment's prefix may share ours as its own prefix.
        lacking = {
            "bool": {
                "filter": [{"exists": {"field": _DOC_ID}}, {"exists": {"field": _TIMESTAMP}}],
                "must_not": [{"range": {_QUERY_FIELDS: {"gte": QUERY_FIELDS}}}],
            }
        }
        updated = 0
        while True:
            # Updated documents must drop out of the next round's search.
            await self._refresh(pattern)
            response = await self._retrying(
                "backfill",
                partial(
                    self.client.search,
                    index=pattern,
                    query=lacking,
                    size=batch,
                    track_total_hits=False,
                    allow_partial_search_results=False,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                ),
            )
            hits: list[dict[str, Any]] = response["hits"]["hits"]
            if not hits:
                return updated
            operations: list[Mapping[str, Any]] = []
            for hit in hits:
                source = hit["_source"]
                unindexed = isinstance(source.get(_RECORD), dict)
                operations.append(
                    {"update": {"_index": hit["_index"], "_id": hit["_id"], "retry_on_conflict": 5}}
                )
                operations.append({"doc": _query_fields(_event(source), unindexed=unindexed)})
            result = await self._retrying(
                "backfill", partial(self.client.bulk, operations=operations)
            )
            done = sum(1 for item in result["items"] if 200 <= item["update"]["status"] < 300)
            if done == 0:
                # Nothing moved: the same documents would come back forever.
                raise StoreUnavailableError(
                    f"elasticsearch refused the backfill: {result['items'][0]['update']}"
                )
            updated += done

    # -- retention --------------------------------------------------------------------------

    async def scan_day(self, tenant: str, day: date) -> AsyncIterator[StoredEvent]:
        if not _TENANT_RE.fullmatch(tenant):
            return
        index = self.index_for(tenant, day_bounds(day)[0])
        # Refreshed even if this process did not write it: another replica may have.
        await self._refresh_index(index)
        after: list[Any] | None = None
        while True:
            extra: dict[str, Any] = {} if after is None else {"search_after": after}
            response = await self._retrying(
                "scan day",
                partial(
                    self.client.search,
                    index=index,
                    query={"bool": {"filter": [_term(_TENANT, tenant)]}},
                    sort=[{_STREAM: "asc"}, {_SEQUENCE: "asc"}, {_DOC_ID: "asc"}],
                    size=self.page_size,
                    track_total_hits=False,
                    allow_partial_search_results=False,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                    **extra,
                ),
            )
            hits: list[dict[str, Any]] = response["hits"]["hits"]
            for hit in hits:
                yield _event(hit["_source"])
            if len(hits) < self.page_size:
                return
            after = hits[-1]["sort"]

    async def delete_day(self, tenant: str, day: date, *, expected: int) -> int:
        index = self.index_for(tenant, day_bounds(day)[0])
        if not await self._retrying("exists", partial(self.client.indices.exists, index=index)):
            if expected:
                raise ConflictError(f"index {index} is gone where {expected} records were archived")
            return 0
        # Writes are blocked before counting, so nothing can land between the count and the
        # delete; a late record for the day later makes a fresh index.
        await self._write_block(index, True)
        try:
            await self._refresh_index(index)
            response = await self._retrying("count", partial(self.client.count, index=index))
            _whole(response, "count")
            count = int(response["count"])
            if count != expected:
                raise ConflictError(
                    f"{count} records in {index} where {expected} were archived: nothing deleted"
                )
            await self._retrying("delete index", partial(self.client.indices.delete, index=index))
        except Exception:
            with contextlib.suppress(StoreUnavailableError):  # the first error is the news
                await self._write_block(index, False)
            raise
        return count

    async def _write_block(self, index: str, blocked: bool) -> None:
        await self._retrying(
            "write block",
            partial(
                self.client.indices.put_settings,
                index=index,
                settings={"index.blocks.write": blocked},
                ignore_unavailable=True,
            ),
        )

    async def _refresh_index(self, index: str) -> None:
        await self._refresh(index)

    def archiver(self, settings: ArchiveSettings) -> Archiver:
        """Snapshots of the daily indices: a day is one index, archived as it is."""
        return SnapshotArchiver(self, settings.snapshot_repository, settings.snapshot_location)

    # -- lifecycle --------------------------------------------------------------------------

    async def refresh(self, tenant: str | None = None) -> None:
        if tenant is not None:
            if _TENANT_RE.fullmatch(tenant):
                await self._visible(tenant, force=True)
            return
        dirty, self._dirty = self._dirty, set()
        try:
            await self._refresh(f"{self.prefix}-*")
        except BaseException:
            self._dirty |= dirty  # still unrefreshed (see _visible)
            raise

    async def _refresh(self, index: str) -> None:
        """Refresh, and fail unless every shard refreshed: a node that is stopping or
        recovering answers 200 with failed shards, and trusting that left records this
        store had written invisible to its next read (a resent record then looked late)."""
        response = await self._retrying(
            "refresh",
            partial(
                self.client.indices.refresh,
                index=index,
                ignore_unavailable=True,
                allow_no_indices=True,
            ),
        )
        _whole(response, "refresh")

    async def ping(self) -> bool:
        # Cluster health rather than HEAD /, which minimal distributions do not serve.
        try:
            health = await self.client.cluster.health(timeout="1s")
        except (ApiError, *_TRANSIENT):
            return False
        return bool(health["status"] in ("green", "yellow"))

    async def close(self) -> None:
        await self.client.close()


def _stream_scope(tenant: str, stream: str, start: int, end: int | None) -> dict[str, Any]:
    bounds: dict[str, int] = {"gte": start}
    if end is not None:
        bounds["lte"] = end
    return {
        "bool": {
            "filter": [
                _term(_TENANT, tenant),
                _term(_STREAM, stream),
                {"range": {_SEQUENCE: bounds}},
            ]
        }
    }


@dataclass(frozen=True, slots=True)
class ElasticSnapshotReader:
    """`SnapshotReader` of the Elasticsearch store: a point in time, read with a client of
    the reading process's own."""

    url: str
    prefix: str
    page_size: int
    request_timeout_s: float
    pit: str
    tenant: str
    stream: str

    async def scan(self, first: int, last: int) -> AsyncIterator[StoredEvent]:
        store = ElasticEventStore(
            self.url,
            prefix=self.prefix,
            page_size=self.page_size,
            request_timeout_s=self.request_timeout_s,
        )
        try:
            async for event in store.scan_snapshot(self.pit, self.tenant, self.stream, first, last):
                yield event
        finally:
            await store.close()


def _whole(response: Any, what: str) -> None:
    """A count or refresh over shards that are not all started (a node stopping, or
    recovering after a restart) is not an answer; searches say so themselves with
    `allow_partial_search_results=False`."""
    failed = response.get("_shards", {}).get("failed", 0)
    if failed:
        raise StoreUnavailableError(f"elasticsearch {what}: {failed} shard(s) unavailable")


def _stats_source(by: StatsBy) -> dict[str, Any]:
    """The composite source `stats` groups on: a term, or the UTC day of a date."""
    if BY_STATS[by].kind is Kind.DATE:
        return {
            "date_histogram": {
                "field": BY_STATS[by].key,
                "calendar_interval": "1d",
                "time_zone": "UTC",
                "format": "yyyy-MM-dd",
            }
        }
    return {"terms": {"field": _STATS_FIELDS[by], "missing_bucket": True}}


def _term(field: str, value: str) -> dict[str, Any]:
    return {"term": {field: value}}


def _filters(query: EventQuery) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    for name, field in _FILTERS.items():
        values: tuple[str, ...] = getattr(query, name)
        if values:
            filters.append({"terms": {field: list(values)}})
    since, until = query.range_us()
    bounds: dict[str, int] = {}
    if since is not None:
        bounds["gte"] = since
    if until is not None:
        bounds["lt"] = until
    if bounds:
        filters.append({"range": {_TIME_US: bounds}})
        # The same range on the millisecond `date` (widened to whole milliseconds, so it
        # selects a superset): Elasticsearch skips a shard whose dates lie outside a `date`
        # range before querying it, but never for a `long` range. With daily indices, a
        # week's query then touches a week's shards instead of every day's.
        dates = {op: value // 1000 for op, value in bounds.items()}
        if "lt" in dates:
            dates["lte"] = dates.pop("lt")
        filters.append({"range": {_TIMESTAMP: {**dates, "format": "epoch_millis"}}})
    # The words were case-folded when stored: a plain prefix on the keyword is exact.
    filters += [{"prefix": {_WORDS: word}} for word in query.words()]
    if query.excluded_actions:
        # A bool filter may hold a must_not clause of its own: the exclusion stays in the
        # non-scoring filter context, a few rare terms skipped over, not a scan.
        filters.append({"bool": {"must_not": [{"terms": {_ACTION: list(query.excluded_actions)}}]}})
    return filters


def _indexable(record: Mapping[str, Any]) -> bool:
    # Keys under ffaudit.ingest are ours: a record carrying any could spoof an annotation
    # (its tenant, say) and would not read back exactly. One C-level search over the keys
    # joined by "\0" (no JSON key that reached us as text holds one) instead of a Python
    # test per key: this runs for every record written.
    try:
        keys = "\0" + "\0".join(record) + "\0"
    except TypeError:  # a key that is not a string
        return False
    return "\0ffaudit\0" not in keys and "\0ffaudit.ingest" not in keys


@lru_cache(maxsize=64)
def _iso(moment: datetime) -> str:
    # The records of a batch share one received_at: format it once, not per record.
    return moment.astimezone(UTC).isoformat()


def to_document(event: StoredEvent, *, indexed: bool = True) -> dict[str, Any]:
    annotations = {
        _VERDICT: event.verdict,
        INGEST + "failure": event.failure,
        INGEST + "received_at": _iso(event.received_at),
        _TENANT: event.tenant,
        _STREAM: event.stream,
        _SEQUENCE: event.sequence,
        _DOC_ID: event.doc_id,
        INGEST + "event_hash": event.event_hash,
        _TIMESTAMP: event.timestamp.astimezone(UTC).isoformat(),
    }
    if indexed and _indexable(event.record):
        return {**event.record, **annotations, **_query_fields(event, unindexed=False)}
    return {**annotations, **_query_fields(event, unindexed=True), _RECORD: event.record}


def _query_fields(event: StoredEvent, *, unindexed: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        _TIME_US: to_micros(event.timestamp),
        _WORDS: searchable_words(event.record),
        _FILE_HASHES: file_hashes_of(event.record),
        _QUERY_FIELDS: QUERY_FIELDS,
    }
    if unindexed:
        # Beside the unindexed record, its valid query fields, so filters still find it; read
        # back, the record comes from ffaudit.ingest.record alone.
        for field, longest in COPIED.items():
            value = event.record.get(field)
            if isinstance(value, str) and len(value) <= longest:
                fields[field] = value
    return fields


def _discard(task: asyncio.Task[Any]) -> None:
    """Cancel a prefetch nobody will read; an error it already met is retrieved (so not
    logged as never retrieved) and dropped: no caller asked for that page."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


# Every annotation `to_document` writes beside an indexed record.
_ANNOTATIONS = (
    _VERDICT,
    INGEST + "failure",
    INGEST + "received_at",
    _TENANT,
    _STREAM,
    _SEQUENCE,
    _DOC_ID,
    INGEST + "event_hash",
    _TIMESTAMP,
    _TIME_US,
    _WORDS,
    _FILE_HASHES,
    _QUERY_FIELDS,
)
_INGEST_KEY = "\n" + INGEST


def _strip(source: Mapping[str, Any]) -> dict[str, Any]:
    """`source` without its `ffaudit.ingest.*` keys."""
    record = dict(source)
    pop = record.pop
    for key in _ANNOTATIONS:
        pop(key, None)
    # Any other key under ffaudit.ingest (one joined string searched once, not a test per
    # key; a false alarm from a key holding a newline only takes the exact path).
    if _INGEST_KEY in "\n" + "\n".join(record):
        return {k: v for k, v in source.items() if not k.startswith(INGEST)}
    return record


def _event(source: Mapping[str, Any]) -> StoredEvent:
    record = source.get(_RECORD)
    if not isinstance(record, dict):
        record = _strip(source)
    return StoredEvent(
        doc_id=source[_DOC_ID],
        tenant=source[_TENANT],
        stream=source[_STREAM],
        sequence=int(source[_SEQUENCE]),
        event_hash=source[INGEST + "event_hash"],
        timestamp=datetime.fromisoformat(source[INGEST + "timestamp"]),
        record=record,
        verdict=source[INGEST + "verdict"],
        failure=source[INGEST + "failure"],
        received_at=datetime.fromisoformat(source[INGEST + "received_at"]),
    )
