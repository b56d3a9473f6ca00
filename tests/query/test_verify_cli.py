"""`ffaudit verify --service`: a running service's stored chains, from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import create_engine, text

from audit.integrity.keys import Signer
from audit.query.service import PROGRESS_EVERY
from audit.settings import AuditSettings
from tests.apptools import jwt_token
from tests.ingest.conftest import make_records
from tests.query.conftest import load_chains

Service = tuple[str, AuditSettings]


def ffaudit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FFAUDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**clean, **env},
    )


@pytest.fixture
def running(service_url: Service) -> tuple[str, AuditSettings, dict[str, int]]:
    url, settings = service_url
    sizes = load_chains(httpx, url, {"cam-1": PROGRESS_EVERY + 200, "cam-2": 20})
    return url, settings, sizes


def test_intact_chains_exit_0_with_a_summary(
    running: tuple[str, AuditSettings, dict[str, int]],
) -> None:
    url, _, sizes = running
    ok = ffaudit("verify", "--service", url, "--stream", "cam-1", "--token", jwt_token())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    n = sizes["cam-1"]
    assert f"stream cam-1: {n} records, last sequence {n}, accepted head {n}" in ok.stdout
    assert f"OK: {n} records in 1 stream(s) verified" in ok.stdout
    assert ok.stderr == ""  # no terminal, no --progress: no progress lines

    # Service and token from the environment; several streams; progress when asked for.
    env = {"FFAUDIT_SERVICE_URL": url, "FFAUDIT_TOKEN": jwt_token()}
    both = ffaudit(
        "verify", "--stream", "cam-1", "--stream", "cam-2", "--json", "--progress", **env
    )
    assert both.returncode == 0, both.stderr
    report = orjson.loads(both.stdout)
    assert report["ok"] is True
    assert [(s["stream"], s["records"]) for s in report["streams"]] == list(sizes.items())
    assert f"verify cam-1: 0/{n} records (0%)" in both.stderr
    assert f"verify cam-1: {n}/{n} records (100%)" in both.stderr
    assert "verify cam-2: " in both.stderr

    # A time range: every stream of the tenant (the service's own log stream included).
    ranged = ffaudit("verify", "--since", "2020-01-01T00:00:00Z", **env)
    assert ranged.returncode == 0, ranged.stdout + ranged.stderr
    assert "stream cam-1:" in ranged.stdout
    assert "stream cam-2:" in ranged.stdout
    assert "stream ffaudit-service.acme." in ranged.stdout


def test_a_tampered_store_exits_1_naming_each_failure(
    running: tuple[str, AuditSettings, dict[str, int]],
) -> None:
    url, settings, sizes = running
    db = create_engine(settings.database_url)
    with db.begin() as conn:  # edit a record and drop a stream's tail inside the store
        row = conn.execute(text("SELECT record FROM events WHERE doc_id = 'cam-1:5'")).one()
        edited = row[0].replace('"success"', '"failure"')
        conn.execute(text("UPDATE events SET record = :r WHERE doc_id = 'cam-1:5'"), {"r": edited})
        conn.execute(text("DELETE FROM events WHERE doc_id = :d"), {"d": f"cam-2:{sizes['cam-2']}"})
    db.dispose()
    env = {"FFAUDIT_SERVICE_URL": url, "FFAUDIT_TOKEN": jwt_token()}
    failed = ffaudit("verify", "--stream", "cam-1", "--stream", "cam-2", **env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL modified: stream cam-1, seq 5: content does not match its event.hash" in (
        failed.stdout
    )
    last = sizes["cam-2"] - 1
    assert f"FAIL head_mismatch: stream cam-2, seq {last}: the store ends at sequence {last}" in (
        failed.stdout
    )
    assert "stream cam-1: " in failed.stdout
    assert "FAILED: head_mismatch: 1, modified: 1" in failed.stdout
    as_json = ffaudit("verify", "--stream", "cam-1", "--json", **env)
    assert as_json.returncode == 1
    (stream,) = orjson.loads(as_json.stdout)["streams"]
    assert [(f["kind"], f["sequence"]) for f in stream["failures"]] == [("modified", 5)]


def test_service_refusals_exit_2_with_the_services_message(
    running: tuple[str, AuditSettings, dict[str, int]],
) -> None:
    url, _, _ = running
    missing = ffaudit("verify", "--service", url, "--stream", "nope", "--token", jwt_token())
    assert missing.returncode == 2
    assert "no stream 'nope'" in missing.stderr
    other = ffaudit(
        "verify", "--service", url, "--stream", "cam-1", "--token", jwt_token(tenant="other")
    )
    assert other.returncode == 2
    assert "no stream 'cam-1'" in other.stderr
    engineer = ffaudit(
        "verify", "--service", url, "--stream", "cam-1", "--token", jwt_token(roles=["engineer"])
    )
    assert engineer.returncode == 2
    assert "error:" in engineer.stderr
    forged = ffaudit("verify", "--service", url, "--stream", "cam-1", "--token", "not.a.jwt")
    assert forged.returncode == 2
    assert "invalid token" in forged.stderr.lower()
    nobody = ffaudit("verify", "--service", "http://127.0.0.1:9", "--stream", "cam-1")
    assert nobody.returncode == 2
    assert "cannot reach the audit service" in nobody.stderr


def test_usage_errors_and_files_stay_offline(tmp_path: Path) -> None:
    signer = Signer.generate()
    records = tmp_path / "records.ndjson"
    records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in make_records(signer, 12)))
    pub = tmp_path / "signing.pub"
    pub.write_bytes(signer.verifier.pem())
    # A service in the environment does not turn a file check into a remote one.
    offline = ffaudit(
        "verify", "--pubkey", str(pub), str(records), FFAUDIT_SERVICE_URL="http://127.0.0.1:9"
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    cases = {
        ("verify", str(records), "--stream", "cam-1"): "not with a RECORDS file",
        ("verify", str(records), "--service", "http://x"): "not with a RECORDS file",
        ("verify", str(records)): "Missing option '--pubkey'",
        ("verify",): "name a RECORDS.ndjson file",
        ("verify", "--stream", "a", "--since", "2026-01-01T00:00:00Z"): "a time range",
        ("verify", "--service", "http://x"): "name --stream",
        ("verify", "--stream", "a", "--pubkey", str(pub)): "for files",
    }
    for args, message in cases.items():
        result = ffaudit(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
