"""One open alert per incident, even when two replicas raise it at the same instant."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.repository import AlertRepository
from audit.db.base import utcnow
from audit.db.session import upgrade
from audit.models import Alert, WebhookDelivery
from tests.webhooks.conftest import add_webhook, refused_url, sessions_for


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/control.db"
        upgrade(url)
        return url
    return str(request.getfixturevalue("fresh_postgres_url"))


def raise_it(sessions: sessionmaker[Session], tenant: str, key: str) -> int:
    with sessions.begin() as session:
        alert = AlertRepository(session).raise_alert(
            rule="integrity_failure",
            severity="critical",
            title="chain broken on cam-1",
            dedup_key=key,
            tenant_id=tenant,
            stream_id="cam-1",
        )
        return alert.id


def rows(sessions: sessionmaker[Session], key: str) -> list[tuple[int, str, int, int]]:
    """(id, state, count, deliveries queued) of every alert with this dedup_key."""
    with sessions() as session:
        found = []
        for alert in session.scalars(
            select(Alert).where(Alert.dedup_key == key).order_by(Alert.id)
        ):
            queued = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.alert_id == alert.id)
            ).all()
            found.append((alert.id, alert.state, alert.count, len(queued)))
        return found


@pytest.fixture
def both_select_first(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Neither replica inserts before both have looked for the open alert and found none:
    the race the unlocked select cannot settle. Yields, per insert, whether it opened."""
    barrier = threading.Barrier(2)
    waited: set[int] = set()
    opened: list[bool] = []
    original = AlertRepository._open

    def contended(self: AlertRepository, **values: Any) -> Alert | None:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait(timeout=30)
        alert = original(self, **values)
        opened.append(alert is not None)
        return alert

    monkeypatch.setattr(AlertRepository, "_open", contended)
    return opened


def test_two_replicas_raising_one_incident_open_one_alert(
    url: str, both_select_first: list[bool]
) -> None:
    tenant, key = f"t-{uuid.uuid4().hex[:10]}", f"integrity_failure:{uuid.uuid4().hex}"
    replicas = [sessions_for(url), sessions_for(url)]  # an engine each: two replicas
    add_webhook(replicas[0], tenant, refused_url())
    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(lambda s: raise_it(s, tenant, key), replicas))
    # Both inserted; one opened the alert, the other found it and counted its sighting.
    assert sorted(both_select_first) == [False, True]
    assert ids[0] == ids[1]
    assert rows(replicas[0], key) == [(ids[0], "open", 2, 1)]  # deliveries queued once


def test_a_resolved_alert_is_followed_by_a_new_one(url: str) -> None:
    tenant, key = f"t-{uuid.uuid4().hex[:10]}", f"integrity_failure:{uuid.uuid4().hex}"
    sessions = sessions_for(url)
    add_webhook(sessions, tenant, refused_url())
    first = raise_it(sessions, tenant, key)
    assert raise_it(sessions, tenant, key) == first
    with sessions.begin() as session:
        assert AlertRepository(session).transition(
            tenant, first, to="resolved", allowed_from=("open",), at=utcnow()
        )
    second = raise_it(sessions, tenant, key)
    assert second != first
    assert rows(sessions, key) == [(first, "resolved", 2, 1), (second, "open", 1, 1)]


def test_the_database_refuses_a_second_unresolved_alert(url: str) -> None:
    key = f"integrity_failure:{uuid.uuid4().hex}"
    sessions = sessions_for(url)

    def row(state: str) -> Alert:
        return Alert(
            rule="integrity_failure", severity="high", state=state, title="t", dedup_key=key
        )

    with sessions.begin() as session:
        session.add_all([row("resolved"), row("resolved"), row("acknowledged")])
    with pytest.raises(sqlalchemy.exc.IntegrityError), sessions.begin() as session:
        session.add(row("open"))
