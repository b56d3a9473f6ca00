"""What the command lines import: verifying a file must not start a web stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("fastapi", "sqlalchemy", "alembic", "uvicorn", "elasticsearch", "httpx")
PROBE = """
import json, sys
from {module} import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def loaded(module: str, argv: list[str], stdin: bytes = b"") -> tuple[int, list[str]]:
    script = PROBE.format(module=module, argv=argv, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", script], input=stdin, capture_output=True, check=True, timeout=60
    )
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return int(result["code"] or 0), list(result["loaded"])


@pytest.mark.parametrize("argv", [["--version"], ["verify", "--help"], ["seal", "--help"]])
def test_integrity_commands_load_no_service_stack(argv: list[str]) -> None:
    code, heavy = loaded("audit.cli", argv)
    assert code == 0
    assert heavy == []


def test_verify_of_a_file_loads_no_service_stack(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    subprocess.run(
        [sys.executable, "-m", "audit", "keygen", "--out", str(keys)], check=True, timeout=60
    )
    event = {
        "timestamp": "2026-12-04T10:00:00Z",
        "user_id": "alice",
        "action": "face_swap",
        "target": "/in/a.jpg",
        "status": "success",
        "metadata": {},
        "client_ip": "198.51.100.7",
        "session_id": "s-1",
    }
    sealed = subprocess.run(
        [sys.executable, "-m", "audit", "seal", "--stream", "s", "--keys", str(keys)],
        input=json.dumps(event).encode() + b"\n",
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    records = tmp_path / "records.ndjson"
    records.write_bytes(sealed)
    code, heavy = loaded(
        "audit.cli", ["verify", "--strict", "--pubkey", str(keys / "signing.pub"), str(records)]
    )
    assert code == 0
    assert heavy == []


def test_engine_help_loads_no_service_stack() -> None:
    code, heavy = loaded("engine.cli", ["--help"])
    assert code == 0
    assert heavy == []


def test_every_lazy_command_resolves() -> None:
    import click

    from audit.cli import COMMANDS, cli

    context = click.Context(cli)
    for name in COMMANDS:
        assert isinstance(cli.get_command(context, name), click.Command), name
