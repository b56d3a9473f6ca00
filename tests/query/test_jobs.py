"""Engineers list failed jobs (pseudonymised records, the error as the engine recorded it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from tests.apptools import app_settings, bearer

IPS = ("198.51.100.7", "203.0.113.9")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = app_settings(tmp_path)
    keyring = Keyring.generate()
    TenantKeyrings(settings.keyrings_dir).import_keyring("acme", keyring.dumps())
    with TestClient(create_app(settings)) as client:
        signer = Signer.generate()
        body = {
            "stream": "cam-1",
            "tenant": "acme",
            "public_key_pem": signer.verifier.pem().decode(),
        }
        admin = bearer(roles=["admin"], amr=["otp"])
        client.post("/v1/streams", json=body, headers=admin).raise_for_status()
        sealer = Sealer(
            ChainWriter("cam-1", "acme", signer, policy=CheckpointPolicy(100, None)),
            Pseudonymizer(keyring, "acme"),
        )
        events = []
        for n in range(3):
            job = f"j-{n}"
            events.append(
                AuditEvent(
                    EventAction.JOB_SUBMITTED, actor="alice", job_id=job, client_ip=IPS[n % 2]
                )
            )
            failed = n == 1
            events.append(
                AuditEvent(
                    EventAction.JOB_FAILED if failed else EventAction.JOB_COMPLETED,
                    outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
                    actor="alice",
                    job_id=job,
                    error_type="CUDAOutOfMemory" if failed else None,
                    error_message="model inswapper_128 needs 2 GiB" if failed else None,
                )
            )
        records = [r.record for e in events for r in sealer.seal(e)]
        ingest = {**bearer(roles=["ingest"]), "content-type": "application/json"}
        posted = client.post(
            "/v1/streams/cam-1/records", content=orjson.dumps(records), headers=ingest
        )
        posted.raise_for_status()
        yield client


def test_an_engineer_lists_the_failed_jobs(client: TestClient) -> None:
    engineer = bearer(roles=["engineer"])
    failed = client.get("/v1/jobs", params={"outcome": "failure"}, headers=engineer)
    assert failed.status_code == 200, failed.text
    [job] = failed.json()["jobs"]
    assert (job["job_id"], job["outcome"], job["error_type"]) == (
        "j-1",
        "failure",
        "CUDAOutOfMemory",
    )
    assert "2 GiB" in job["error_message"]
    assert job["intact"] is True
    every = client.get("/v1/jobs", headers=engineer).json()["jobs"]
    assert sorted(j["job_id"] for j in every) == ["j-0", "j-1", "j-2"]
    assert "alice" not in str(every)  # pseudonyms only
    # The timeline of that job is open to the engineer too; the event listing is not.
    assert client.get("/v1/jobs/j-1", headers=engineer).json()["outcome"] == "job.failed"
    assert client.get("/v1/events", headers=engineer).status_code == 403
    assert client.get("/v1/jobs", headers=bearer(roles=["ingest"])).status_code == 403


def test_from_an_alert_to_the_records_of_a_client_ip(client: TestClient) -> None:
    # An IP-burst alert shows ffaudit.client.ip_hash: the same records are found by that
    # pseudonym and by the raw address (pseudonymised under every key), and counted by it.
    auditor = bearer()
    by_ip = client.get("/v1/stats", params={"by": "client_ip"}, headers=auditor).json()
    counts = {k: v for k, v in by_ip["counts"].items() if k}
    assert sorted(counts.values()) == [1, 2]
    busiest = max(counts, key=lambda k: counts[k])
    raw = client.get("/v1/events", params={"client_ip": IPS[0]}, headers=auditor).json()
    hashed = client.get("/v1/events", params={"client_ip_hash": busiest}, headers=auditor).json()
    assert [e["id"] for e in raw["events"]] == [e["id"] for e in hashed["events"]]
    assert len(raw["events"]) == 2
    assert {e["record"]["ffaudit.client.ip_hash"] for e in raw["events"]} == {busiest}
    bad = client.get("/v1/events", params={"client_ip_hash": "not-a-pseudonym"}, headers=auditor)
    assert bad.status_code == 422
    streams = client.get("/v1/stats", params={"by": "stream"}, headers=auditor).json()
    assert streams["counts"]["cam-1"] >= 6


def test_a_raw_id_query_names_the_streams_it_could_not_search(
    client: TestClient, tmp_path: Path
) -> None:
    # A second engine with its own pii.key the service does not hold yet.
    signer, other_key = Signer.generate(), Keyring.generate()
    body = {"stream": "cam-2", "tenant": "acme", "public_key_pem": signer.verifier.pem().decode()}
    admin = bearer(roles=["admin"], amr=["otp"])
    client.post("/v1/streams", json=body, headers=admin).raise_for_status()
    sealer = Sealer(
        ChainWriter("cam-2", "acme", signer, policy=CheckpointPolicy(100, None)),
        Pseudonymizer(other_key, "acme"),
    )
    event = AuditEvent(EventAction.JOB_SUBMITTED, actor="alice", job_id="j-9")
    records = [r.record for r in sealer.seal(event)]
    ingest = {**bearer(roles=["ingest"]), "content-type": "application/json"}
    client.post(
        "/v1/streams/cam-2/records", content=orjson.dumps(records), headers=ingest
    ).raise_for_status()
    found = client.get("/v1/events", params={"actor": "alice"}, headers=bearer()).json()
    assert {e["stream"] for e in found["events"]} == {"cam-1"}
    # (The log of the logs is pseudonymised under the service's own key: named too.)
    blind = [s for s in found["coverage"]["not_searchable"] if not s.startswith("ffaudit-")]
    assert blind == ["cam-2"]
    assert len(found["coverage"]["keys"]) == 1
    # Without a raw id there is nothing to cover.
    assert client.get("/v1/events", headers=bearer()).json()["coverage"] is None
    # Once cam-2's key is imported, alice's records there are found too.
    keyrings = TenantKeyrings(client.app.state.services.settings.keyrings_dir)  # type: ignore[attr-defined]
    keyrings.import_keyring("acme", other_key.dumps())
    found = client.get("/v1/events", params={"actor": "alice"}, headers=bearer()).json()
    assert {e["stream"] for e in found["events"]} == {"cam-1", "cam-2"}
    assert [s for s in found["coverage"]["not_searchable"] if not s.startswith("ffaudit-")] == []
