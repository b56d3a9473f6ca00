"""The alert API as security teams, auditors and other tenants use it."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from audit.alerts.kinds import RuleId
from audit.alerts.scheduler import AlertScheduler
from audit.alerts.service import raise_event_alert
from audit.app import create_app
from audit.db.base import utcnow
from audit.errors import StoreUnavailableError
from audit.models import Alert
from audit.settings import AuditSettings
from audit.store.protocol import EventStore
from audit.store.query import EventQuery
from tests.apptools import app_settings, bearer

RULE = {"name": "spraying", "group_by": "user.hash", "window_s": 60, "threshold": 3}


def token(*roles: str, tenant: str = "acme", mfa: bool = True) -> dict[str, str]:
    return bearer(
        sub=f"{'-'.join(roles) or 'nobody'}-1",
        tenant=tenant,
        roles=list(roles),
        amr=["pwd", "otp"] if mfa else ["pwd"],
    )


SECURITY, AUDITOR, ADMIN = token("security"), token("auditor"), token("admin")


@dataclass
class Api:
    client: TestClient
    settings: AuditSettings

    def raise_alert(
        self, tenant: str = "acme", rule: RuleId = RuleId.INTEGRITY_FAILURE, group: str = "g"
    ) -> int:
        with self.client.app.state.services.sessions.begin() as session:  # type: ignore[attr-defined]
            return raise_event_alert(
                session,
                self.settings,
                rule=rule,
                title=f"{rule} on {group}",
                tenant_id=tenant,
                stream_id="cam-1",
                group=group,
            ).id

    def service_log(self, tenant: str, action: str) -> list[dict[str, Any]]:
        store: EventStore = self.client.app.state.services.store  # type: ignore[attr-defined]
        query = EventQuery(tenant=tenant, actions=(action,), order="asc")
        page = self.client.portal.call(functools.partial(store.search, query, limit=100))  # type: ignore[union-attr]
        return [e.record.get("ffaudit.metadata", {}) for e in page.events]

    def tick(self, scheduler: AlertScheduler, seconds_from_now: float) -> None:
        now = utcnow() + timedelta(seconds=seconds_from_now)
        self.client.portal.call(functools.partial(scheduler.tick, now))  # type: ignore[union-attr]


@contextlib.contextmanager
def running(tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    # The tests tick the scheduler themselves.
    settings = app_settings(tmp_path, alert_evaluation_enabled=False, **overrides)
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with running(tmp_path) as api:
        yield api


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"]["type"])


def test_roles(api: Api) -> None:
    alert = api.raise_alert()
    c = api.client
    assert c.get("/v1/alerts").status_code == 401
    for reader in (AUDITOR, SECURITY, ADMIN):
        assert [a["id"] for a in c.get("/v1/alerts", headers=reader).json()["alerts"]] == [alert]
    for outsider in (token("engineer"), token("subject"), token("ingest")):
        assert error(c.get("/v1/alerts", headers=outsider), 403) == "ForbiddenError"
    assert error(c.post(f"/v1/alerts/{alert}/acknowledge", headers=AUDITOR), 403)
    assert error(c.post("/v1/alert-rules", headers=AUDITOR, json=RULE), 403)
    assert c.post(f"/v1/alerts/{alert}/acknowledge", headers=SECURITY).status_code == 200
    assert c.post(f"/v1/alerts/{alert}/resolve", headers=ADMIN).status_code == 200


def test_other_tenants_alerts_and_rules_are_not_found(api: Api) -> None:
    ours = api.raise_alert("acme")
    theirs = api.raise_alert("globex")
    rule = api.client.post("/v1/alert-rules", headers=SECURITY, json=RULE).json()["id"]
    c, globex = api.client, token("security", tenant="globex")
    assert [a["id"] for a in c.get("/v1/alerts", headers=globex).json()["alerts"]] == [theirs]
    assert error(c.get(f"/v1/alerts/{ours}", headers=globex), 404) == "NotFoundError"
    assert error(c.post(f"/v1/alerts/{ours}/acknowledge", headers=globex), 404)
    assert error(c.post(f"/v1/alerts/{ours}/resolve", headers=globex), 404)
    assert c.get("/v1/alert-rules", headers=globex).json()["custom"] == []
    assert error(c.get(f"/v1/alert-rules/{rule}", headers=globex), 404)
    assert error(c.put(f"/v1/alert-rules/{rule}", headers=globex, json=RULE), 404)
    assert error(c.delete(f"/v1/alert-rules/{rule}", headers=globex), 404)
    assert c.get(f"/v1/alerts/{ours}", headers=SECURITY).json()["state"] == "open"


def test_state_transitions_and_the_log_of_the_logs(api: Api) -> None:
    c = api.client
    one, two = api.raise_alert(group="one"), api.raise_alert(group="two")
    acked = c.post(f"/v1/alerts/{one}/acknowledge", headers=SECURITY).json()
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_at"] is not None
    assert error(c.post(f"/v1/alerts/{one}/acknowledge", headers=SECURITY), 409) == "ConflictError"
    resolved = c.post(f"/v1/alerts/{one}/resolve", headers=SECURITY).json()
    assert (resolved["state"], resolved["resolved_at"] is not None) == ("resolved", True)
    assert error(c.post(f"/v1/alerts/{one}/resolve", headers=SECURITY), 409) == "ConflictError"
    assert error(c.post(f"/v1/alerts/{one}/acknowledge", headers=SECURITY), 409)
    # Resolving without acknowledging first (a false positive, say) is allowed; the reason
    # goes into the log of the logs.
    why = {"reason": "false positive: a planned key rotation"}
    assert c.post(f"/v1/alerts/{two}/resolve", headers=ADMIN, json=why).json()["state"] == (
        "resolved"
    )
    assert error(c.post("/v1/alerts/999999/resolve", headers=SECURITY), 404)
    acks = api.service_log("acme", "alert.acknowledged")
    resolutions = api.service_log("acme", "alert.resolved")
    assert [m["alert_id"] for m in acks] == [one]
    assert [m["alert_id"] for m in resolutions] == [one, two]
    assert acks[0]["rule"] == "integrity_failure"
    assert "reason" not in resolutions[0]
    assert resolutions[1]["reason"] == why["reason"]


def test_filters_and_paging(api: Api) -> None:
    c = api.client
    ids = [
        api.raise_alert(rule=r, group=str(i))
        for i, r in enumerate(
            [
                RuleId.INTEGRITY_FAILURE,
                RuleId.FORK,
                RuleId.SEQUENCE_GAP,
                RuleId.UNKNOWN_STREAM,
                RuleId.FORK,
            ]
        )
    ]
    c.post(f"/v1/alerts/{ids[2]}/acknowledge", headers=SECURITY).raise_for_status()

    def found(**params: Any) -> list[int]:
        response = c.get("/v1/alerts", headers=AUDITOR, params=params)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["alerts"]]

    assert found(rule="fork") == [ids[4], ids[1]]
    assert found(severity="critical") == [ids[4], ids[1], ids[0]]
    assert found(state="acknowledged") == [ids[2]]
    assert found(state=["open", "acknowledged"], severity="high") == [ids[3], ids[2]]
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = c.get("/v1/alerts", headers=AUDITOR, params=params).json()
        seen += [a["id"] for a in page["alerts"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids[::-1]
    assert error(c.get("/v1/alerts", headers=AUDITOR, params={"cursor": "x1"}), 422)
    assert error(c.get("/v1/alerts", headers=AUDITOR, params={"state": "closed"}), 422)
    assert error(c.get("/v1/alerts", headers=AUDITOR, params={"limit": 0}), 422)


def test_custom_rules_crud_and_the_log_of_the_logs(api: Api) -> None:
    c = api.client
    created = c.post(
        "/v1/alert-rules",
        headers=SECURITY,
        json={**RULE, "filter": {"action": ["auth.failed"]}, "severity": "high"},
    )
    assert created.status_code == 201, created.text
    rule = created.json()
    assert (rule["rule"], rule["step_s"], rule["filter"]["action"]) == (
        f"custom:{rule['id']}",
        60,
        ["auth.failed"],
    )
    catalogue = c.get("/v1/alert-rules", headers=AUDITOR).json()
    assert {"integrity_failure", "fork", "client_ip_burst", "failed_job_ratio", "admin_export"} <= {
        r["rule"] for r in catalogue["builtin"]
    }
    assert [r["id"] for r in catalogue["custom"]] == [rule["id"]]
    changed = c.put(
        f"/v1/alert-rules/{rule['id']}", headers=ADMIN, json={**RULE, "threshold": 9, "step_s": 15}
    ).json()
    assert (changed["threshold"], changed["step_s"]) == (9, 15)
    assert c.get(f"/v1/alert-rules/{rule['id']}", headers=AUDITOR).json()["threshold"] == 9
    assert c.delete(f"/v1/alert-rules/{rule['id']}", headers=SECURITY).status_code == 204
    assert error(c.get(f"/v1/alert-rules/{rule['id']}", headers=AUDITOR), 404)
    changes = api.service_log("acme", "alert_rule.changed")
    assert [(m["change"], m["rule_id"], m["threshold"]) for m in changes] == [
        ("created", rule["id"], 3),
        ("updated", rule["id"], 9),
        ("deleted", rule["id"], 9),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {**RULE, "group_by": "client_ip"},  # unknown group-by field
        {**RULE, "window_s": -60},
        {**RULE, "window_s": 0},
        {**RULE, "threshold": -1},
        {**RULE, "step_s": 120},  # longer than the window
        {**RULE, "filter": {"action": ["no.such_action"]}},
        {**RULE, "filter": {"actor": "alice"}},  # not a filter field
        {**RULE, "filter": {"q": "--"}},  # free text without a word
        {**RULE, "severity": "urgent"},
        {**RULE, "groupby": "user.hash"},
        {k: v for k, v in RULE.items() if k != "threshold"},
    ],
)
def test_bad_rules_are_refused_with_422(api: Api, body: dict[str, Any]) -> None:
    response = api.client.post("/v1/alert-rules", headers=SECURITY, json=body)
    assert error(response, 422) == "InvalidInputError"
    assert api.client.get("/v1/alert-rules", headers=SECURITY).json()["custom"] == []


def test_too_many_rules(tmp_path: Path) -> None:
    with running(tmp_path, alert_max_rules_per_tenant=2) as api:
        for _ in range(2):
            assert (
                api.client.post("/v1/alert-rules", headers=SECURITY, json=RULE).status_code == 201
            )
        refused = api.client.post("/v1/alert-rules", headers=SECURITY, json=RULE)
        assert error(refused, 409) == "ConflictError"


def test_export_by_an_admin_raises_an_alert(api: Api) -> None:
    c = api.client
    scheduler: AlertScheduler = c.app.state.services.alert_scheduler  # type: ignore[attr-defined]
    # The service's first tick: the rules' watermarks are set before the exports happen.
    c.post("/v1/exports", headers=AUDITOR, json={}).raise_for_status()  # registers the tenant
    api.tick(scheduler, 0)
    assert c.post("/v1/exports", headers=AUDITOR, json={}).status_code == 201
    assert c.post("/v1/exports", headers=ADMIN, json={}).status_code == 201
    api.tick(scheduler, 200)
    alerts = c.get("/v1/alerts", headers=SECURITY).json()["alerts"]
    assert [(a["rule"], a["severity"], a["count"]) for a in alerts] == [
        ("admin_export", "medium", 1)
    ]
    assert len(alerts[0]["detail"]["exports"]) == 1


def test_a_change_whose_record_cannot_be_written_changes_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = api.client
    alert = api.raise_alert()
    rule = c.post("/v1/alert-rules", headers=SECURITY, json=RULE).json()
    servicelog = c.app.state.services.servicelog  # type: ignore[attr-defined]

    async def unavailable(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailableError("event store unavailable")

    monkeypatch.setattr(servicelog, "record", unavailable)
    assert error(c.post(f"/v1/alerts/{alert}/acknowledge", headers=SECURITY), 503)
    assert error(c.post(f"/v1/alerts/{alert}/resolve", headers=SECURITY), 503)
    assert c.get(f"/v1/alerts/{alert}", headers=SECURITY).json()["state"] == "open"
    changed = {**RULE, "threshold": 9}
    assert error(c.put(f"/v1/alert-rules/{rule['id']}", headers=SECURITY, json=changed), 503)
    assert error(c.delete(f"/v1/alert-rules/{rule['id']}", headers=SECURITY), 503)
    assert error(c.post("/v1/alert-rules", headers=SECURITY, json=RULE), 503)
    assert [
        r["threshold"] for r in c.get("/v1/alert-rules", headers=SECURITY).json()["custom"]
    ] == [3]
    # An invalid transition is refused before anything is recorded.
    monkeypatch.undo()
    assert c.post(f"/v1/alerts/{alert}/resolve", headers=SECURITY).status_code == 200
    assert error(c.post(f"/v1/alerts/{alert}/acknowledge", headers=SECURITY), 409)
    assert [m["alert_id"] for m in api.service_log("acme", "alert.resolved")] == [alert]
    assert api.service_log("acme", "alert.acknowledged") == []


def test_a_transition_that_loses_a_race_after_its_record_says_so(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = api.client
    alert = api.raise_alert()
    servicelog = c.app.state.services.servicelog  # type: ignore[attr-defined]
    record = servicelog.record

    async def someone_else_resolves_meanwhile(*args: Any, **kwargs: Any) -> None:
        await record(*args, **kwargs)
        if kwargs.get("outcome") is None:
            with c.app.state.services.sessions.begin() as session:  # type: ignore[attr-defined]
                session.execute(update(Alert).where(Alert.id == alert).values(state="resolved"))

    monkeypatch.setattr(servicelog, "record", someone_else_resolves_meanwhile)
    assert error(c.post(f"/v1/alerts/{alert}/acknowledge", headers=SECURITY), 409)
    acks = api.service_log("acme", "alert.acknowledged")
    assert [(m["alert_id"], m["from"], "error" in m) for m in acks] == [
        (alert, "open", False),
        (alert, "open", True),
    ]
