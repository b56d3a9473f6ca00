"""What a wheel of the project contains: every package, and the migrations."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
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


# Imported directly but installed by the dependency named here (and part of its public API).
_THROUGH = {"starlette": "fastapi"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r)[0].lower().replace("_", "-") for r in requirements}


def test_what_the_commands_import_is_a_runtime_dependency() -> None:
    """`ffaudit` and `ffengine` must run after `pip install '.[engine]'`: no module they
    import may come only from the test or dev extras (httpx once did)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = config["project"]
    runtime = _names(project["dependencies"]) | _names(project["optional-dependencies"]["engine"])
    distributions = packages_distributions()
    missing: dict[str, str] = {}
    roots = ("audit", "dashboards", "engine")
    for source in [p for root in roots for p in (ROOT / root).rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in (m.split(".")[0] for m in modules):
                if module in sys.stdlib_module_names or module in roots:
                    continue
                provided = {
                    d.lower().replace("_", "-") for d in distributions.get(module, [module])
                }
                if not provided & runtime and _THROUGH.get(module) not in runtime:
                    missing.setdefault(module, str(source.relative_to(ROOT)))
    assert missing == {}


def test_ffengine_help_loads_no_service_machinery() -> None:
    """The engine depends on the integrity kernel and the shared utilities alone (issue 15):
    its command line starts without SQLAlchemy, Alembic, FastAPI or Elasticsearch."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from engine.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['run', '--help']).exit_code == 0\n"
        "heavy = ('sqlalchemy', 'alembic', 'fastapi', 'starlette', 'elasticsearch')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
        "print(sorted(m for m in sys.modules if m.startswith('audit.') and not "
        "m.startswith(('audit.integrity', 'audit.common'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["[]", "[]"]
