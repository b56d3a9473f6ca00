"""The README's main job: `ffaudit demo` on embedded defaults, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end_and_its_trail_verifies(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "audit", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "FFAUDIT_DATABASE_URL": "sqlite:///unused.db"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 faces anonymized" in result.stdout
    assert "OK: every hash, link and signature verifies" in result.stdout
    assert (workdir / "t1-anonymized.jpg").is_file()
    # The engine's own NDJSON copy verifies with the stand-alone tool as well.
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "audit",
            "verify",
            "--strict",
            "--pubkey",
            str(workdir / "engine" / "keys" / "signing.pub"),
            str(workdir / "records.ndjson"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout
    # No raw identity in any record the demo produced.
    assert os.environ.get("USER", "root") + "@demo" not in (workdir / "records.ndjson").read_text()
