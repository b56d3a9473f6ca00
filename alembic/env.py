"""Alembic environment: migrations are how every deployment and every test builds the schema."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

import audit.models  # noqa: F401  (registers every table)
from audit.db.base import Base
from audit.settings import AuditSettings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # An explicit URL (tests pass one through the Config object) wins over the settings.
    return config.get_main_option("sqlalchemy.url") or AuditSettings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        {"sqlalchemy.url": _url()}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        # Batch mode lets the same migration alter tables on SQLite.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
