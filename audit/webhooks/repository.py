"""Every query on webhooks and their deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from audit.models import Webhook, WebhookDelivery


class Claimed(NamedTuple):
    """What an attempt needs, read while the lease is taken (no ORM object leaves the
    session, so sending never touches the database)."""

    id: int
    event_id: str
    url: str
    secret: str
    payload: str
    attempts: int  # before this attempt


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # -- endpoints --------------------------------------------------------------------------

    def add(self, webhook: Webhook) -> None:
        self.session.add(webhook)
        self.session.flush()

    def get(self, tenant_id: str, webhook_id: str) -> Webhook | None:
        """A live webhook of the tenant; another tenant's, or a deleted one, is None."""
        return self.session.scalars(
            select(Webhook).where(
                Webhook.id == webhook_id,
                Webhook.tenant_id == tenant_id,
                Webhook.deleted_at.is_(None),
            )
        ).first()

    def all(self) -> list[Webhook]:
        return list(self.session.scalars(select(Webhook).order_by(Webhook.id)))

    def for_tenant(self, tenant_id: str) -> list[Webhook]:
        return list(
            self.session.scalars(
                select(Webhook)
                .where(Webhook.tenant_id == tenant_id, Webhook.deleted_at.is_(None))
                .order_by(Webhook.created_at, Webhook.id)
            )
        )

    def mark_deleted(self, webhook: Webhook, now: datetime) -> int:
        """Delete softly (the log stays); its unsent deliveries fail now. Returns how many."""
        webhook.deleted_at = now
        result = self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook.id, WebhookDelivery.state == "pending")
            .values(state="failed", next_attempt_at=None, last_error="webhook deleted")
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- deliveries -------------------------------------------------------------------------

    def add_delivery(self, delivery: WebhookDelivery) -> None:
        self.session.add(delivery)

    def deliveries(
        self, webhook_id: str, *, state: str | None, limit: int
    ) -> list[WebhookDelivery]:
        query = (
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        return list(self.session.scalars(query))

    def due_ids(self, now: datetime, limit: int) -> list[int]:
        """Pending deliveries whose time has come and whose lease (if any) ran out.

        FOR UPDATE SKIP LOCKED on PostgreSQL: a replica claiming at the same moment skips
        these rows instead of waiting for them (SQLite has one writer and ignores it)."""
        query = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state == "pending",
                WebhookDelivery.next_attempt_at <= now,
                or_(
                    WebhookDelivery.claimed_until.is_(None),
                    WebhookDelivery.claimed_until <= now,
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.session.scalars(query))

    def claim(
        self, ids: Sequence[int], token: str, now: datetime, until: datetime
    ) -> list[Claimed]:
        """Take the lease on those of `ids` still free (a compare-and-set: safe even where
        row locks are not, e.g. two processes on one SQLite file) and read what to send."""
        if not ids:
            return []
        self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id.in_(ids),
                WebhookDelivery.state == "pending",
                or_(
                    WebhookDelivery.claimed_until.is_(None),
                    WebhookDelivery.claimed_until <= now,
                ),
            )
            .values(claimed_until=until, claim_token=token)
            .execution_options(synchronize_session=False)
        )
        rows = self.session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.event_id,
                Webhook.url,
                Webhook.secret,
                WebhookDelivery.payload,
                WebhookDelivery.attempts,
            )
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.claim_token == token)
            .order_by(WebhookDelivery.id)
        )
        return [Claimed(*row) for row in rows]

    def record_attempt(
        self,
        delivery_id: int,
        token: str,
        *,
        attempts: int,
        state: str,
        at: datetime,
        next_attempt_at: datetime | None,
        status_code: int | None,
        error: str | None,
    ) -> bool:
        """Write an attempt's outcome and release the lease, if we still hold it."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.claim_token == token,
                WebhookDelivery.state == "pending",  # a delete meanwhile failed it: keep that
            )
            .values(
                attempts=attempts,
                state=state,
                last_attempt_at=at,
                next_attempt_at=next_attempt_at,
                last_status_code=status_code,
                last_error=error,
                delivered_at=at if state == "delivered" else None,
                claimed_until=None,
                claim_token=None,
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    def release(self, ids: Sequence[int], token: str) -> None:
        """Give leases back unused (shutdown): the next scan may send them at once."""
        self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids), WebhookDelivery.claim_token == token)
            .values(claimed_until=None, claim_token=None)
            .execution_options(synchronize_session=False)
        )
