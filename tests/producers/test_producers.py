"""The ingest trust boundary, attacked as a network peer or a misbehaving tenant would:
producers bound to a tenant and streams on the forward port, service streams written by the
service alone, alerts that reach only the tenant concerned. Real service, real forward
clients (the engine's fluent-logger based delivery), real sealed records."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit.integrity.chain import ChainWriter, CheckpointPolicy, record_hash
from audit.integrity.events import EventAction
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from engine.transport.forward import DeliveryError, ForwardDelivery, HandshakeError
from tests.apptools import app_settings, bearer, serving

KEY = "forward-shared-s3cret"
ADMIN = {"roles": ["admin"], "amr": ["pwd", "otp"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, url: str, forward_port: int) -> None:
        self.url = url
        self.forward_port = forward_port

    def call(self, method: str, path: str, tenant: str, **kwargs: Any) -> httpx.Response:
        claims = {**ADMIN, "tenant": tenant, **kwargs.pop("claims", {})}
        return httpx.request(
            method, f"{self.url}{path}", headers=bearer(**claims), timeout=30, **kwargs
        )

    def register(self, tenant: str, stream: str, signer: Signer) -> None:
        body = {
            "stream": stream,
            "tenant": tenant,
            "public_key_pem": signer.verifier.pem().decode(),
        }
        self.call("POST", "/v1/streams", tenant, json=body).raise_for_status()

    def producer(self, tenant: str, label: str, streams: list[str]) -> dict[str, Any]:
        answer = self.call(
            "POST", "/v1/producers", tenant, json={"label": label, "streams": streams}
        )
        assert answer.status_code == 201, answer.text
        created: dict[str, Any] = answer.json()
        return created

    def head(self, tenant: str, stream: str) -> int:
        answer = self.call("GET", f"/v1/streams/{stream}", tenant)
        answer.raise_for_status()
        return int(answer.json()["head_sequence"])

    def alerts(self, tenant: str) -> list[dict[str, Any]]:
        answer = self.call("GET", "/v1/alerts", tenant, claims={"roles": ["security"]})
        answer.raise_for_status()
        alerts: list[dict[str, Any]] = answer.json()["alerts"]
        return alerts

    def deliver(self, records: list[dict[str, Any]], producer: dict[str, Any] | None) -> None:
        credentials = (
            {"username": producer["name"], "password": producer["password"]} if producer else {}
        )
        delivery = ForwardDelivery(
            "127.0.0.1", self.forward_port, shared_key=KEY, timeout_s=10, **credentials
        )
        try:
            delivery.send(records)
        finally:
            delivery.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    settings = app_settings(
        tmp_path, forward_enabled=True, forward_port=port, forward_shared_key=KEY
    )
    with serving(settings) as url:
        yield Service(url, port)


def sealed(signer: Signer, tenant: str, stream: str, n: int) -> list[dict[str, Any]]:
    sealer = Sealer(
        ChainWriter(stream, tenant, signer, policy=CheckpointPolicy(100, None)),
        Pseudonymizer(Keyring.generate(), tenant),
    )
    event = AuditEvent(action=EventAction.JOB_SUBMITTED, actor="alice", job_id="j-1")
    return [r.record for _ in range(n) for r in sealer.seal(event)]


def test_a_producer_writes_its_own_streams(service: Service) -> None:
    signer = Signer.generate()
    service.register("acme", "cam-1", signer)
    producer = service.producer("acme", "engine-1", ["cam-*"])
    assert producer["name"] == "acme/engine-1"
    service.deliver(sealed(signer, "acme", "cam-1", 5), producer)
    assert service.head("acme", "cam-1") == 5
    listed = service.call("GET", "/v1/producers", "acme").json()["producers"]
    assert [p["name"] for p in listed] == ["acme/engine-1"]
    assert "password" not in listed[0]
    assert "secret" not in str(listed)


def test_no_credentials_no_handshake(service: Service) -> None:
    signer = Signer.generate()
    service.register("acme", "cam-1", signer)
    with pytest.raises(HandshakeError, match="username/password mismatch"):
        service.deliver(sealed(signer, "acme", "cam-1", 1), None)
    guessed = {"name": "acme/engine-1", "password": "guess"}
    with pytest.raises(HandshakeError, match="username/password mismatch"):
        service.deliver(sealed(signer, "acme", "cam-1", 1), guessed)
    assert service.head("acme", "cam-1") == 0


def test_another_tenants_producer_cannot_poison_a_chain(service: Service) -> None:
    """The attack of the review: a copy of tenant B's record, recomputed hashes, sent first.
    With producers bound to tenants it is refused before anything is stored, so B's genuine
    record still takes its place and B's chain verifies."""
    victim = Signer.generate()
    service.register("beta", "b-cam", victim)
    genuine = sealed(victim, "beta", "b-cam", 3)
    attacker = service.producer("acme", "engine-1", ["*"])
    forged = sealed(Signer.generate(), "beta", "b-cam", 3)  # well-formed, the wrong key
    with pytest.raises(DeliveryError):
        service.deliver(forged, attacker)
    assert service.head("beta", "b-cam") == 0  # nothing stored, nothing acked
    service.deliver(genuine, service.producer("beta", "engine-b", ["b-cam"]))
    assert service.head("beta", "b-cam") == 3
    verified = service.call("POST", "/v1/verify", "beta", json={"stream": "b-cam"}).json()
    assert verified["ok"] is True
    # The owner is told its stream was targeted, without learning who the other tenant is;
    # the attacker's own tenant is told that its producer misbehaved.
    [owner_alert] = [a for a in service.alerts("beta") if a["rule"] == "unauthorized_producer"]
    assert "another tenant" in owner_alert["title"]
    assert "acme" not in str(owner_alert)
    [own] = [a for a in service.alerts("acme") if a["rule"] == "unauthorized_producer"]
    assert "acme/engine-1" in own["title"]


def test_a_misbehaving_producer_of_the_same_stream_cannot_poison_it(service: Service) -> None:
    """The same attack by a producer that may write the stream (a compromised second engine
    of the tenant): its well-formed forgery of records 4..5 arrives first and is accepted
    provisionally; the genuine records, with their signed checkpoint, settle it."""
    signer = Signer.generate()
    service.register("beta", "b-cam", signer)
    sealer = Sealer(
        ChainWriter("b-cam", "beta", signer, policy=CheckpointPolicy(3, None)),
        Pseudonymizer(Keyring.generate(), "beta"),
    )
    event = AuditEvent(action=EventAction.JOB_SUBMITTED, actor="alice", job_id="j-1")
    genuine = [r.record for _ in range(6) for r in sealer.seal(event)]
    assert [r["event.action"] for r in genuine[:3]][-1] == "audit.checkpoint"
    engine = service.producer("beta", "engine-b", ["b-cam"])
    insider = service.producer("beta", "engine-x", ["b-cam"])
    service.deliver(genuine[:3], engine)  # signed through 3
    forged, prev = [], genuine[2]["event.hash"]
    for record in genuine[3:5]:
        body = {k: v for k, v in record.items() if k != "event.hash"}
        body.update({"event.outcome": "failure", "ffaudit.prev": prev})
        body["event.hash"] = record_hash(body)
        forged.append(body)
        prev = body["event.hash"]
    service.deliver(forged, insider)
    assert service.head("beta", "b-cam") == 5  # provisional: nothing can tell yet
    service.deliver(genuine[3:], engine)
    assert service.head("beta", "b-cam") == genuine[-1]["event.sequence"]
    verified = service.call("POST", "/v1/verify", "beta", json={"stream": "b-cam"}).json()
    [stream] = verified["streams"]
    assert stream["matches_head"] is True
    blamed = {(f["sequence"], f["record_id"]) for f in stream["failures"]}
    assert blamed == {(r["event.sequence"], f"b-cam:{r['event.sequence']}") for r in forged}
    events = service.call(
        "GET", "/v1/events", "beta", params={"stream": "b-cam", "verdict": "rejected"}
    ).json()["events"]
    assert {(e["sequence"], e["failure"]) for e in events} == {(4, "forged"), (5, "forged")}
    assert "chain_attack" in {a["rule"] for a in service.alerts("beta")}


def test_a_producer_is_held_to_its_stream_patterns(service: Service) -> None:
    signer = Signer.generate()
    service.register("acme", "cam-1", signer)
    service.register("acme", "billing", signer)
    producer = service.producer("acme", "engine-1", ["cam-*"])
    with pytest.raises(DeliveryError):
        service.deliver(sealed(signer, "acme", "billing", 2), producer)
    assert service.head("acme", "billing") == 0
    # A message mixing an allowed and a forbidden stream is refused whole.
    mixed = sealed(signer, "acme", "cam-1", 2) + sealed(signer, "acme", "billing", 1)
    with pytest.raises(DeliveryError):
        service.deliver(mixed, producer)
    assert service.head("acme", "cam-1") == 0


def test_stream_names_are_per_tenant_and_reveal_nothing_across_tenants(service: Service) -> None:
    """Tenant A registering a name tenant B uses (or will use) neither blocks B nor learns
    anything: each tenant has its own `cam-1`, with its own key, head and records."""
    a_key, b_key = Signer.generate(), Signer.generate()
    service.register("beta", "cam-1", b_key)
    body = {"stream": "cam-1", "tenant": "acme", "public_key_pem": a_key.verifier.pem().decode()}
    first = service.call("POST", "/v1/streams", "acme", json=body)
    assert first.status_code == 201, first.text  # as for a name nobody has
    again = service.call("POST", "/v1/streams", "acme", json=body)
    assert again.status_code == 201  # idempotent
    other_key = {**body, "public_key_pem": Signer.generate().verifier.pem().decode()}
    assert service.call("POST", "/v1/streams", "acme", json=other_key).status_code == 409
    service.deliver(sealed(a_key, "acme", "cam-1", 3), service.producer("acme", "e", ["cam-1"]))
    service.deliver(sealed(b_key, "beta", "cam-1", 5), service.producer("beta", "e", ["cam-1"]))
    assert (service.head("acme", "cam-1"), service.head("beta", "cam-1")) == (3, 5)
    for tenant in ("acme", "beta"):
        verified = service.call("POST", "/v1/verify", tenant, json={"stream": "cam-1"}).json()
        assert verified["ok"] is True, verified
    # The reserved prefix of the service's own streams stays reserved in every tenant.
    squat = {**body, "stream": "ffaudit-service.beta.host-1"}
    assert service.call("POST", "/v1/streams", "acme", json=squat).status_code == 403


def test_an_ingest_token_writes_its_tenants_streams_named_by_its_claim(service: Service) -> None:
    signer = Signer.generate()
    for tenant, stream in (("acme", "cam-1"), ("acme", "billing"), ("beta", "cam-1")):
        service.register(tenant, stream, signer)

    def post(stream: str, records: list[dict[str, Any]], **claims: Any) -> httpx.Response:
        return service.call(
            "POST",
            f"/v1/streams/{stream}/records",
            "acme",
            json=records,
            claims={"roles": ["ingest"], "amr": [], **claims},
        )

    # Beta's cam-1 cannot be reached with acme's token: records claiming beta are refused.
    refused = post("cam-1", sealed(signer, "beta", "cam-1", 2))
    assert refused.status_code == 403, refused.text
    assert service.head("beta", "cam-1") == 0
    # A token bound by its `streams` claim writes those streams only.
    bound = {"streams": ["cam-*"]}
    assert post("billing", sealed(signer, "acme", "billing", 1), **bound).status_code == 403
    assert post("cam-1", sealed(signer, "acme", "cam-1", 2), **bound).status_code == 200
    assert service.head("acme", "cam-1") == 2
    malformed = post("cam-1", [], streams="cam-1")
    assert malformed.status_code == 401, malformed.text


def test_revoked_producers_are_refused(service: Service) -> None:
    signer = Signer.generate()
    service.register("acme", "cam-1", signer)
    producer = service.producer("acme", "engine-1", ["cam-1"])
    records = sealed(signer, "acme", "cam-1", 4)
    service.deliver(records[:2], producer)
    # Another tenant's admin cannot revoke it (404, as for a missing one); its own can.
    path = f"/v1/producers/{producer['id']}/revoke"
    assert service.call("POST", path, "beta").status_code == 404
    assert service.call("POST", path, "acme").json()["revoked_at"] is not None
    with pytest.raises(HandshakeError):
        service.deliver(records[2:], producer)
    assert service.head("acme", "cam-1") == 2


def test_producers_are_managed_by_administrators_with_a_second_factor(service: Service) -> None:
    body = {"label": "engine-1", "streams": ["cam-*"]}
    no_mfa = {"roles": ["admin"], "amr": ["pwd"]}
    for claims in (no_mfa, {"roles": ["security"]}, {"roles": ["ingest"]}):
        answer = service.call("POST", "/v1/producers", "acme", json=body, claims=claims)
        assert answer.status_code == 403, claims
    assert service.call("POST", "/v1/producers", "acme", json=body).status_code == 201
    assert service.call("POST", "/v1/producers", "acme", json=body).status_code == 409
    # The same label in another tenant is another producer: nothing leaks across tenants.
    assert service.call("POST", "/v1/producers", "beta", json=body).status_code == 201
    bad = {"label": "engine-1", "streams": ["../x"]}
    assert service.call("POST", "/v1/producers", "acme", json=bad).status_code == 422
    changes = service.call(
        "GET",
        "/v1/events",
        "acme",
        params={"action": "producer.changed"},
        claims={"roles": ["auditor"]},
    ).json()["events"]
    assert [e["record"]["ffaudit.metadata"]["change"] for e in changes] == ["created"]


def test_service_streams_are_written_by_the_service_alone(service: Service) -> None:
    signer = Signer.generate()
    stream = "ffaudit-service.acme.replica-x"
    # Nobody may register a name under the service's prefix (squatting would block it).
    register = {
        "stream": stream,
        "tenant": "acme",
        "public_key_pem": signer.verifier.pem().decode(),
    }
    assert service.call("POST", "/v1/streams", "acme", json=register).status_code == 403
    # An ingest token may not post into the tenant's log of the logs.
    ingest = service.call(
        "POST",
        f"/v1/streams/{stream}/records",
        "acme",
        json=sealed(signer, "acme", stream, 1),
        claims={"roles": ["ingest"]},
    )
    assert ingest.status_code == 403
    # Nor may a producer bound to every stream of the tenant, over the forward port.
    producer = service.producer("acme", "engine-1", ["ffaudit-*"])
    with pytest.raises(DeliveryError):
        service.deliver(sealed(signer, "acme", stream, 1), producer)


def test_records_of_an_unknown_stream_alert_the_producers_tenant_not_the_claimed_one(
    service: Service,
) -> None:
    producer = service.producer("acme", "engine-1", ["new-*"])
    own = sealed(Signer.generate(), "acme", "new-stream", 2)
    service.deliver(own, producer)  # quarantined (and acked: kept as evidence)
    assert [a["rule"] for a in service.alerts("acme")] == ["unknown_stream"]
    # Records claiming another tenant are not this producer's to send: refused whole.
    claims_beta = sealed(Signer.generate(), "beta", "new-stream", 2)
    with pytest.raises(DeliveryError):
        service.deliver(claims_beta, producer)
    assert sorted(a["rule"] for a in service.alerts("acme")) == [
        "unauthorized_producer",
        "unknown_stream",
    ]
    assert service.alerts("beta") == []


def test_serve_refuses_an_unauthenticated_forward_port_off_loopback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FFAUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/c.db",
        "FFAUDIT_FORWARD_HOST": "0.0.0.0",  # noqa: S104 (the point of the test; never bound)
        "FFAUDIT_JWT_HS256_SECRET": "s" * 40,
    }
    run = subprocess.run(
        [sys.executable, "-m", "audit", "serve", "--no-migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "without producer authentication" in run.stderr
    assert not (tmp_path / "c.db").exists()


def test_passwords_are_encrypted_at_rest_and_survive_a_key_rotation(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from audit.cli import cli

    signer = Signer.generate()
    service.register("acme", "cam-1", signer)
    producer = service.producer("acme", "engine-1", ["cam-1"])
    database = (tmp_path / "audit.db").read_bytes() + (tmp_path / "audit.db-wal").read_bytes()
    assert producer["password"].encode() not in database
    keys = tmp_path / "service-keys" / "secrets.keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("FFAUDIT_DATABASE_URL", f"sqlite:///{tmp_path}/audit.db")
    monkeypatch.setenv("FFAUDIT_SERVICE_KEYS_DIR", str(tmp_path / "service-keys"))
    rotated = CliRunner().invoke(cli, ["db", "rotate-secrets"])
    assert rotated.exit_code == 0, rotated.output
    assert "re-encrypted 1 producer password(s)" in rotated.output
    assert len(keys.read_bytes().split()) == 2
    # The running service reads the new key by itself; the producer logs in as before.
    service.deliver(sealed(signer, "acme", "cam-1", 2), producer)
    assert service.head("acme", "cam-1") == 2


def test_the_cli_adds_lists_and_revokes_producers(service: Service) -> None:
    from click.testing import CliRunner

    from audit.cli import cli
    from tests.apptools import jwt_token

    token = jwt_token(tenant="acme", **ADMIN)

    def ffaudit(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--service", service.url, "--token", token])
        assert result.exit_code == 0, result.output
        return result.output

    added = ffaudit("producers", "add", "engine-9", "--stream", "cam-*", "--stream", "door")
    assert "FFENGINE_FORWARD_USERNAME=acme/engine-9" in added
    assert "FFENGINE_FORWARD_PASSWORD=" in added
    listed = ffaudit("producers", "list")
    assert "acme/engine-9" in listed
    assert "active" in listed
    assert "cam-*, door" in listed
    producer_id = listed.splitlines()[1].split()[0]
    assert "revoked at" in ffaudit("producers", "revoke", producer_id)
    assert "revoked" in ffaudit("producers", "list")


def test_fluent_bit_style_entries_with_float_integers_are_stored_and_verify(
    service: Service,
) -> None:
    """What a Fluent Bit tail of an NDJSON spool sends: v1.5 entries ([[EventTime, metadata],
    record]) in Forward mode, and, as Go's JSON decoder gives them, the integers as floats."""
    import asyncio

    from tests.ingest.forward_client import Credentials, ForwardClient, event_time

    signer = Signer.generate()
    service.register("acme", "cam-1", signer)
    producer = service.producer("acme", "bit-1", ["cam-*"])
    records = sealed(signer, "acme", "cam-1", 3)
    as_floats = [
        {k: float(v) if type(v) is int else v for k, v in record.items()} for record in records
    ]
    assert type(as_floats[0]["event.sequence"]) is float

    async def ship() -> None:
        credentials = Credentials(KEY, username=producer["name"], password=producer["password"])
        client = await ForwardClient.connect(service.forward_port, credentials=credentials)
        entries = [
            ([event_time(1_700_000_000 + i), {"file": "spool"}], r) for i, r in enumerate(as_floats)
        ]
        await client.send_forward("ffaudit.spool", entries, chunk="c-1")
        assert await client.read_ack() == "c-1"
        await client.close()

    asyncio.run(ship())
    assert service.head("acme", "cam-1") == 3
    verified = service.call("POST", "/v1/verify", "acme", json={"stream": "cam-1"}).json()
    assert verified["ok"] is True
