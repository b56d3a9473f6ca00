"""GDPR erasure end to end: an engine seals with the vault, the service ingests, an admin
erases a subject; the link is gone and every chain still verifies. SQLite + SQL store, and
PostgreSQL + Elasticsearch."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from audit.app import create_app
from audit.cli import cli
from audit.db.session import upgrade
from audit.errors import SubjectVaultUnavailableError
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.integrity.seal import AuditEvent
from audit.query.keyrings import TenantKeyrings
from audit.settings import AuditSettings
from audit.subjects.vault import SqlSubjectVault
from engine.auditing import AuditTrail, build_audit_trail
from engine.settings import EngineSettings
from tests.apptools import app_settings, bearer
from tests.integrity.conftest import T0


@dataclass
class Env:
    client: TestClient
    settings: AuditSettings
    engine: EngineSettings
    tenant: str
    stream: str
    keyring: Keyring

    def token(self, **overrides: Any) -> dict[str, str]:
        return bearer(**{"tenant": self.tenant, **overrides})

    def admin(self, **overrides: Any) -> dict[str, str]:
        return self.token(**{"sub": "dpo-1", "roles": ["admin"], **overrides})

    def ingest(self) -> list[dict[str, Any]]:
        """Everything the engine's file sink holds, posted to the service (resending what
        was already stored is harmless: duplicates)."""
        lines = self.engine.audit_file.read_bytes().splitlines()  # type: ignore[union-attr]
        records = [orjson.loads(line) for line in lines]
        self.client.post(
            f"/v1/streams/{self.stream}/records",
            content=orjson.dumps(records),
            headers={**self.token(roles=["ingest"]), "content-type": "application/json"},
        ).raise_for_status()
        return records

    def events(self, **params: Any) -> list[dict[str, Any]]:
        response = self.client.get("/v1/events", params=params, headers=self.token())
        assert response.status_code == 200, response.text
        return list(response.json()["events"])


def run_engine(settings: EngineSettings, events: list[AuditEvent], *, final: bool) -> AuditTrail:
    trail = build_audit_trail(settings)
    trail.emitter.start()
    for event in events:
        trail.emitter.emit(event)
    trail.emitter.close(final=final)
    assert trail.emitter.stats().invalid == 0, trail.emitter.stats().last_error
    trail.emitter._spool.close()  # what the engine process's exit does: a restart may follow
    return trail


def job_events(actor: str, email: str, n: int, start: int = 0) -> list[AuditEvent]:
    return [
        AuditEvent(
            action=EventAction.FACE_SWAPPED if i % 2 else EventAction.JOB_STARTED,
            outcome=Outcome.SUCCESS,
            timestamp=T0 + timedelta(seconds=start + i),
            actor=actor,
            session=f"s-{actor}",
            client_ip="198.51.100.7",
            target=f"/in/{actor}-{i}.png",
            job_id=f"job-{actor}-{start}",
            error_message=f"notified {email}" if i == 0 else None,
            metadata={"email": email, "frame": i},
        )
        for i in range(n)
    ]


@pytest.fixture(params=["sqlite", "postgres+elasticsearch"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    tenant, stream = f"t{uuid.uuid4().hex[:10]}", f"cam-{uuid.uuid4().hex[:8]}"
    store: dict[str, Any] = {}
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path}/audit.db"
        upgrade(database_url)
    else:
        database_url = request.getfixturevalue("postgres_url")
        store = {
            "elasticsearch_url": request.getfixturevalue("elasticsearch_url"),
            "elasticsearch_index_prefix": request.getfixturevalue("fresh_es_prefix"),
        }
    settings = app_settings(tmp_path, database_url, **store)
    engine = EngineSettings(
        work_dir=tmp_path / "engine",
        keys_dir=tmp_path / "engine" / "keys",
        spool_dir=tmp_path / "engine" / "spool",
        audit_file=tmp_path / "records.ndjson",
        stream=stream,
        tenant=tenant,
        checkpoint_every=5,
        subject_vault_url=database_url,  # the service's control database
    )
    trail = run_engine(
        engine,
        job_events("alice", "a.liddell@example.com", 6) + job_events("bob", "rob@example.com", 4),
        final=False,
    )
    with TestClient(create_app(settings)) as client:
        env = Env(client, settings, engine, tenant, stream, trail.keys.keyring)
        client.post(
            "/v1/streams",
            headers=env.admin(),
            json={
                "stream": stream,
                "tenant": tenant,
                "public_key_pem": trail.keys.signer.verifier.pem().decode(),
            },
        ).raise_for_status()
        env.ingest()
        TenantKeyrings(settings.keyrings_dir).import_keyring(tenant, trail.keys.keyring.dumps())
        yield env


def _vault_rows(env: Env, kind: str) -> int:
    engine = create_engine(env.settings.database_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM subject_keys WHERE tenant = :t AND kind = :k")
            return int(conn.execute(query, {"t": env.tenant, "k": kind}).scalar_one())
    finally:
        engine.dispose()


def test_erasure_unlinks_the_subject_and_every_chain_still_verifies(env: Env) -> None:
    records = [r for r in env.ingest() if r.get("user.hash")]
    alice = env.events(actor="alice", limit=100)
    assert len(alice) == 6
    stored = {e["record"]["user.hash"] for e in alice}
    assert len(stored) == 1
    [alice_hash] = stored
    # The keyring alone does not give the stored pseudonym: only the vault links them.
    keyring_only = Pseudonymizer(env.keyring, env.tenant).candidates(PiiKind.USER, "alice")
    assert alice_hash not in keyring_only.values()
    email_hash = alice[0]["record"]["ffaudit.metadata"]["email_hash"]
    assert f"[email:{email_hash[:16]}]" in orjson.dumps(alice).decode()  # scrubbed text too
    assert _vault_rows(env, "user") == 2  # alice, bob

    erased = env.client.post("/v1/subjects/erase", json={"subject": "alice"}, headers=env.admin())
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert (body["tenant"], body["kind"], body["entries_destroyed"]) == (env.tenant, "user", 1)
    assert body["legacy_records"] is False

    # The same query finds nothing; the subject's own view is empty; bob is untouched.
    assert env.events(actor="alice") == []
    own = env.client.get("/v1/events", headers=env.token(sub="alice", roles=["subject"]))
    assert own.json()["events"] == []
    assert len(env.events(actor="bob", limit=100)) == 4
    assert _vault_rows(env, "user") == 1
    vault = SqlSubjectVault.from_url(env.settings.database_url)
    try:
        querier = Pseudonymizer(env.keyring, env.tenant, vault=vault)
        assert alice_hash not in querier.candidates(PiiKind.USER, "alice").values()
    finally:
        vault.close()
    # The records are untouched and every chain verifies: the stream and the log of the logs.
    assert sum(r.get("user.hash") == alice_hash for r in records) == 6
    verified = env.client.post(
        "/v1/verify", json={"since": "2000-01-01T00:00:00Z"}, headers=env.token()
    )
    assert verified.json()["ok"] is True, verified.text
    assert {s["stream"] for s in verified.json()["streams"]} >= {env.stream}

    # The erasure is in the log of the logs, with its id and count, never the raw id or a
    # pseudonym of the subject; and a tombstone row keeps the evidence.
    servicelog = env.client.app.state.services.servicelog  # type: ignore[attr-defined]
    logged = env.events(stream=servicelog.stream_for(env.tenant), action="subject.erased")
    assert len(logged) == 1
    meta = logged[0]["record"]["ffaudit.metadata"]
    assert meta == {
        "erasure_id": body["erasure_id"],
        "kind": "user",
        "entries_destroyed": 1,
        "legacy_records": False,
    }
    text_of_log = orjson.dumps(logged).decode()
    assert "alice" not in text_of_log
    assert alice_hash not in text_of_log
    assert not any(p in text_of_log for p in keyring_only.values())
    tombstones = env.client.get("/v1/subjects/erasures", headers=env.token()).json()
    assert [t["erasure_id"] for t in tombstones["erasures"]] == [body["erasure_id"]]

    # The e-mail address is a subject of its own.
    assert _vault_rows(env, "email") == 2
    by_mail = env.client.post(
        "/v1/subjects/erase",
        json={"subject": " A.Liddell@EXAMPLE.com", "kind": "email"},
        headers=env.admin(),
    )
    assert by_mail.json()["entries_destroyed"] == 1
    assert by_mail.json()["legacy_records"] is None
    assert _vault_rows(env, "email") == 1

    # Seen again (the engine restarts and continues its chain), alice gets a new pseudonym,
    # unrelated to the erased one; queries by her raw id find only the new records.
    run_engine(env.engine, job_events("alice", "a.liddell@example.com", 2, start=100), final=True)
    env.ingest()
    again = env.events(actor="alice")
    assert len(again) == 2
    assert {e["record"]["user.hash"] for e in again}.isdisjoint({alice_hash})
    assert env.client.post("/v1/verify", json={"stream": env.stream}, headers=env.token()).json()[
        "ok"
    ]


def test_only_admins_of_the_tenant_erase_and_bad_input_is_refused(env: Env) -> None:
    def erase(headers: dict[str, str], body: Any) -> Any:
        return env.client.post("/v1/subjects/erase", json=body, headers=headers)

    who = {"subject": "alice"}
    for refused, status in (
        (env.token(), 403),  # an auditor
        (env.token(roles=["subject"], sub="alice"), 403),  # the subject itself
        (env.admin(amr=["pwd"]), 403),  # an admin without a second factor
        ({}, 401),
    ):
        response = erase(refused, who)
        assert response.status_code == status
        assert response.json()["error"]["type"] in ("ForbiddenError", "AuthenticationError")
    # An admin of another tenant acts on that tenant only (which has no keyring here).
    other = erase(env.admin(tenant="other-tenant"), who)
    assert other.status_code == 409
    # ...and even with the same keyring imported there, it cannot reach this tenant's vault.
    TenantKeyrings(env.settings.keyrings_dir).import_keyring("other-tenant", env.keyring.dumps())
    other = erase(env.admin(tenant="other-tenant"), who)
    assert other.status_code == 200
    assert (other.json()["tenant"], other.json()["entries_destroyed"]) == ("other-tenant", 0)
    assert _vault_rows(env, "user") == 2
    assert len(env.events(actor="alice")) == 6
    for bad in (
        {"subject": ""},
        {"subject": "   "},
        {"subject": "alice", "kind": "client_ip"},
        {"subject": "alice", "kind": "ip"},
        {"subject": "alice", "tenant": "other"},
        {"kind": "user"},
        {"subject": "x" * 513},
        {"subject": "\ud800"},
    ):
        # ASCII JSON with escapes: a lone surrogate travels as an escape, as a client may send.
        response = env.client.post(
            "/v1/subjects/erase",
            content=json.dumps(bad),
            headers={**env.admin(), "content-type": "application/json"},
        )
        assert response.status_code == 422, bad
        assert response.json()["error"]["type"] == "InvalidInputError"
    assert _vault_rows(env, "user") == 2
    assert (
        env.client.get("/v1/subjects/erasures", headers=env.token(roles=["engineer"])).status_code
        == 403
    )
    assert env.client.get("/v1/subjects/erasures", headers=env.token()).json() == {"erasures": []}


def test_erase_subject_on_the_command_line(env: Env) -> None:
    alice_hash = env.events(actor="alice")[0]["record"]["user.hash"]
    environ = {
        "FFAUDIT_DATABASE_URL": env.settings.database_url,
        "FFAUDIT_KEYRINGS_DIR": str(env.settings.keyrings_dir),
        "FFAUDIT_SERVICE_KEYS_DIR": str(env.settings.service_keys_dir),
        "FFAUDIT_ELASTICSEARCH_URL": env.settings.elasticsearch_url or "",
        "FFAUDIT_ELASTICSEARCH_INDEX_PREFIX": env.settings.elasticsearch_index_prefix,
    }
    runner = CliRunner()
    args = ["erase-subject", "--tenant", env.tenant, "--subject", "alice", "--json"]
    result = runner.invoke(cli, args, env=environ, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout)
    assert out["entries_destroyed"] == 1
    assert env.events(actor="alice") == []
    # Recorded in a service stream of the command line's own, which verifies.
    stream = f"{env.settings.service_stream}-cli.{env.tenant}."
    logged = [e for e in env.events(action="subject.erased") if e["stream"].startswith(stream)]
    assert [e["record"]["ffaudit.metadata"]["erasure_id"] for e in logged] == [out["erasure_id"]]
    assert "alice" not in orjson.dumps(logged).decode()
    assert alice_hash not in orjson.dumps(logged).decode()
    verified = env.client.post(
        "/v1/verify", json={"stream": logged[0]["stream"]}, headers=env.token()
    )
    assert verified.json()["ok"] is True
    again = runner.invoke(cli, args[:-1], env=environ, catch_exceptions=False)
    assert again.exit_code == 0
    assert "0 vault entries destroyed" in again.stdout
    blank = runner.invoke(cli, [*args[:4], "--subject", " "], env=environ)
    assert blank.exit_code == 2


def test_records_sealed_before_the_vault_stay_linkable_and_the_erasure_says_so(
    env: Env,
) -> None:
    # An engine that ran before the vault was configured (scheme v1, keyring pseudonyms).
    legacy = env.engine.model_copy(
        update={
            "subject_vault_url": None,
            "stream": f"{env.stream}-old",
            "spool_dir": env.engine.spool_dir.with_name("spool-old"),
            "audit_file": env.engine.audit_file.with_name("old.ndjson"),  # type: ignore[union-attr]
        }
    )
    trail = run_engine(
        legacy, job_events("alice", "a.liddell@example.com", 2, start=50), final=True
    )
    env.client.post(
        "/v1/streams",
        headers=env.admin(),
        json={
            "stream": legacy.stream,
            "tenant": env.tenant,
            "public_key_pem": trail.keys.signer.verifier.pem().decode(),
        },
    ).raise_for_status()
    old_records = [orjson.loads(line) for line in legacy.audit_file.read_bytes().splitlines()]  # type: ignore[union-attr]
    env.client.post(
        f"/v1/streams/{legacy.stream}/records",
        content=orjson.dumps(old_records),
        headers={**env.token(roles=["ingest"]), "content-type": "application/json"},
    ).raise_for_status()
    assert len(env.events(actor="alice", limit=100)) == 8  # v1 and v2 records both match
    body = env.client.post(
        "/v1/subjects/erase", json={"subject": "alice"}, headers=env.admin()
    ).json()
    assert body["entries_destroyed"] == 1
    assert body["legacy_records"] is True
    left = env.events(actor="alice", limit=100)
    assert {e["stream"] for e in left} == {legacy.stream}  # the documented limit


def test_an_engine_refuses_to_start_on_an_unmigrated_vault(tmp_path: Path) -> None:
    settings = EngineSettings(
        work_dir=tmp_path / "engine",
        keys_dir=tmp_path / "keys",
        spool_dir=tmp_path / "spool",
        subject_vault_url=f"sqlite:///{tmp_path}/not-migrated.db",
    )
    with pytest.raises(SubjectVaultUnavailableError, match="ffaudit db upgrade"):
        build_audit_trail(settings)
    assert not (tmp_path / "keys").exists()
