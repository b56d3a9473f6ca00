"""The retention API as administrators (and everyone else) meet it, and the command line
against a running service."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from tests.apptools import app_settings, bearer
from tests.conftest import register_stream
from tests.retention.conftest import HELD_JOB, OLD, RECENT


def token(**overrides: Any) -> dict[str, str]:
    """An administrator of acme, with a second factor, unless `overrides` say otherwise."""
    return bearer(**{"sub": "root", "roles": ["admin"], **overrides})


def old_records(signer: Signer, keyring: Keyring, stream: str, tenant: str) -> list[Any]:
    sealer = Sealer(
        ChainWriter(stream, tenant, signer, policy=CheckpointPolicy(5, None)),
        Pseudonymizer(keyring, tenant),
    )
    out: list[Any] = []
    for start in [*OLD, RECENT]:
        for i in range(4):
            event = AuditEvent(
                action=EventAction.JOB_STARTED,
                outcome=Outcome.SUCCESS,
                timestamp=start + timedelta(hours=9, minutes=i),
                actor="alice",
                job_id=HELD_JOB if start == OLD[1] else "job-1",
            )
            out += [r.record for r in sealer.seal(event)]
    return out + [r.record for r in sealer.close(RECENT + timedelta(hours=10))]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = app_settings(
        tmp_path, retention_archive_dir=tmp_path / "archives", retention_interval_s=0
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_policies_are_admin_only_and_never_below_the_floor(client: TestClient) -> None:
    url = "/v1/retention/policies"
    shown = client.get(url, headers=token()).json()
    assert shown["min_days"] == 180
    assert {p["action_class"]: p["days"] for p in shown["policies"]} == {
        "processing": 180,
        "models": 180,
        "security": 180,
        "audit": 180,
    }
    low = client.put(f"{url}/processing", json={"days": 30}, headers=token())
    assert low.status_code == 422
    assert low.json()["error"]["type"] == "InvalidInputError"
    assert "floor of 180 days" in low.json()["error"]["message"]
    assert client.put(f"{url}/nonsense", json={"days": 400}, headers=token()).status_code == 422
    assert client.put(f"{url}/processing", json={"days": "x"}, headers=token()).status_code == 422

    auditor = token(sub="aud-1", roles=["auditor"])
    no_mfa = token(amr=["pwd"])
    for headers in (auditor, no_mfa, token(roles=["security", "engineer", "subject"])):
        assert client.put(f"{url}/security", json={"days": 400}, headers=headers).status_code == 403
        assert client.get(url, headers=headers).status_code == 403
        assert client.post("/v1/retention/run", json={}, headers=headers).status_code == 403
    assert client.put(f"{url}/security", json={"days": 400}).status_code == 401

    changed = client.put(f"{url}/security", json={"days": 400}, headers=token())
    assert changed.status_code == 200, changed.text
    assert changed.json()["days"] == 400
    shown = client.get(url, headers=token()).json()
    assert {p["action_class"]: p["default"] for p in shown["policies"]}["security"] is False
    # Another tenant's administrator sees its own defaults, not acme's policy.
    other = client.get(url, headers=token(tenant="globex")).json()
    assert {p["action_class"]: p["days"] for p in other["policies"]}["security"] == 180

    stream = client.app.state.services.servicelog.stream_for("acme")  # type: ignore[attr-defined]
    logged = client.get(
        "/v1/events",
        params={"stream": stream, "action": "retention.policy_changed"},
        headers=auditor,
    ).json()["events"]
    assert [e["record"]["ffaudit.metadata"] for e in logged] == [
        {"action_class": "security", "new_days": 400, "old_days": 180}
    ]


def test_holds_are_tenant_scoped_and_actor_ids_stay_pseudonymous(client: TestClient) -> None:
    keyring = Keyring.generate()
    client.app.state.services.retention.keyrings.import_keyring(  # type: ignore[attr-defined]
        "acme", keyring.dumps()
    )
    holds = "/v1/retention/holds"
    placed = client.post(
        holds, json={"scope": "actor", "actor": "alice", "reason": "case 9"}, headers=token()
    )
    assert placed.status_code == 201, placed.text
    hold = placed.json()
    assert hold["values"] == [Pseudonymizer(keyring, "acme").pseudonym(PiiKind.USER, "alice")]
    assert "alice" not in placed.text

    bad = [
        {"scope": "job", "reason": "no job named"},
        {"scope": "tenant", "job": "j", "reason": "tenant holds name nothing"},
        {"scope": "actor", "actor_hash": "XYZ", "reason": "not a pseudonym"},
        {"scope": "job", "job": "j"},
    ]
    for body in bad:
        answer = client.post(holds, json=body, headers=token())
        assert answer.status_code == 422, body
        assert answer.json()["error"]["type"] == "InvalidInputError"
    unknown = client.post(
        holds, json={"scope": "stream", "stream": "cam-x", "reason": "r"}, headers=token()
    )
    assert unknown.status_code == 404
    auditor = token(roles=["auditor"])
    refused = client.post(holds, json={"scope": "tenant", "reason": "r"}, headers=auditor)
    assert refused.status_code == 403

    release = f"{holds}/{hold['id']}/release"
    globex = token(tenant="globex")
    assert client.get(holds, headers=globex).json() == []
    assert client.post(release, json={"reason": "r"}, headers=globex).status_code == 404
    assert client.post(release, json={"reason": "done"}, headers=token()).status_code == 200
    assert client.post(release, json={"reason": "again"}, headers=token()).status_code == 409
    assert client.get(holds, headers=token()).json() == []
    listed = client.get(holds, params={"active_only": "false"}, headers=token()).json()
    assert [(h["id"], h["release_reason"]) for h in listed] == [(hold["id"], "done")]


def test_the_command_line_runs_restores_and_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.cli.demo import ServiceThread

    for name, value in {
        "FFAUDIT_SERVICE_KEYS_DIR": tmp_path / "service-keys",
        "FFAUDIT_KEYRINGS_DIR": tmp_path / "keyrings",
        "FFAUDIT_RETENTION_ARCHIVE_DIR": tmp_path / "archives",
        "FFAUDIT_RETENTION_INTERVAL_S": "0",
    }.items():
        monkeypatch.setenv(name, str(value))
    service = ServiceThread(tmp_path / "svc")  # open mode: the tenant is named
    service.start()
    try:
        signer = Signer.generate()
        register_stream(service.url, "cam-1", "acme", signer.verifier.pem().decode())
        httpx.post(
            f"{service.url}/v1/streams/cam-1/records",
            content=orjson.dumps(old_records(signer, Keyring.generate(), "cam-1", "acme")),
            headers={"content-type": "application/json"},
        ).raise_for_status()

        def ffaudit(*args: str) -> subprocess.CompletedProcess[str]:
            where = ("--service", service.url, "--tenant", "acme")
            return subprocess.run(
                [sys.executable, "-m", "audit", "retention", *args, *where],
                capture_output=True,
                text=True,
                check=False,
            )

        placed = ffaudit("holds", "place", "--job", HELD_JOB, "--reason", "case 1")
        assert placed.returncode == 0, placed.stderr
        dry = ffaudit("run", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        plan = orjson.loads(dry.stdout)["tenants"][0]["days"]
        assert sum(d["purgeable"] for d in plan) == 2
        ran = ffaudit("run")
        assert ran.returncode == 0, ran.stderr
        assert sum(d["purged"] for d in orjson.loads(ran.stdout)["tenants"][0]["days"]) == 2
        archives = orjson.loads(ffaudit("archives").stdout)
        assert len(archives) == 2
        restored = ffaudit("restore", str(archives[0]["id"]))
        assert restored.returncode == 0, restored.stderr
        assert orjson.loads(restored.stdout)["restored"] == archives[0]["records"]
        verified = httpx.post(
            f"{service.url}/v1/verify", params={"tenant": "acme"}, json={"stream": "cam-1"}
        ).json()
        assert verified["ok"], verified
        low = ffaudit("policies", "--set", "processing=10")
        assert low.returncode == 2
        assert "floor" in low.stderr
        assert ffaudit("restore", "999").returncode == 2
    finally:
        service.stop()
