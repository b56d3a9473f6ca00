"""SSRF: the destinations a webhook manager may make the service POST to."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.webhooks.delivery import WebhookDeliverer
from audit.webhooks.destinations import REFUSED
from tests.webhooks.conftest import (
    Receiver,
    add_webhook,
    deliveries,
    open_alert,
    sessions_for,
    tenant,
)
from tests.webhooks.test_api import service_settings, token
from tests.webhooks.test_delivery import settings

INTERNAL = [
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/hook",
    "https://192.168.0.1/hook",
    "https://[::1]:9200/ffaudit-events/_doc",
    "https://localhost/hook",
    "https://0.0.0.0/hook",
    "https://127.1/hook",
    "https://2130706433/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://[fd00::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "http://example.com/hook",  # plain http: only with FFAUDIT_WEBHOOK_ALLOW_HTTP
]


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_destinations_are_refused_at_registration(
    tmp_path: Path, sqlite_url: str, url: str
) -> None:
    strict = service_settings(
        tmp_path, sqlite_url, webhook_allow_http=False, webhook_allowed_destinations=[]
    )
    with TestClient(create_app(strict)) as client:
        t = tenant()
        answer = client.post("/v1/webhooks", json={"url": url}, headers=token(t, "security"))
        assert answer.status_code == 403, answer.text
        assert "destination not allowed" in answer.json()["error"]["message"]
        assert client.get("/v1/webhooks", headers=token(t, "security")).json()["webhooks"] == []


def test_the_operator_allowlist_admits_an_internal_receiver(
    tmp_path: Path, sqlite_url: str
) -> None:
    allowed = service_settings(
        tmp_path, sqlite_url, webhook_allow_http=False, webhook_allowed_destinations=["10.0.0.0/8"]
    )
    with TestClient(create_app(allowed)) as client:
        t = tenant()
        answer = client.post(
            "/v1/webhooks", json={"url": "https://10.1.2.3/hook"}, headers=token(t, "security")
        )
        assert answer.status_code == 201, answer.text


async def test_every_delivery_checks_the_destination_again(
    sqlite_url: str, receiver: Receiver
) -> None:
    """A destination allowed when registered but not when sent (its DNS now answers with an
    internal address, or the operator narrowed the allowlist) is not contacted, and the log
    says only that it was refused."""
    sessions = sessions_for(sqlite_url)
    t = tenant()
    webhook = add_webhook(sessions, t, receiver.url)  # loopback, allowed by the test setup
    open_alert(sessions, t)
    strict = WebhookDeliverer(settings(sqlite_url, webhook_allowed_destinations=[]), sessions)
    try:
        assert await strict.run_once() == 1
    finally:
        await strict.close()
    assert receiver.received == []
    [row] = deliveries(sessions, webhook.id)
    assert row.last_error == REFUSED
    assert row.last_status_code is None


def test_signing_secrets_are_encrypted_at_rest_and_legacy_ones_sealed_at_start(
    tmp_path: Path, sqlite_url: str
) -> None:
    from audit.db.base import utcnow
    from audit.db.session import make_engine, session_factory
    from audit.models import Webhook
    from audit.secretbox import SecretBox

    engine = make_engine(sqlite_url)
    sessions = session_factory(engine)
    t = tenant()
    legacy = "whsec_" + "ab" * 32
    with sessions.begin() as session:  # as written before revision 0009: in clear
        session.add(
            Webhook(
                id="c" * 32,
                tenant_id=t,
                url="https://198.51.100.10/hook",
                min_severity="low",
                description="",
                secret=legacy,
                created_at=utcnow(),
            )
        )
    config = service_settings(
        tmp_path,
        sqlite_url,
        webhook_delivery_enabled=False,
        webhook_allowed_destinations=["198.51.100.0/24"],  # documentation range: not public
    )
    with TestClient(create_app(config)) as client:
        created = client.post(
            "/v1/webhooks",
            json={"url": "https://198.51.100.20/hook"},
            headers=token(t, "security"),
        ).json()
    engine.dispose()  # the last connection closes: SQLite checkpoints and drops its WAL
    database = (tmp_path / "control.db").read_bytes()
    wal = tmp_path / "control.db-wal"
    database += wal.read_bytes() if wal.exists() else b""
    assert created["secret"].encode() not in database
    assert legacy.encode() not in database
    box = SecretBox.load(config.service_keys_dir, create=False)
    with sessions() as session:
        stored = {w.id: w.secret for w in session.query(Webhook).all()}
    assert box.open(stored["c" * 32]) == legacy
    assert box.open(stored[created["id"]]) == created["secret"]
