"""The CLI as a third party runs it: a real process, real files, exit codes and messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

EVENT = {
    "timestamp": "2026-11-21T10:00:00.000Z",
    "user_id": "alice@example.com",
    "action": "face_swap",
    "target": "/data/uploads/alice.png",
    "status": "success",
    "metadata": {
        "source_face_index": 0,
        "target_face_index": 1,
        "blend_ratio": 0.75,
        "execution_time_ms": 81,
        "output_resolution": "1920x1080",
    },
    "client_ip": "203.0.113.7",
    "session_id": "sess-123",
    "job_id": "job-1",
}


def ffaudit(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        input=stdin,
        capture_output=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


def events(n: int, **changes: object) -> bytes:
    lines = []
    for i in range(n):
        ts = f"2026-11-21T10:00:{i // 10:02d}.{i % 10}00Z"
        lines.append(json.dumps({**EVENT, "timestamp": ts, **changes}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    result = ffaudit("keygen", "--out", str(directory))
    assert result.returncode == 0, result.stderr
    return directory


def seal(keys: Path, data: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return ffaudit("seal", "--stream", "cam-1", "--keys", str(keys), *extra, stdin=data)


def test_keygen_writes_private_files_and_refuses_to_overwrite(keys: Path) -> None:
    for name, mode in (("signing.key", 0o600), ("signing.pub", 0o644), ("pii.key", 0o600)):
        assert stat.S_IMODE((keys / name).stat().st_mode) == mode
    assert (keys / "signing.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    again = ffaudit("keygen", "--out", str(keys))
    assert again.returncode == 2
    assert b"refusing to overwrite" in again.stderr


def test_seal_then_verify_round_trip(keys: Path, tmp_path: Path) -> None:
    sealed = seal(keys, events(25), "--tenant", "acme", "--checkpoint-every", "10")
    assert sealed.returncode == 0, sealed.stderr
    out = tmp_path / "records.ndjson"
    out.write_bytes(sealed.stdout)
    records = [json.loads(line) for line in sealed.stdout.splitlines()]
    assert [r["event.sequence"] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]["event.action"] == "audit.checkpoint"
    assert records[-1]["ffaudit.checkpoint.closing"] is True
    assert {r["ffaudit.tenant"] for r in records} == {"acme"}

    result = ffaudit("verify", "--pubkey", str(keys / "signing.pub"), "--strict", str(out))
    assert result.returncode == 0, result.stdout
    assert b"OK:" in result.stdout

    report = ffaudit("verify", "--pubkey", str(keys / "signing.pub"), "--json", str(out))
    doc = json.loads(report.stdout)
    assert doc["ok"] is True
    assert doc["streams"][0]["signed_through"] == len(records)


def test_verify_reports_tampering_with_exit_1(keys: Path, tmp_path: Path) -> None:
    lines = seal(keys, events(5)).stdout.splitlines()
    lines[2] = lines[2].replace(b'"success"', b'"failure"')
    out = tmp_path / "tampered.ndjson"
    out.write_bytes(b"\n".join(lines) + b"\n")
    result = ffaudit("verify", "--pubkey", str(keys / "signing.pub"), str(out))
    assert result.returncode == 1
    assert b"FAIL modified: line 3, seq 3" in result.stdout
    doc = json.loads(
        ffaudit("verify", "--pubkey", str(keys / "signing.pub"), "--json", str(out)).stdout
    )
    assert doc["ok"] is False
    assert doc["counts"] == {"modified": 1}
    assert doc["failures"][0] | {"detail": ""} == {
        "kind": "modified",
        "stream": "cam-1",
        "line": 3,
        "sequence": 3,
        "detail": "",
    }


def test_strict_flags_a_truncated_file(keys: Path, tmp_path: Path) -> None:
    lines = seal(keys, events(5)).stdout.splitlines()[:-1]
    out = tmp_path / "cut.ndjson"
    out.write_bytes(b"\n".join(lines) + b"\n")
    pub = str(keys / "signing.pub")
    assert ffaudit("verify", "--pubkey", pub, str(out)).returncode == 0
    strict = ffaudit("verify", "--pubkey", pub, "--strict", str(out))
    assert strict.returncode == 1
    assert b"FAIL truncated" in strict.stdout


def test_verify_of_nothing_is_not_a_pass(keys: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"\n\n")
    pub = str(keys / "signing.pub")
    plain = ffaudit("verify", "--pubkey", pub, str(empty))
    assert plain.returncode == 2, plain.stdout
    assert b"no records to verify" in plain.stderr
    strict = ffaudit("verify", "--pubkey", pub, "--strict", str(empty))
    assert strict.returncode == 1
    assert b"OK" not in strict.stdout


def test_verify_wrong_key(keys: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ffaudit("keygen", "--out", str(other))
    out = tmp_path / "r.ndjson"
    out.write_bytes(seal(keys, events(3)).stdout)
    result = ffaudit("verify", "--pubkey", str(other / "signing.pub"), str(out))
    assert result.returncode == 1
    assert b"FAIL wrong_key" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--pubkey", "/nonexistent.pub", "/nonexistent.ndjson"], b"cannot read"),
        (["verify", "/x.ndjson"], b"Missing option '--pubkey'"),
        (["seal", "--stream", "s", "--keys", "/nonexistent"], b"not a directory"),
        (["frobnicate"], b"No such command"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: bytes) -> None:
    result = ffaudit(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_verify_unreadable_pubkey_and_records(keys: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    records = tmp_path / "r.ndjson"
    records.write_bytes(b"")
    assert ffaudit("verify", "--pubkey", str(bad), str(records)).returncode == 2
    missing = ffaudit("verify", "--pubkey", str(keys / "signing.pub"), str(tmp_path / "none"))
    assert missing.returncode == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", b"line 3: not valid JSON"),
        (b'["a list"]', b"line 3: an event must be a JSON object"),
        (json.dumps({**EVENT, "colour": "red"}).encode(), b"line 3: colour: Extra inputs"),
        (
            json.dumps({**EVENT, "timestamp": "2026-11-21T10:00:00"}).encode(),
            b"line 3: timestamp: Input should have timezone info",
        ),
        (json.dumps({**EVENT, "action": "teleport"}).encode(), b"line 3: unknown action"),
        (json.dumps({**EVENT, "client_ip": "not-an-ip"}).encode(), b"line 3: client_ip"),
        (json.dumps({**EVENT, "metadata": {"x": 2**60}}).encode(), b"line 3: integer outside"),
        (json.dumps({**EVENT, "action": "audit.checkpoint"}).encode(), b"line 3: action"),
    ],
)
def test_seal_names_the_bad_line_and_leaves_the_stream_unclosed(
    keys: Path, tmp_path: Path, line: bytes, message: bytes
) -> None:
    data = events(2) + line + b"\n" + events(1)
    result = seal(keys, data)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert b"2 events sealed before it" in result.stderr
    # Raw input values never leak into error messages.
    assert b"alice" not in result.stderr
    assert b"not-an-ip" not in result.stderr
    out = tmp_path / "partial.ndjson"
    out.write_bytes(result.stdout)
    pub = str(keys / "signing.pub")
    assert ffaudit("verify", "--pubkey", pub, str(out)).returncode == 0
    assert ffaudit("verify", "--pubkey", pub, "--strict", str(out)).returncode == 1


def test_flood_is_rate_limited_and_summarised(keys: Path, tmp_path: Path) -> None:
    # 100 events 10 ms apart on one session: the burst of 10 plus 10/s refill over 0.99 s
    # pass (19); the other 81 are summarised.
    lines = [
        json.dumps(
            {**EVENT, "action": "face_detect", "timestamp": f"2026-11-21T10:00:00.{i:02d}0Z"}
        )
        for i in range(100)
    ]
    result = seal(keys, ("\n".join(lines) + "\n").encode(), "--rate", "10", "--burst", "10")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    actions = [r["event.action"] for r in records]
    assert actions.count("face.detected") == 19
    summaries = [r for r in records if r["event.action"] == "audit.rate_limited"]
    assert sum(s["ffaudit.metadata"]["dropped"] for s in summaries) == 81
    assert {a for s in summaries for a in s["ffaudit.metadata"]["actions"]} == {"face.detected"}
    assert summaries[0]["ffaudit.session.hash"] == records[0]["ffaudit.session.hash"]
    out = tmp_path / "flood.ndjson"
    out.write_bytes(result.stdout)
    assert (
        ffaudit("verify", "--pubkey", str(keys / "signing.pub"), "--strict", str(out)).returncode
        == 0
    )


def test_rotation_keeps_old_pseudonyms_findable(keys: Path, tmp_path: Path) -> None:
    import shutil

    from audit.integrity.keys import Keyring
    from audit.integrity.pseudonym import PiiKind, Pseudonymizer

    directory = tmp_path / "rot"
    shutil.copytree(keys, directory)
    before = json.loads(seal(directory, events(1)).stdout.splitlines()[0])
    assert ffaudit("keys", "rotate", "--keys", str(directory)).returncode == 0
    after = json.loads(seal(directory, events(1)).stdout.splitlines()[0])
    assert before["ffaudit.key_id"] != after["ffaudit.key_id"]
    assert before["user.hash"] != after["user.hash"]
    ring = Pseudonymizer(Keyring.load(directory / "pii.key"), "default")
    matches = ring.candidates(PiiKind.USER, EVENT["user_id"])  # type: ignore[arg-type]
    assert matches == {
        before["ffaudit.key_id"]: before["user.hash"],
        after["ffaudit.key_id"]: after["user.hash"],
    }
