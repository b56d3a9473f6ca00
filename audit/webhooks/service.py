"""Webhook delivery of alerts (outbox: deliveries are rows written with the alert).

Opening an alert and queueing its deliveries happen in one transaction
(`enqueue_deliveries`), so an alert is never committed without them and a crash loses
neither. The body of each delivery is frozen then; the delivery loop
(audit.webhooks.delivery) sends it later, in its own task, never on the ingest path.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.orm import Session, sessionmaker

from audit.db.base import utcnow
from audit.errors import NotFoundError
from audit.models import Alert, Webhook, WebhookDelivery
from audit.secretbox import SecretBox, is_sealed
from audit.webhooks.repository import WebhookRepository
from audit.webhooks.schemas import (
    SEVERITY_RANK,
    DeliveryList,
    DeliveryOut,
    DeliveryState,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from audit.webhooks.signing import new_secret

ALERT_OPENED = "alert.opened"
WEBHOOK_TEST = "webhook.test"


def enqueue_deliveries(session: Session, alert: Alert) -> int:
    """Queue the alert for every webhook of its tenant, in the caller's transaction (so an
    alert is never committed without its deliveries); returns how many were queued."""
    if alert.tenant_id is None:
        return 0  # not attributable to a tenant (e.g. an unknown stream): no tenant's hooks
    session.flush()  # the alert's id goes into the payload
    # An unknown severity counts as the highest: better one alert too many than one lost.
    rank = SEVERITY_RANK.get(alert.severity, max(SEVERITY_RANK.values()))
    repo = WebhookRepository(session)
    now = utcnow()
    queued = 0
    for webhook in repo.for_tenant(alert.tenant_id):
        if rank < SEVERITY_RANK[webhook.min_severity]:
            continue
        event_id = str(uuid.uuid4())
        body = _body(ALERT_OPENED, event_id, webhook, now, alert=_alert_fields(alert))
        repo.add_delivery(_delivery(webhook, event_id, ALERT_OPENED, body, now, alert.id))
        queued += 1
    return queued


def _alert_fields(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule,
        "severity": alert.severity,
        "state": alert.state,
        "title": alert.title,
        "detail": alert.detail,
        "count": alert.count,
        "stream": alert.stream_id,
        "first_seen": alert.first_seen,
        "last_seen": alert.last_seen,
    }


def _body(
    kind: str, event_id: str, webhook: Webhook, now: datetime, *, alert: dict[str, Any] | None
) -> str:
    document = {
        "type": kind,
        "event_id": event_id,
        "created_at": now,
        "tenant": webhook.tenant_id,
        "webhook_id": webhook.id,
        "alert": alert,
    }
    return orjson.dumps(document, option=orjson.OPT_UTC_Z).decode()


def _delivery(
    webhook: Webhook, event_id: str, kind: str, body: str, now: datetime, alert_id: int | None
) -> WebhookDelivery:
    return WebhookDelivery(
        webhook_id=webhook.id,
        tenant_id=webhook.tenant_id,
        alert_id=alert_id,
        event_id=event_id,
        kind=kind,
        payload=body,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


class WebhookService:
    """Tenants' webhook endpoints and their delivery logs (synchronous: routes call it in a
    worker thread)."""

    def __init__(self, sessions: sessionmaker[Session], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box

    def create(self, tenant_id: str, request: WebhookCreate) -> WebhookCreated:
        """The answer carries the signing secret in clear, this once; the database keeps it
        encrypted."""
        secret = new_secret()
        webhook = Webhook(
            id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            url=request.url,
            min_severity=request.min_severity,
            description=request.description,
            secret=self._box.seal(secret),
            created_at=utcnow(),
        )
        with self._sessions.begin() as session:
            WebhookRepository(session).add(webhook)
        return WebhookCreated(**_out(webhook).model_dump(), secret=secret)

    def reencrypt(self) -> int:
        """Every stored secret under the box's first key (after a key rotation)."""
        with self._sessions.begin() as session:
            webhooks = WebhookRepository(session).all()
            for webhook in webhooks:
                webhook.secret = self._box.rotate(webhook.secret)
            return len(webhooks)

    def seal_legacy_secrets(self) -> int:
        """Encrypt secrets stored in clear before revision 0009; returns how many."""
        with self._sessions.begin() as session:
            legacy = [w for w in WebhookRepository(session).all() if not is_sealed(w.secret)]
            for webhook in legacy:
                webhook.secret = self._box.seal(webhook.secret)
            return len(legacy)

    def list(self, tenant_id: str) -> WebhookList:
        with self._sessions() as session:
            return WebhookList(
                webhooks=[_out(w) for w in WebhookRepository(session).for_tenant(tenant_id)]
            )

    def delete(self, tenant_id: str, webhook_id: str) -> int:
        """Returns how many unsent deliveries were given up."""
        with self._sessions.begin() as session:
            repo = WebhookRepository(session)
            return repo.mark_deleted(_get(repo, tenant_id, webhook_id), utcnow())

    def deliveries(
        self, tenant_id: str, webhook_id: str, *, state: DeliveryState | None, limit: int
    ) -> DeliveryList:
        with self._sessions() as session:
            repo = WebhookRepository(session)
            _get(repo, tenant_id, webhook_id)
            rows = repo.deliveries(webhook_id, state=state, limit=limit)
            return DeliveryList(deliveries=[delivery_out(d) for d in rows])

    def queue_test(self, tenant_id: str, webhook_id: str) -> DeliveryOut:
        now = utcnow()
        with self._sessions.begin() as session:
            repo = WebhookRepository(session)
            webhook = _get(repo, tenant_id, webhook_id)
            event_id = str(uuid.uuid4())
            body = _body(WEBHOOK_TEST, event_id, webhook, now, alert=None)
            delivery = _delivery(webhook, event_id, WEBHOOK_TEST, body, now, None)
            repo.add_delivery(delivery)
            session.flush()
            return delivery_out(delivery)


def _get(repo: WebhookRepository, tenant_id: str, webhook_id: str) -> Webhook:
    webhook = repo.get(tenant_id, webhook_id)
    if webhook is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    return webhook


def _out(webhook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=webhook.id,
        url=webhook.url,
        min_severity=webhook.min_severity,
        description=webhook.description,
        created_at=webhook.created_at,
    )


def delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        event_id=row.event_id,
        kind=row.kind,
        alert_id=row.alert_id,
        state=row.state,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.state == "pending" else None,
        created_at=row.created_at,
        last_attempt_at=row.last_attempt_at,
        delivered_at=row.delivered_at,
    )
