"""A real HTTP receiver of webhooks on 127.0.0.1, and control databases built by the
migrations, shared by the webhook suites."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.repository import AlertRepository
from audit.db.session import make_engine, session_factory, upgrade
from audit.errors import WebhookSignatureError
from audit.models import Alert, Webhook, WebhookDelivery
from audit.secretbox import SecretBox
from audit.settings import AuditSettings
from audit.webhooks.schemas import Severity, WebhookCreate
from audit.webhooks.service import WebhookService
from audit.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass
class Received:
    event_id: str
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]
    verified: bool
    status: int


@dataclass
class Receiver:
    """Verifies every request's signature with the secrets it knows, answers 401 to a bad
    one, otherwise the next scripted status (then `default`). `hold` makes it hang until
    released, as a receiver that is slow or stuck."""

    url: str = ""
    secrets: list[str] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    default: int = 200
    hold: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, raw: bytes, headers: dict[str, str]) -> int:
        self.arrived.set()
        if self.hold:
            self.released.wait(timeout=120)
        verified = False
        for secret in self.secrets:
            try:
                verify_signature(secret, headers.get(SIGNATURE_HEADER.lower(), ""), raw, 300)
            except WebhookSignatureError:
                continue
            verified = True
        with self.lock:
            status = 401 if not verified else (self.script.pop(0) if self.script else self.default)
            self.received.append(
                Received(
                    event_id=headers.get(EVENT_ID_HEADER.lower(), ""),
                    body=orjson.loads(raw),
                    raw=raw,
                    headers=headers,
                    verified=verified,
                    status=status,
                )
            )
        return status

    def delivered(self, event_id: str) -> int:
        """How many requests carrying this event id the receiver accepted."""
        with self.lock:
            return sum(1 for r in self.received if r.event_id == event_id and r.status < 300)

    def requests(self, event_id: str) -> int:
        with self.lock:
            return sum(1 for r in self.received if r.event_id == event_id)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = state.answer(raw, headers)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default backlog of 5 resets concurrent senders
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ffaudit"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.released.set()
    server.shutdown()
    server.server_close()


def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/control.db"
    upgrade(url)
    return url


def sessions_for(url: str) -> sessionmaker[Session]:
    return session_factory(make_engine(url))


def add_webhook(
    sessions: sessionmaker[Session], tenant_id: str, url: str, min_severity: Severity = "low"
) -> Webhook:
    box = SecretBox.load(AuditSettings().service_keys_dir)  # the deliverers' default too
    created = WebhookService(sessions, box).create(
        tenant_id, WebhookCreate(url=url, min_severity=min_severity)
    )
    with sessions() as session:
        webhook = session.get(Webhook, created.id)
        assert webhook is not None
        assert webhook.secret != created.secret  # stored encrypted
        assert box.open(webhook.secret) == created.secret
    # Detached from its session: this sets the clear secret on the test's copy only, for
    # receivers that verify signatures with it.
    webhook.secret = created.secret
    return webhook


def open_alert(
    sessions: sessionmaker[Session], tenant_id: str | None, severity: str = "critical"
) -> tuple[int, int]:
    """Open an alert the one way alerts are opened (its deliveries are queued in the same
    transaction); returns (alert id, deliveries queued for it)."""
    with sessions.begin() as session:
        alert = AlertRepository(session).raise_alert(
            rule="integrity_failure",
            severity=severity,
            title="chain broken on cam-1",
            dedup_key=f"integrity_failure:{uuid.uuid4().hex}",
            tenant_id=tenant_id,
            stream_id="cam-1",
            detail={"kind": "modified", "sequence": 7},
        )
        session.flush()
        alert_id = alert.id
    with sessions() as session:
        queued = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.alert_id == alert_id)
        ).all()
        return alert_id, len(queued)


def deliveries(sessions: sessionmaker[Session], webhook_id: str) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == webhook_id)
                .order_by(WebhookDelivery.id)
            )
        )


def alert_state(sessions: sessionmaker[Session], alert_id: int) -> str:
    with sessions() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert.state


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition the service reaches on its own (its background loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)
