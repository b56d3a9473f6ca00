"""Engine and session factory for the control database, built from settings."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A wheel ships the top-level alembic/ as audit/_migrations (pyproject's package-dir); a source
# checkout (editable install, tests) uses alembic/ itself.
_PACKAGED = Path(__file__).resolve().parents[1] / "_migrations"


def migrations_dir() -> Path:
    return _PACKAGED if (_PACKAGED / "env.py").is_file() else _PROJECT_ROOT / "alembic"


def _sqlite_directory(url: str) -> None:
    """SQLite creates its file but not the directory: `var/` on a fresh checkout, say."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


_SQLITE_BUSY_S = 30.0


def _wal(connection: sqlite3.Connection, budget_s: float = _SQLITE_BUSY_S) -> None:
    """Put the database in WAL mode (persistent: stored in the file), lets readers run beside
    the one writer.

    Only a database still in rollback mode is switched: the switch needs the file to itself
    and SQLite answers "database is locked" at once, without its busy handler, when another
    connection is writing. Eight engines opening a freshly migrated file together made one
    of them fail that way; so the mode is read first (no lock), and a switch that meets a
    writer is retried within the same budget as the busy timeout."""
    deadline = time.monotonic() + budget_s
    while True:
        # A fresh connection reports the mode only once it has read the header.
        connection.execute("PRAGMA schema_version").fetchall()
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        try:
            connection.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_directory(url)
        engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_S})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            _wal(dbapi_connection)
            # FULL sync makes a commit durable before the service acknowledges the records
            # it covers.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Deleted or rewritten content is overwritten, not left in free pages: erased
            # subject keys (crypto-shredding), secrets re-encrypted under a new key and
            # expired quarantine must not survive in the file.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    pyproject = _PROJECT_ROOT / "pyproject.toml"  # [tool.alembic]: only a checkout has it
    config = Config(toml_file=str(pyproject) if pyproject.is_file() else None)
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` with the project's Alembic migrations."""
    _sqlite_directory(url)
    command.upgrade(alembic_config(url), revision)
    if make_url(url).get_backend_name() == "sqlite":
        # Switch to WAL here, while nothing else has the file open, not in the first
        # burst of connections after it.
        engine = make_engine(url)
        try:
            with engine.connect():
                pass  # the connect hook switches it
        finally:
            engine.dispose()
