"""Retention works through the store's contract only: it asks the store for its archiver
(EventStore.archiver) and never learns which backend it has."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import audit.retention
from audit.errors import ConflictError
from audit.models import RetentionArchive
from audit.retention.repository import RetentionRepository
from audit.store.archive import ArchiveKind, Archiver, ArchiveSettings
from tests.retention.conftest import EnvFactory

RETENTION = Path(audit.retention.__file__).parent
# The backends and their archivers: retention reaches them through EventStore only.
CONCRETE = {
    "audit.store.sql",
    "audit.store.elastic",
    "audit.store.ndjson_archive",
    "audit.store.elastic_archive",
    "elasticsearch",
}
KINDS = {
    "sqlite": ArchiveKind.NDJSON_GZ,
    "postgres": ArchiveKind.NDJSON_GZ,
    "elasticsearch": ArchiveKind.SNAPSHOT,
}


def _imports(tree: ast.AST) -> set[str]:
    """Every module an import statement names, at any depth (a function's own included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _concrete(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in CONCRETE)


@pytest.mark.parametrize("path", sorted(RETENTION.glob("*.py")), ids=lambda p: p.name)
def test_retention_never_names_a_backend(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert sorted(m for m in _imports(tree) if _concrete(m)) == []
    for node in ast.walk(tree):
        # No asking what a store or an archiver is: they say what they do.
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            subject = ast.unparse(node.args[0]).lower()
            assert not {"store", "archiver"} & set(re.findall(r"[a-z]+", subject)), subject
        # Nothing of retention takes a store typed loosely.
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            name = node.arg if isinstance(node, ast.arg) else ast.unparse(node.target)
            if "store" in name:
                assert ast.unparse(node.annotation) != "Any", f"{path.name}: {name}"


async def test_each_backend_supplies_an_archiver(make_env: EnvFactory) -> None:
    env = make_env()
    archiver = env.retention.archiver
    assert isinstance(archiver, Archiver)
    assert archiver.kind is KINDS[env.backend]
    settings = ArchiveSettings.of(env.settings, env.servicelog.keys.signer)
    assert isinstance(env.store.archiver(settings), type(archiver))


async def test_an_archive_of_another_kind_is_not_restored(make_env: EnvFactory) -> None:
    env = make_env()
    env.register("cam-1")  # the tenant exists
    ours = env.retention.archiver.kind
    other = next(kind for kind in ArchiveKind if kind is not ours)
    with env.sessions.begin() as session:
        archive = RetentionRepository(session).add_archive(
            RetentionArchive(
                run_id="r1",
                tenant_id=env.tenant,
                day="2020-01-01",
                kind=other.value,
                location="elsewhere",
                records=1,
                created_at=datetime.now(UTC),
            )
        )
        archive_id = archive.id
    with pytest.raises(ConflictError, match=f"restores {ours.value} archives"):
        await env.retention.restore(None, env.tenant, archive_id)
