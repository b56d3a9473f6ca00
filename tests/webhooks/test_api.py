"""/v1/webhooks through the service, with its own delivery loop running: roles, tenants,
bad input, test deliveries, restarts, a hanging receiver beside ingest, and the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from audit.app import create_app
from audit.cli import cli
from audit.errors import NotFoundError
from audit.integrity.keys import Signer
from audit.models import WebhookDelivery
from audit.settings import AuditSettings
from tests.apptools import serving
from tests.ingest.conftest import make_records
from tests.webhooks.conftest import (
    Receiver,
    alert_state,
    deliveries,
    open_alert,
    refused_url,
    sessions_for,
    tenant,
    wait_for,
)

SECRET = "w" * 40


def token(tenant_id: str, *roles: str, amr: tuple[str, ...] = ("pwd", "otp")) -> dict[str, str]:
    now = int(time.time())
    claims = {
        "sub": f"{'-'.join(roles) or 'nobody'}-1",
        "tenant": tenant_id,
        "roles": list(roles),
        "iss": "ffaudit-dev",
        "aud": "ffaudit",
        "exp": now + 600,
        "nbf": now - 5,
        "amr": list(amr),
    }
    return {"authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def service_settings(tmp_path: Path, url: str, **overrides: Any) -> AuditSettings:
    values: dict[str, Any] = {
        "database_url": url,
        "forward_enabled": False,
        "jwt_hs256_secret": SECRET,
        "service_keys_dir": tmp_path / "service-keys",
        "keyrings_dir": tmp_path / "keyrings",
        "exports_dir": tmp_path / "exports",
        # A fast loop: the tests wait for what it does, never for how long it takes.
        "webhook_poll_interval_s": 0.05,
        "webhook_backoff_base_s": 0.05,
        "webhook_backoff_cap_s": 0.2,
        "webhook_max_attempts": 100,
        "webhook_timeout_s": 5.0,
        # The test receivers listen on loopback over plain http: allowed explicitly.
        "webhook_allow_http": True,
        "webhook_allowed_destinations": ["127.0.0.1"],
    }
    return AuditSettings(**(values | overrides))


@pytest.fixture
def client(tmp_path: Path, sqlite_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, sqlite_url))) as client:
        yield client


def create(client: TestClient, tenant_id: str, url: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", json={"url": url, **extra}, headers=token(tenant_id, "security")
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def delivery_log(client: TestClient, tenant_id: str, webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(
        f"/v1/webhooks/{webhook_id}/deliveries", headers=token(tenant_id, "security")
    )
    assert response.status_code == 200, response.text
    log: list[dict[str, Any]] = response.json()["deliveries"]
    return log


def test_security_and_mfa_admins_manage_their_own_tenants_webhooks_only(
    client: TestClient, receiver: Receiver
) -> None:
    a, b = tenant(), tenant()
    created = create(client, a, receiver.url, min_severity="high", description="SOC pager")
    assert created["secret"].startswith("whsec_")
    assert (created["url"], created["min_severity"], created["description"]) == (
        receiver.url,
        "high",
        "SOC pager",
    )
    hook = created["id"]
    admin = client.post(
        "/v1/webhooks", json={"url": receiver.url}, headers=token(a, "admin", amr=("otp",))
    )
    assert admin.status_code == 201

    listed = client.get("/v1/webhooks", headers=token(a, "admin")).json()["webhooks"]
    assert {w["id"] for w in listed} == {hook, admin.json()["id"]}
    assert all("secret" not in w for w in listed)  # shown once, at creation only

    for refused in (token(a, "auditor"), token(a, "engineer"), token(a, "ingest")):
        assert client.get("/v1/webhooks", headers=refused).status_code == 403
    no_mfa = token(a, "admin", amr=("pwd",))
    response = client.post("/v1/webhooks", json={"url": receiver.url}, headers=no_mfa)
    assert response.status_code == 403
    assert "second factor" in response.json()["error"]["message"]
    assert client.get("/v1/webhooks").status_code == 401

    # Another tenant sees nothing and reaches nothing: 404 as if it did not exist.
    other = token(b, "security")
    assert client.get("/v1/webhooks", headers=other).json() == {"webhooks": []}
    for method, path in (
        ("DELETE", f"/v1/webhooks/{hook}"),
        ("GET", f"/v1/webhooks/{hook}/deliveries"),
        ("POST", f"/v1/webhooks/{hook}/test"),
    ):
        response = client.request(method, path, headers=other)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["type"] == "NotFoundError"
    assert receiver.received == []

    assert client.delete(f"/v1/webhooks/{hook}", headers=token(a, "security")).status_code == 204
    assert client.delete(f"/v1/webhooks/{hook}", headers=token(a, "security")).status_code == 404
    listed = client.get("/v1/webhooks", headers=token(a, "security")).json()["webhooks"]
    assert [w["id"] for w in listed] == [admin.json()["id"]]

    # The log of the logs has both changes, with who made them.
    changes = client.get(
        "/v1/events", params={"action": "webhook.changed"}, headers=token(a, "auditor")
    ).json()["events"]
    kinds = sorted(e["record"]["ffaudit.metadata"]["change"] for e in changes)
    assert kinds == ["created", "created", "deleted"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://127.0.0.1/hook"},
        {"url": "file:///etc/passwd"},
        {"url": "javascript:alert(1)"},
        {"url": "gopher://127.0.0.1:70/"},
        {"url": "127.0.0.1:8080/hook"},
        {"url": "http://"},
        {"url": "https://user:pw@example.com/hook"},
        {"url": "https://example.com/hook#frag"},
        {"url": ""},
        {"url": "https://example.com/" + "a" * 2100},
        {"url": "https://example.com/hook", "min_severity": "urgent"},
        {"url": "https://example.com/hook", "secret": "mine"},
        {},
    ],
)
def test_bad_webhooks_are_refused_with_422_in_the_error_schema(
    client: TestClient, body: dict[str, Any]
) -> None:
    t = tenant()
    response = client.post("/v1/webhooks", json=body, headers=token(t, "security"))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "InvalidInputError"
    assert error["message"].startswith("body")
    if str(body.get("url", "")).startswith(("ftp:", "file:", "javascript:", "gopher:")):
        assert "the URL must be http:// or https://" in error["message"]
    assert client.get("/v1/webhooks", headers=token(t, "security")).json() == {"webhooks": []}


def test_bad_delivery_log_queries_are_422(client: TestClient, receiver: Receiver) -> None:
    t = tenant()
    hook = create(client, t, receiver.url)["id"]
    for params in ({"state": "lost"}, {"limit": 0}, {"limit": "many"}):
        response = client.get(
            f"/v1/webhooks/{hook}/deliveries", params=params, headers=token(t, "security")
        )
        assert response.status_code == 422, params
        assert response.json()["error"]["type"] == "InvalidInputError"


def test_a_test_delivery_goes_out_through_the_services_loop(
    client: TestClient, receiver: Receiver
) -> None:
    t = tenant()
    created = create(client, t, receiver.url)
    receiver.secrets.append(created["secret"])
    response = client.post(f"/v1/webhooks/{created['id']}/test", headers=token(t, "security"))
    assert response.status_code == 202
    queued = response.json()
    assert (queued["state"], queued["attempts"], queued["kind"]) == ("pending", 0, "webhook.test")
    wait_for(lambda: receiver.delivered(queued["event_id"]) == 1, "the test delivery arrives")
    wait_for(
        lambda: delivery_log(client, t, created["id"])[0]["state"] == "delivered",
        "the log shows it delivered",
    )
    [entry] = delivery_log(client, t, created["id"])
    assert (entry["attempts"], entry["last_status_code"], entry["next_attempt_at"]) == (
        1,
        200,
        None,
    )
    [got] = receiver.received
    assert got.verified
    assert got.body["type"] == "webhook.test"
    assert got.body["alert"] is None
    assert got.body["tenant"] == t


def _row(sessions: sessionmaker[Session], webhook_id: str, alert_id: int) -> WebhookDelivery:
    [row] = [d for d in deliveries(sessions, webhook_id) if d.alert_id == alert_id]
    return row


def test_a_restarted_service_resumes_pending_deliveries_and_never_resends_delivered_ones(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    settings = service_settings(tmp_path, sqlite_url)
    sessions = sessions_for(sqlite_url)
    t = tenant()
    with TestClient(create_app(settings)) as first:
        created = create(first, t, receiver.url)
        receiver.secrets.append(created["secret"])
        hook = created["id"]
        delivered_alert, _ = open_alert(sessions, t)
        sent = _row(sessions, hook, delivered_alert).event_id
        wait_for(lambda: _row(sessions, hook, delivered_alert).state == "delivered", "delivery")
        receiver.default = 503  # the receiver goes down
        pending_alert, _ = open_alert(sessions, t)
        wait_for(lambda: _row(sessions, hook, pending_alert).attempts >= 1, "a failed attempt")
    # Stopped: the second alert's delivery is still owed.
    assert _row(sessions, hook, pending_alert).state == "pending"
    assert alert_state(sessions, pending_alert) == "open"
    receiver.default = 200  # the receiver is back; a new process over the same database
    with TestClient(create_app(settings)):
        wait_for(lambda: _row(sessions, hook, pending_alert).state == "delivered", "resumed")
    owed = _row(sessions, hook, pending_alert).event_id
    assert receiver.delivered(owed) == 1
    assert _row(sessions, hook, pending_alert).attempts >= 2
    assert receiver.requests(sent) == 1  # the delivered one was never sent again
    assert all(r.verified for r in receiver.received)


def test_a_failed_delivery_leaves_the_alert_open_in_the_alerts_api(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = service_settings(tmp_path, sqlite_url, webhook_max_attempts=2)
    sessions = sessions_for(sqlite_url)
    t = tenant()
    with TestClient(create_app(settings)) as client:
        hook = create(client, t, refused_url())["id"]
        alert_id, queued = open_alert(sessions, t)
        assert queued == 1
        wait_for(lambda: delivery_log(client, t, hook)[0]["state"] == "failed", "given up")
        [entry] = delivery_log(client, t, hook)
        assert entry["attempts"] == 2
        assert entry["next_attempt_at"] is None
        assert entry["delivered_at"] is None
        assert "ConnectError" in entry["last_error"]
        listed = client.get(
            "/v1/alerts", params={"state": "open"}, headers=token(t, "security")
        ).json()["alerts"]
        assert [(a["id"], a["state"]) for a in listed] == [(alert_id, "open")]


def test_ingest_is_not_held_up_by_a_hanging_webhook(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    """A broken record opens an alert during ingest; its webhook hangs; ingest goes on."""
    settings = service_settings(tmp_path, sqlite_url, webhook_timeout_s=120.0)
    t = tenant()
    stream = f"cam-{t}"
    signer = Signer.generate()
    records = make_records(signer, 8, stream=stream, tenant=t, every=100, close=False)
    records[1] = {**records[1], "event.outcome": "failure"}  # modified after sealing
    receiver.hold = True
    with TestClient(create_app(settings)) as client:
        created = create(client, t, receiver.url)
        receiver.secrets.append(created["secret"])
        registered = client.post(
            "/v1/streams",
            json={"stream": stream, "tenant": t, "public_key_pem": signer.verifier.pem().decode()},
            headers=token(t, "admin"),
        )
        assert registered.status_code == 201, registered.text
        engine = {**token(t, "ingest"), "content-type": "application/json"}
        first = client.post(
            f"/v1/streams/{stream}/records", content=orjson.dumps(records[:4]), headers=engine
        )
        assert first.status_code == 200, first.text
        assert first.json()["counts"].get("rejected", 0) >= 1
        # The alert's delivery is in flight and the receiver is not answering...
        assert receiver.arrived.wait(timeout=30), "the alert's delivery never went out"
        # ...while ingest carries on and stores the rest.
        rest = client.post(
            f"/v1/streams/{stream}/records", content=orjson.dumps(records[4:]), headers=engine
        )
        assert rest.status_code == 200, rest.text
        assert sum(rest.json()["counts"].values()) == 4  # all stored (waiting behind 2)
        [entry] = delivery_log(client, t, created["id"])
        assert (entry["state"], entry["attempts"]) == ("pending", 0)  # still waiting on it
        receiver.released.set()
        wait_for(
            lambda: delivery_log(client, t, created["id"])[0]["state"] == "delivered",
            "delivered once the receiver answers",
        )
    [got] = receiver.received
    assert got.verified
    assert got.body["tenant"] == t
    assert got.body["alert"]["stream"] == stream


@pytest.fixture
def live_service(tmp_path: Path, sqlite_url: str) -> Iterator[str]:
    """The service on a real port, for the CLI (an HTTP client of it)."""
    with serving(service_settings(tmp_path, sqlite_url), log_level="error") as url:
        yield url


def test_the_cli_manages_webhooks_and_reads_the_delivery_log(
    live_service: str, receiver: Receiver
) -> None:
    t = tenant()
    runner = CliRunner()
    auth = ["--service", live_service, "--token", token(t, "security")["authorization"][7:]]

    def run(*args: str) -> Any:
        result = runner.invoke(cli, [*args, *auth], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    created = orjson.loads(
        run("webhooks", "add", receiver.url, "--min-severity", "critical", "--json")
    )
    receiver.secrets.append(created["secret"])
    hook = created["id"]
    assert hook in run("webhooks", "list")
    queued = orjson.loads(run("webhooks", "test", hook, "--json"))
    wait_for(lambda: receiver.delivered(queued["event_id"]) == 1, "the test delivery arrives")
    wait_for(
        lambda: (
            orjson.loads(run("webhooks", "deliveries", hook, "--json"))[0]["state"] == "delivered"
        ),
        "the log shows it delivered",
    )
    assert "delivered" in run("webhooks", "deliveries", hook)
    assert f"deleted webhook {hook}" in run("webhooks", "delete", hook)
    assert orjson.loads(run("webhooks", "list", "--json")) == []
    with pytest.raises(NotFoundError):
        runner.invoke(cli, ["webhooks", "delete", hook, *auth], catch_exceptions=False)
