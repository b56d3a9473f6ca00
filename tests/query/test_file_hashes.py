"""From a file to its records: GET /v1/events?file_hash= and `ffaudit query --file-hash`
find every record naming a file's SHA-256, as the job's input (file.hash.sha256) or in the
engine's metadata (input_sha256, source_sha256, output_sha256)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer, jwt_token

# Two jobs swapping one uploaded source face into two targets (and a third naming no file).
SOURCE, IN_1, IN_2, OUT_1, OUT_2 = (f"{n:x}" * 64 for n in range(10, 15))


def _job(job: str, target: str, output: str) -> list[AuditEvent]:
    # As engine.jobs.runner records a job: every record carries the target's digest.
    def event(action: EventAction, **metadata: Any) -> AuditEvent:
        return AuditEvent(
            action,
            actor="alice",
            job_id=job,
            target=f"/data/{job}.png",
            file_sha256=target,
            metadata=metadata,
        )

    return [
        event(EventAction.JOB_SUBMITTED, input_sha256=target, source_sha256=SOURCE),
        event(EventAction.JOB_COMPLETED, output_sha256=output, frames=1),
        event(EventAction.INPUT_ERASED, input_sha256=SOURCE, existed=True),
    ]


def _ingest(client: TestClient | Any, base: str) -> None:
    """Register cam-1 and ingest the jobs' records (`client`: a TestClient, or the httpx
    module with the service's URL as `base`)."""
    signer = Signer.generate()
    body = {"stream": "cam-1", "tenant": "acme", "public_key_pem": signer.verifier.pem().decode()}
    admin = bearer(roles=["admin"], amr=["otp"])
    client.post(f"{base}/v1/streams", json=body, headers=admin).raise_for_status()
    sealer = Sealer(
        ChainWriter("cam-1", "acme", signer, policy=CheckpointPolicy(100, None)),
        Pseudonymizer(Keyring.generate(), "acme"),
    )
    events = [
        *_job("j-1", IN_1, OUT_1),
        *_job("j-2", IN_2, OUT_2),
        AuditEvent(EventAction.JOB_SUBMITTED, actor="bob", job_id="j-3"),
    ]
    records = [r.record for e in events for r in sealer.seal(e)]
    ingest = {**bearer(roles=["ingest"]), "content-type": "application/json"}
    client.post(
        f"{base}/v1/streams/cam-1/records", content=orjson.dumps(records), headers=ingest
    ).raise_for_status()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(tmp_path))) as client:
        _ingest(client, "")
        yield client


def _found(page: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(job, action) of each event listed, oldest first."""
    events = sorted(page["events"], key=lambda e: e["sequence"])
    return [(e["record"].get("trace.id"), e["record"]["event.action"]) for e in events]


def test_the_records_of_a_file_wherever_they_name_it(client: TestClient) -> None:
    auditor = bearer()

    def events(*digests: str, **params: Any) -> list[tuple[str | None, str]]:
        got = client.get("/v1/events", params={"file_hash": digests, **params}, headers=auditor)
        assert got.status_code == 200, got.text
        return _found(got.json())

    job_1 = [("j-1", "job.submitted"), ("j-1", "job.completed"), ("j-1", "input.erased")]
    # The job's input: file.hash.sha256 on every record of its job.
    assert events(IN_1) == job_1
    # An output: named by its job's completion only.
    assert events(OUT_2) == [("j-2", "job.completed")]
    # The source face: both jobs' submissions and the erasures of that upload.
    assert events(SOURCE) == [
        ("j-1", "job.submitted"),
        ("j-1", "input.erased"),
        ("j-2", "job.submitted"),
        ("j-2", "input.erased"),
    ]
    # Repeated: any of them; with other filters: all of them.
    assert events(OUT_1, OUT_2) == [("j-1", "job.completed"), ("j-2", "job.completed")]
    assert events(IN_2, SOURCE, action="job.submitted") == [
        ("j-1", "job.submitted"),
        ("j-2", "job.submitted"),
    ]
    assert events("9" * 64) == []
    # Pages of one, through cursors bound to the file filter.
    first = client.get("/v1/events", params={"file_hash": IN_1, "limit": 1}, headers=auditor)
    cursor = first.json()["next_cursor"]
    more = {"file_hash": IN_1, "limit": 5, "cursor": cursor}
    assert len(client.get("/v1/events", params=more, headers=auditor).json()["events"]) == 2
    other = {**more, "file_hash": IN_2}
    assert client.get("/v1/events", params=other, headers=auditor).status_code == 422


@pytest.mark.parametrize(
    "bad",
    [
        IN_1.upper(),  # records write lowercase hex
        IN_1[:63],
        IN_1 + "0",
        "g" * 64,
        "",
        [IN_1, "not-a-digest"],
        [f"{n:064x}" for n in range(21)],  # at most 20 at once
    ],
)
def test_a_malformed_file_hash_is_a_422(client: TestClient, bad: str | list[str]) -> None:
    got = client.get("/v1/events", params={"file_hash": bad}, headers=bearer())
    assert got.status_code == 422, got.text
    assert "file_hash" in got.text


# -- the command line ------------------------------------------------------------------------


def ffaudit(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FFAUDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean,
    )


def test_ffaudit_query_by_file_hash(service_url: tuple[str, AuditSettings]) -> None:
    url, _ = service_url
    _ingest(httpx, url)
    common = ("query", "--service", url, "--token", jwt_token(), "--json")
    # Any case on the command line (some tools print digests in uppercase); repeatable.
    found = ffaudit(*common, "--file-hash", OUT_1.upper(), "--file-hash", OUT_2)
    assert found.returncode == 0, found.stdout + found.stderr
    events = orjson.loads(found.stdout)
    assert sorted(e["record"]["trace.id"] for e in events) == ["j-1", "j-2"]
    assert {e["record"]["event.action"] for e in events} == {"job.completed"}
    # A malformed digest never reaches the service.
    bad = ffaudit(*common, "--file-hash", "abc")
    assert bad.returncode == 2
    assert "not a SHA-256" in bad.stderr
