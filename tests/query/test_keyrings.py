"""A tenant's keyring holds every producer's pseudonym key: importing adds, never replaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from audit.errors import ConflictError
from audit.integrity.keys import Keyring, PseudonymKey
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.query.keyrings import TenantKeyrings


def test_a_second_producers_key_is_added_and_both_streams_stay_searchable(
    tmp_path: Path,
) -> None:
    engine_a, engine_b = Keyring.generate(), Keyring.generate()
    keyrings = TenantKeyrings(tmp_path / "kr")
    keyrings.import_keyring("acme", engine_a.dumps())
    keyrings.import_keyring("acme", engine_b.dumps())
    found = set(keyrings.candidates("acme", PiiKind.USER, "alice"))
    for engine in (engine_a, engine_b):  # alice's pseudonym in each engine's records
        assert Pseudonymizer(engine, "acme").pseudonym(PiiKind.USER, "alice") in found
    assert set(keyrings.keys("acme")) == {
        engine_a.current,
        engine_b.current,
    }
    # Importing a key again changes nothing; the same id with another secret is refused.
    keyrings.import_keyring("acme", engine_a.dumps())
    assert len(keyrings.keys("acme")) == 2
    [key] = engine_a.keys
    forged = Keyring((PseudonymKey(key.key_id, b"\0" * 32, key.created),), key.key_id)
    with pytest.raises(ConflictError, match="another secret"):
        keyrings.import_keyring("acme", forged.dumps())
    assert set(keyrings.candidates("acme", PiiKind.USER, "alice")) == found


def test_the_cli_adds_and_lists(tmp_path: Path) -> None:
    env = {"FFAUDIT_KEYRINGS_DIR": str(tmp_path / "kr"), "PATH": "/usr/bin:/bin"}
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.pii.key"
        path.write_bytes(Keyring.generate().dumps())
        files.append(path)

    def ffaudit(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "audit", *args], env=env, capture_output=True, check=False
        )

    for path in files:
        run = ffaudit("keyrings", "import", "--tenant", "acme", str(path))
        assert run.returncode == 0, run.stderr
        assert b"1 key(s) added" in run.stderr
    listed = orjson.loads(ffaudit("keyrings", "list", "--tenant", "acme").stdout)
    assert len(listed["keys"]) == 2
