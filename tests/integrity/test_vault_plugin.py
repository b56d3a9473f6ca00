"""The engine opens the subject vault through its contract: the implementation is a plugin
(entry point), so the engine never imports the service's SQL code (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.db.session import upgrade
from audit.integrity.errors import UsageError
from audit.integrity.subjects import open_vault
from audit.subjects.vault import SqlSubjectVault


def test_the_installed_package_registers_the_sql_vault(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/vault.db"
    upgrade(url)
    vault = open_vault(url)
    try:
        assert isinstance(vault, SqlSubjectVault)
        vault.ping()
        secret = vault.get_or_create("t", "user", ["lookup-1"])
        assert vault.get_or_create("t", "user", ["lookup-1"]) == secret
    finally:
        vault.close()


def test_an_unknown_implementation_is_a_clear_usage_error() -> None:
    with pytest.raises(UsageError, match="no subject vault implementation 'ldap'"):
        open_vault("ldap://nowhere", implementation="ldap")
