"""The migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

import audit.models  # noqa: F401  (registers every table)
from audit.db.base import Base
from audit.db.session import alembic_config, make_engine, upgrade


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A control database migrated up and all the way down again: before any migration."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/control.db"
        upgrade(url)
    else:
        url = str(request.getfixturevalue("fresh_postgres_url"))
    command.downgrade(alembic_config(url), "base")
    return url


def test_the_migrations_match_the_models(empty_url: str) -> None:
    upgrade(empty_url)
    with make_engine(empty_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_0006_keeps_the_newest_of_duplicate_open_alerts_open(empty_url: str) -> None:
    upgrade(empty_url, "0005")
    insert = text(
        "INSERT INTO alerts"
        " (rule, severity, state, title, detail, dedup_key, count, first_seen, last_seen)"
        " VALUES ('fork', 'high', :state, 't', '{}', :key, 1, :at, :at)"
    )
    engine = make_engine(empty_url)
    with engine.begin() as connection:
        for state, key in [("open", "a"), ("acknowledged", "a"), ("open", "b"), ("open", "a")]:
            connection.execute(
                insert,
                {"state": state, "key": key, "at": "2026-11-01 00:00:00"},
            )
    upgrade(empty_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(text("id, dedup_key, state, resolved_at IS NOT NULL"))
            .select_from(text("alerts"))
            .order_by(text("id"))
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "a", "resolved", True),
        (2, "a", "resolved", True),
        (3, "b", "open", False),
        (4, "a", "open", False),
    ]


def test_sqlite_overwrites_what_it_deletes(tmp_path: Path) -> None:
    """Crypto-shredding and secret rotation mean nothing if the old bytes stay in the file's
    free pages: the control database runs with secure_delete."""
    from sqlalchemy import text

    from audit.db.session import make_engine

    url = f"sqlite:///{tmp_path}/c.db"
    upgrade(url)
    marker = "subject-secret-" + "5e" * 24
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v TEXT)"))
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": marker})
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM t"))
    engine.dispose()
    assert marker.encode() not in (tmp_path / "c.db").read_bytes()


def test_0011_keeps_streams_heads_checkpoints_and_pending_records(empty_url: str) -> None:
    upgrade(empty_url, "0010")
    engine = make_engine(empty_url)
    at = {"at": "2026-12-01 00:00:00"}
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tenants (id, created_at) VALUES ('acme', :at)"), at)
        connection.execute(
            text(
                "INSERT INTO streams (id, tenant_id, public_key_pem, key_fingerprint,"
                " registered_at) VALUES ('cam-1', 'acme', 'pem', :fp, :at)"
            ),
            {**at, "fp": "f" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO chain_heads (stream_id, sequence, hash, signed_through,"
                " signed_hash, last_checkpoint, closed, updated_at)"
                " VALUES ('cam-1', 7, :h, 5, :s, 5, false, :at)"
            ),
            {**at, "h": "a" * 64, "s": "b" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO checkpoints (stream_id, sequence, event_hash, closing, verified,"
                " received_at) VALUES ('cam-1', 5, :s, false, true, :at)"
            ),
            {**at, "s": "b" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO pending_records (stream_id, sequence, event_hash, prev, doc_id,"
                " \"timestamp\", received_at) VALUES ('cam-1', 9, :h, :h, 'cam-1:9', :at, :at)"
            ),
            {**at, "h": "c" * 64},
        )
    upgrade(empty_url)
    with engine.connect() as connection:

        def rows(query: str) -> list[tuple[object, ...]]:
            return [tuple(r) for r in connection.execute(text(query))]

        assert rows("SELECT tenant_id, id FROM streams") == [("acme", "cam-1")]
        assert rows("SELECT tenant_id, stream_id, sequence, signed_through FROM chain_heads") == [
            ("acme", "cam-1", 7, 5)
        ]
        assert rows("SELECT tenant_id, stream_id, sequence FROM checkpoints") == [
            ("acme", "cam-1", 5)
        ]
        assert rows("SELECT tenant_id, stream_id, sequence, doc_id FROM pending_records") == [
            ("acme", "cam-1", 9, "cam-1:9")
        ]
    engine.dispose()


def test_0014_fills_file_hashes_from_the_stored_records(empty_url: str) -> None:
    upgrade(empty_url, "0013")
    digest = [f"{n:x}" * 64 for n in range(10, 13)]
    records: dict[str, dict[str, object]] = {
        "job": {"file.hash.sha256": digest[0], "ffaudit.metadata": {"source_sha256": digest[1]}},
        "done": {"ffaudit.metadata": {"output_sha256": digest[2], "input_sha256": digest[0]}},
        "odd": {"file.hash.sha256": "not a digest", "ffaudit.metadata": {"source_sha256": None}},
        # More rows than one batch of the backfill, most naming no file.
        **{f"plain-{n:04d}": {"event.action": "face.swapped", "n": n} for n in range(2100)},
        **{f"late-{n:04d}": {"file.hash.sha256": f"{n:064x}"} for n in range(1200)},
    }
    insert = text(
        "INSERT INTO events (tenant, doc_id, stream, sequence, event_hash, timestamp, verdict,"
        " received_at, record) VALUES ('acme', :doc_id, 'cam-1', :seq, :hash, :at, 'ok', :at,"
        " :record)"
    )
    engine = make_engine(empty_url)
    with engine.begin() as connection:
        connection.execute(
            insert,
            [
                {
                    "doc_id": doc_id,
                    "seq": seq,
                    "hash": "0" * 64,
                    "at": "2026-12-01 00:00:00",
                    "record": orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode(),
                }
                for seq, (doc_id, record) in enumerate(records.items(), start=1)
            ],
        )
    upgrade(empty_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT doc_id, file_hashes FROM events")).all()
    stored: dict[str, str | None] = {doc_id: digests for doc_id, digests in rows}
    want = {
        "job": f"{digest[0]} {digest[1]}",
        "done": f"{digest[0]} {digest[2]}",
        **{f"late-{n:04d}": f"{n:064x}" for n in range(1200)},
    }
    assert {k: v for k, v in stored.items() if v is not None} == want
    assert len(stored) == len(records)
    command.downgrade(alembic_config(empty_url), "0013")
    assert "file_hashes" not in {c["name"] for c in inspect(engine).get_columns("events")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM events")).scalar() == len(records)
    engine.dispose()
