"""The one table of query fields (audit.store.fields) and what each backend derives from it:
the derivations reproduce exactly what the backends declared by hand before the table, so
the Elasticsearch mapping, the SQL columns and cursors are unchanged."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from sqlalchemy import String, Table

from audit.models.events import Event
from audit.store import elastic, sql
from audit.store.fields import (
    BY_GROUP,
    BY_KEY,
    BY_STATS,
    COPIED,
    EXACT,
    FIELDS,
    FILE_HASHES,
    INGEST,
    VALUE_FILTERS,
    WORDS,
    GroupField,
    Kind,
    QueryField,
    Source,
    StatsBy,
)
from audit.store.query import EventQuery
from tests.store.conftest import make_event

# -- Elasticsearch: the mapping as the store declared it before the table -------------------

_KEYWORD: dict[str, Any] = {"type": "keyword"}
_FREE: dict[str, Any] = {"type": "keyword", "ignore_above": 1024}
_LONG: dict[str, Any] = {"type": "long"}
_DATE: dict[str, Any] = {"type": "date"}


def _obj(**properties: Mapping[str, Any]) -> dict[str, Any]:
    return {"properties": dict(properties)}


_QUERY_INGEST: dict[str, Mapping[str, Any]] = {
    "time_us": _LONG,
    "search_words": _KEYWORD,
    "file_hashes": _KEYWORD,
    "query_fields": {"type": "integer"},
}
BEFORE_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": _DATE,
        "event": _obj(
            id=_KEYWORD,
            action=_KEYWORD,
            outcome=_KEYWORD,
            kind=_KEYWORD,
            category=_KEYWORD,
            type=_KEYWORD,
            dataset=_KEYWORD,
            hash=_KEYWORD,
            sequence=_LONG,
        ),
        "ffaudit": _obj(
            schema={"type": "integer"},
            stream=_KEYWORD,
            tenant=_KEYWORD,
            prev=_KEYWORD,
            key_id=_KEYWORD,
            session=_obj(hash=_KEYWORD),
            client=_obj(ip_hash=_KEYWORD),
            target=_obj(hash=_KEYWORD),
            checkpoint=_obj(
                first_sequence=_LONG,
                records=_LONG,
                closing={"type": "boolean"},
                signer=_KEYWORD,
            ),
            metadata={"type": "flattened", "ignore_above": 1024},
            ingest=_obj(
                verdict=_KEYWORD,
                failure=_KEYWORD,
                received_at=_DATE,
                tenant=_KEYWORD,
                stream=_KEYWORD,
                sequence=_LONG,
                doc_id=_KEYWORD,
                event_hash=_KEYWORD,
                timestamp=_DATE,
                record={"type": "object", "enabled": False},
                **_QUERY_INGEST,
            ),
        ),
        "user": _obj(hash=_KEYWORD),
        "trace": _obj(id=_FREE),
        "file": _obj(hash=_obj(sha256=_KEYWORD)),
        "error": _obj(
            type=_FREE,
            message={"type": "text", "fields": {"keyword": _FREE}},
        ),
    },
}
BEFORE_QUERY_MAPPINGS: dict[str, Any] = {"ffaudit": _obj(ingest=_obj(**_QUERY_INGEST))}
_STREAM, _VERDICT = INGEST + "stream", INGEST + "verdict"
# What both backends declared by hand: record copies, filters, stats and groups.
BEFORE_COPIES = {
    "event.action": 64,
    "event.outcome": 16,
    "user.hash": 64,
    "ffaudit.session.hash": 64,
    "ffaudit.client.ip_hash": 64,
    "ffaudit.target.hash": 64,
    "trace.id": 256,
}
BEFORE_ES_FILTERS = {
    "actor_hashes": "user.hash",
    "actions": "event.action",
    "outcomes": "event.outcome",
    "session_hashes": "ffaudit.session.hash",
    "target_hashes": "ffaudit.target.hash",
    "job_ids": "trace.id",
    "streams": _STREAM,
    "verdicts": _VERDICT,
    "client_ip_hashes": "ffaudit.client.ip_hash",
    "file_hashes": INGEST + "file_hashes",
}
BEFORE_ES_STATS = {
    "action": "event.action",
    "outcome": "event.outcome",
    "actor": "user.hash",
    "verdict": _VERDICT,
    "client_ip": "ffaudit.client.ip_hash",
    "session": "ffaudit.session.hash",
    "stream": _STREAM,
}
BEFORE_ES_GROUPS = {
    "user.hash": "user.hash",
    "ffaudit.client.ip_hash": "ffaudit.client.ip_hash",
    "ffaudit.session.hash": "ffaudit.session.hash",
    "event.action": "event.action",
    "event.outcome": "event.outcome",
    "trace.id": "trace.id",
    "stream": _STREAM,
}
BEFORE_SQL_FILTERS = {
    "actor_hashes": "user_hash",
    "actions": "action",
    "outcomes": "outcome",
    "session_hashes": "session_hash",
    "target_hashes": "target_hash",
    "job_ids": "trace_id",
    "streams": "stream",
    "verdicts": "verdict",
    "client_ip_hashes": "client_ip_hash",
}
BEFORE_SQL_STATS = {
    "action": "action",
    "outcome": "outcome",
    "actor": "user_hash",
    "verdict": "verdict",
    "client_ip": "client_ip_hash",
    "session": "session_hash",
    "stream": "stream",
}
BEFORE_SQL_GROUPS = {
    "user.hash": "user_hash",
    "ffaudit.client.ip_hash": "client_ip_hash",
    "ffaudit.session.hash": "session_hash",
    "event.action": "action",
    "event.outcome": "outcome",
    "trace.id": "trace_id",
    "stream": "stream",
}
# The events table's columns that are no query field: identity, chain place, the record.
SQL_STRUCTURE = {"tenant", "doc_id", "sequence", "event_hash", "failure", "received_at", "record"}


def test_es_mapping_derived_from_the_table_is_the_one_declared_before() -> None:
    assert elastic.MAPPINGS == BEFORE_MAPPINGS
    assert elastic.QUERY_MAPPINGS == BEFORE_QUERY_MAPPINGS


def test_es_copies_filters_and_groups_are_the_ones_declared_before() -> None:
    assert dict(COPIED) == BEFORE_COPIES
    assert elastic._FILTERS == BEFORE_ES_FILTERS
    assert elastic._STATS_FIELDS == BEFORE_ES_STATS
    assert elastic._GROUP_FIELDS == BEFORE_ES_GROUPS


def _names(columns: Mapping[str, Any]) -> dict[str, str]:
    return {name: column.name for name, column in columns.items()}


def test_sql_column_map_covers_exactly_the_table() -> None:
    table = Event.__table__
    assert isinstance(table, Table)
    # Every field has its column, and every column is a field or the row's structure.
    assert set(sql._COLUMNS) == set(BY_KEY)
    assert {c.name for c in sql._COLUMNS.values()} | SQL_STRUCTURE == set(table.c.keys())
    for key, longest in COPIED.items():
        column = table.c[BY_KEY[key].column]
        assert isinstance(column.type, String)
        assert column.type.length == longest, key  # the copy fits its column exactly
    assert _names(dict(sql._FILTERS)) == BEFORE_SQL_FILTERS
    assert _names(sql._STATS_COLUMNS) == BEFORE_SQL_STATS
    assert _names(sql._GROUP_COLUMNS) == BEFORE_SQL_GROUPS


def test_sql_row_fills_each_copy_from_its_record_field() -> None:
    values = {key: f"v{n}" for n, key in enumerate(COPIED)}
    row = sql._row(make_event("acme", 1, extra=values))
    assert {BY_KEY[key].column: row[BY_KEY[key].column] for key in COPIED} == {
        BY_KEY[key].column: value for key, value in values.items()
    }
    # Too long or not a string: left out of the column, as Elasticsearch leaves it out.
    odd = {
        key: ("x" * (longest + 1) if n % 2 else 7)
        for n, (key, longest) in enumerate(COPIED.items())
    }
    row = sql._row(make_event("acme", 1, extra=odd))
    assert all(row[BY_KEY[key].column] is None for key in COPIED)


def test_the_typed_vocabularies_are_the_table_s() -> None:
    assert set(get_args(StatsBy)) == set(BY_STATS)
    assert set(get_args(GroupField)) == set(BY_GROUP)


def test_event_query_filters_are_the_table_s() -> None:
    attributes = {f.name: f.type for f in dataclasses.fields(EventQuery)}
    tuples = {name for name, kind in attributes.items() if kind == "tuple[str, ...]"}
    # The one exclusion (what the console hides) selects by a field the table has.
    assert set(VALUE_FILTERS) == tuples - {"excluded_actions"}
    assert VALUE_FILTERS["actions"].key == "event.action"
    assert all(f.query in attributes for f in FIELDS if f.query is not None)
    assert WORDS.query == "text"


def test_cursor_digests_are_unchanged() -> None:
    # Cursors issued before the table still continue their queries.
    query = EventQuery(
        "acme",
        actor_hashes=("a" * 64,),
        actions=("face.swapped",),
        outcomes=("success",),
        session_hashes=("b" * 64,),
        target_hashes=("c" * 64,),
        job_ids=("job-1",),
        streams=("cam-1",),
        verdicts=("ok",),
        client_ip_hashes=("d" * 64,),
        since=datetime(2026, 1, 1, tzinfo=UTC),
        until=datetime(2026, 2, 1, tzinfo=UTC),
        text="swap",
        order="asc",
    )
    assert query.digest() == "2529fb85e3dd4653068ca9c94341626b"
    with_files = dataclasses.replace(query, file_hashes=("e" * 64,))
    assert with_files.digest() == "8ad60e65ddfb4b8260eaf7a8eb0021f8"
    assert EventQuery("acme").digest() == "65e6cbe1b26f6a9ec94500b09fb811bd"


def test_fields_each_backend_handles_by_name() -> None:
    # Derived and multi-valued fields need code of their own in each backend (their SQL
    # encodings differ): a new one must not pass unnoticed as a plain keyword.
    assert {f for f in FIELDS if f.source is Source.DERIVED} == {WORDS, FILE_HASHES}
    assert {f for f in FIELDS if f.kind is Kind.KEYWORDS} == {FILE_HASHES}
    assert all(f.kind in EXACT for f in FIELDS if f.group is not None)
    # A field added after the first release maps under the annotations the backfill sets.
    assert all(f.key.startswith(INGEST) for f in FIELDS if f.release)
    assert {f.release for f in FIELDS} == set(range(elastic.QUERY_FIELDS + 1))


def test_only_a_record_copy_has_a_size() -> None:
    with pytest.raises(ValueError, match="longest"):
        QueryField(key="x.y", kind=Kind.KEYWORD, source=Source.RECORD, column="x_y")
    with pytest.raises(ValueError, match="longest"):
        QueryField(key="x", kind=Kind.KEYWORD, source=Source.SERVICE, column="x", longest=8)
