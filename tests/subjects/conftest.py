"""The subject vault on real databases: SQLite and PostgreSQL (schema from the migrations)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.db.session import upgrade
from audit.subjects.vault import SqlSubjectVault

VAULT_BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=VAULT_BACKENDS)
def vault_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    url = f"sqlite:///{tmp_path}/vault.db"
    upgrade(url)
    return url


@pytest.fixture
def vault(vault_url: str) -> Iterator[SqlSubjectVault]:
    made = SqlSubjectVault.from_url(vault_url)
    yield made
    made.close()


@pytest.fixture
def tenant() -> str:
    """A tenant of this test only: tests share the PostgreSQL database."""
    return f"t{uuid.uuid4().hex[:12]}"
