"""`ffengine run` as an integrator meets it (issue 14): its help names the settings it reads,
and a job it refuses is on the record under a job id it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from engine.cli import SERVE_ONLY_SETTINGS
from engine.settings import EngineSettings


def engine_env(tmp_path: Path) -> dict[str, str]:
    # Nothing from the developer's own FFENGINE_* settings (a model pack above all).
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFENGINE_")}
    base = tmp_path / "engine"
    return {
        **env,
        "FFENGINE_WORK_DIR": str(base / "work"),
        "FFENGINE_KEYS_DIR": str(base / "keys"),
        "FFENGINE_SPOOL_DIR": str(base / "spool"),
    }


def ffengine_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_run_help_lists_the_settings_it_reads(tmp_path: Path) -> None:
    done = ffengine_run("--help", env=engine_env(tmp_path))
    assert done.returncode == 0, done.stderr
    help_text = done.stdout
    for name in ("STREAM", "TENANT", "AUDIT_FORWARD", "SPOOL_DIR", "KEYS_DIR", "MODEL_DIR"):
        assert f"FFENGINE_{name}  [default: " in help_text
    # Generated from the settings class: every field `run` reads is there, with its
    # description, and the HTTP sidecar's own are not.
    fields = EngineSettings.model_fields
    assert set(fields) >= SERVE_ONLY_SETTINGS  # no stale names in the exclusion list
    for name, info in fields.items():
        listed = re.search(rf"^\s*FFENGINE_{name.upper()}\s", help_text, re.MULTILINE)
        assert bool(listed) is (name not in SERVE_ONLY_SETTINGS), name
        if listed and info.description:
            assert " ".join(info.description.split()) in " ".join(help_text.split()), name
    assert "FFENGINE_STREAM  [default: ffengine]\n      audit stream id of this engine" in (
        help_text
    )  # `\b`: click kept the layout instead of rewrapping it into one paragraph


def test_a_missing_input_is_refused_on_the_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit.ndjson"
    missing = tmp_path / "alice-smith.jpg"
    done = ffengine_run(
        "--target",
        str(missing),
        "--output",
        str(tmp_path / "out.jpg"),
        "--audit-file",
        str(audit),
        "--actor",
        "alice",
        env=engine_env(tmp_path),
    )
    assert done.returncode == 2, done.stderr
    printed = re.search(r"^ffengine: job ([0-9a-f]{32}) refused: (.+)$", done.stderr, re.MULTILINE)
    assert printed is not None, done.stderr
    assert printed.group(2) == "alice-smith.jpg: no such file"  # the caller's own terminal
    [refused] = [r for r in records(audit) if r["event.action"] == "job.refused"]
    assert refused["trace.id"] == printed.group(1)
    assert refused["event.outcome"] == "failure"
    assert refused["error.type"] == "InputError"
    assert refused["error.message"] == "<target>: no such file"  # the name is PII
    assert refused["ffaudit.metadata"] == {"job_type": "anonymize", "reason": "input"}
    assert "alice-smith" not in audit.read_text()


def test_a_swap_without_models_is_refused_on_the_record(
    tmp_path: Path, sample_image_path: Path
) -> None:
    audit = tmp_path / "audit.ndjson"
    done = ffengine_run(
        "--target",
        str(sample_image_path),
        "--source",
        str(sample_image_path),
        "--output",
        str(tmp_path / "out.jpg"),
        "--audit-file",
        str(audit),
        env=engine_env(tmp_path),
    )
    assert done.returncode == 3, done.stderr
    printed = re.search(r"^ffengine: job ([0-9a-f]{32}) refused: ", done.stderr, re.MULTILINE)
    assert printed is not None, done.stderr
    [refused] = [r for r in records(audit) if r["event.action"] == "job.refused"]
    assert refused["trace.id"] == printed.group(1)
    assert refused["error.type"] == "ModelError"
    assert refused["ffaudit.metadata"] == {"job_type": "swap", "reason": "model"}
    assert not (tmp_path / "out.jpg").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens


def test_close_stream_seals_the_closing_checkpoint_and_the_stream_takes_no_more(
    tmp_path: Path, sample_image_path: Path
) -> None:
    from audit.integrity import record as f

    env, audit = engine_env(tmp_path), tmp_path / "audit.ndjson"
    args = ("--target", str(sample_image_path), "--audit-file", str(audit), "--close-stream")
    done = ffengine_run(*args, "--output", str(tmp_path / "out.jpg"), env=env)
    assert done.returncode == 0, done.stderr
    last = records(audit)[-1]
    assert last["event.action"] == "audit.checkpoint"
    assert last[f.CP_CLOSING] is True
    # A closed stream is closed for good: the next run on the same engine state refuses.
    again = ffengine_run(*args, "--output", str(tmp_path / "out2.jpg"), env=env)
    assert again.returncode != 0
    assert "closed" in again.stderr
    assert records(audit)[-1] == last


def test_require_delivery_fails_when_the_service_did_not_acknowledge(
    tmp_path: Path, sample_image_path: Path
) -> None:
    env = engine_env(tmp_path)
    output = tmp_path / "out.jpg"
    done = ffengine_run(
        *("--target", str(sample_image_path), "--output", str(output)),
        *("--audit-forward", f"127.0.0.1:{_closed_port()}", "--require-delivery"),
        env=env,
    )
    assert done.returncode == 5, done.stdout + done.stderr
    assert "did not acknowledge every record" in done.stderr
    assert output.is_file()  # the job ran; only its delivery is unproven
    spooled = list((tmp_path / "engine" / "spool").glob("*"))
    assert spooled, "the records must stay spooled for the next run"


def test_require_delivery_without_a_destination_is_a_usage_failure(
    tmp_path: Path, sample_image_path: Path
) -> None:
    done = ffengine_run(
        *("--target", str(sample_image_path), "--output", str(tmp_path / "out.jpg")),
        "--require-delivery",
        env=engine_env(tmp_path),
    )
    assert done.returncode == 5
    assert "needs a forward destination" in done.stderr
