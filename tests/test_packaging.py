"""What a wheel of the project contains: every package, and the migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_for_the_wheel() -> None:
    # pyproject lists packages by hand (the migrations are mapped in from alembic/), so a
    # new package left off the list would be missing from every non-editable install.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("audit", "engine", "dashboards")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set()
    assert listed - found == {"audit._migrations", "audit._migrations.versions"}
    assert config["tool"]["setuptools"]["package-dir"] == {"audit._migrations": "alembic"}
    assert (ROOT / "alembic" / "env.py").is_file()
    assert list((ROOT / "alembic" / "versions").glob("0001_*.py"))
