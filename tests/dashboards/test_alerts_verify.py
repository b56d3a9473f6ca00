"""The console's alerts inbox, verification and export, and retention pages, through the
real app and a signed-in browser session."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from audit.alerts.kinds import RuleId
from audit.alerts.service import raise_event_alert
from audit.services import Services
from tests.apptools import bearer
from tests.dashboards.conftest import ConsoleFactory, seed

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SECURITY = {"sub": "sec-1", "roles": ["security"]}
ADMIN = {"sub": "root", "roles": ["admin"], "amr": ["pwd", "otp"]}


def services(client: TestClient) -> Services:
    svc: Services = client.app.state.services  # type: ignore[attr-defined]
    return svc


def csrf(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def raise_alert(
    client: TestClient, title: str = "records 5..9 of stream cam-1 never arrived"
) -> int:
    svc = services(client)
    with svc.sessions.begin() as session:
        return raise_event_alert(
            session,
            svc.settings,
            rule=RuleId.SEQUENCE_GAP,
            title=title,
            tenant_id="acme",
            stream_id="cam-1",
            group="cam-1",
            detail={"first_missing": 5, "last_missing": 9},
        ).id


def trail(client: TestClient, action: str) -> list[dict[str, Any]]:
    """The tenant's log of the logs records of `action`, oldest first."""
    stream = services(client).servicelog.stream_for("acme")
    answer = client.get(
        "/v1/events",
        params={"stream": stream, "action": action, "order": "asc"},
        headers=bearer(),
    )
    answer.raise_for_status()
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


# -- alerts ---------------------------------------------------------------------------------


def test_a_raised_alert_is_in_the_inbox_and_the_poll(console: ConsoleFactory) -> None:
    client = console(**SECURITY)
    alert = raise_alert(client, "records <b>5..9</b> never arrived")
    page = client.get("/console/alerts")
    assert page.status_code == 200, page.text
    assert f'href="/console/alerts/{alert}"' in page.text
    assert "records &lt;b&gt;5..9&lt;/b&gt; never arrived" in page.text  # escaped, never markup
    assert 'hx-get="/console/alerts/list?state=open"' in page.text
    assert 'hx-trigger="every 10s"' in page.text
    assert "/console/events?stream=cam-1" in page.text
    # A new alert appears in the polled list without a reload.
    later = raise_alert(client, "another gap")  # deduplicated: same incident, count bumped
    assert later == alert
    other = services(client)
    with other.sessions.begin() as session:
        second = raise_event_alert(
            session,
            other.settings,
            rule=RuleId.INTEGRITY_FAILURE,
            title="a modified record in cam-2",
            tenant_id="acme",
            stream_id="cam-2",
            group="cam-2:modified",
            detail={"kind": "modified", "sequence": 3, "event_hash": "ab" * 32},
        ).id
    polled = client.get("/console/alerts/list?state=open", headers={"hx-request": "true"})
    assert polled.status_code == 200
    assert f'href="/console/alerts/{second}"' in polled.text
    assert "<html" not in polled.text
    assert "/console/events/cam-2:3" in polled.text  # the record the alert names
    # Filters: by stream, by severity; the other states' tabs carry their counts.
    narrowed = client.get("/console/alerts", params={"stream": "cam-2"})
    assert f'href="/console/alerts/{second}"' in narrowed.text
    assert f'href="/console/alerts/{alert}"' not in narrowed.text
    assert client.get("/console/alerts", params={"state": "closed"}).status_code == 422
    detail = client.get(f"/console/alerts/{alert}")
    assert detail.status_code == 200
    assert "first_missing" in detail.text


def test_acknowledge_changes_state_and_is_logged(console: ConsoleFactory) -> None:
    client = console(**SECURITY)
    alert = raise_alert(client)
    page = client.get("/console/alerts")
    assert f'action="/console/alerts/{alert}/acknowledge"' in page.text
    token = csrf(page.text)

    # Without the CSRF token: refused, nothing changes, nothing recorded.
    refused = client.post(f"/console/alerts/{alert}/acknowledge", data={"reason": "x"})
    assert refused.status_code == 403
    assert client.get(f"/v1/alerts/{alert}", headers=bearer()).json()["state"] == "open"
    assert trail(client, "alert.acknowledged") == []
    wrong = client.post(f"/console/alerts/{alert}/acknowledge", data={"csrf": "0" * 64})
    assert wrong.status_code == 403

    done = client.post(
        f"/console/alerts/{alert}/acknowledge",
        data={"csrf": token, "reason": "looking into it", "back": "/console/alerts?state=open"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/alerts?state=open"
    assert client.get(f"/v1/alerts/{alert}", headers=bearer()).json()["state"] == "acknowledged"
    logged = trail(client, "alert.acknowledged")
    assert len(logged) == 1
    record = logged[0]["record"]
    assert record["ffaudit.metadata"]["alert_id"] == alert
    assert record["ffaudit.metadata"]["reason"] == "looking into it"
    assert record["user.hash"]  # who did it, pseudonymised

    # The inbox now lists it under "acknowledged"; resolve, with an off-site `back` ignored.
    acked = client.get("/console/alerts", params={"state": "acknowledged"})
    assert f'href="/console/alerts/{alert}"' in acked.text
    assert f'action="/console/alerts/{alert}/acknowledge"' not in acked.text
    resolved = client.post(
        f"/console/alerts/{alert}/resolve",
        data={"csrf": token, "back": "https://evil.example/"},
        follow_redirects=False,
    )
    assert resolved.status_code == 303
    assert resolved.headers["location"] == f"/console/alerts/{alert}"
    assert client.get(f"/v1/alerts/{alert}", headers=bearer()).json()["state"] == "resolved"
    assert len(trail(client, "alert.resolved")) == 1
    again = client.post(f"/console/alerts/{alert}/acknowledge", data={"csrf": token})
    assert again.status_code == 409


def test_an_auditor_reads_alerts_but_cannot_respond(console: ConsoleFactory) -> None:
    client = console()  # auditor
    alert = raise_alert(client)
    page = client.get("/console/alerts")
    assert page.status_code == 200
    assert f'href="/console/alerts/{alert}"' in page.text
    assert "/acknowledge" not in page.text
    assert "/resolve" not in page.text
    assert "Webhook deliveries" not in page.text  # managers of webhooks only
    refused = client.post(f"/console/alerts/{alert}/acknowledge", data={"csrf": csrf(page.text)})
    assert refused.status_code == 403
    assert client.get(f"/v1/alerts/{alert}", headers=bearer()).json()["state"] == "open"
    assert trail(client, "alert.acknowledged") == []


def test_security_sees_webhook_deliveries(console: ConsoleFactory) -> None:
    client = console(**SECURITY)
    svc = services(client)
    from audit.webhooks.schemas import WebhookCreate

    hook = svc.webhooks.create(
        "acme",
        WebhookCreate.model_validate(
            {"url": "https://hooks.example.com/secret-token/x", "min_severity": "low"}
        ),
    )
    queued = svc.webhooks.queue_test("acme", hook.id)
    page = client.get("/console/alerts")
    assert "Webhook deliveries" in page.text
    assert "hooks.example.com" in page.text
    assert "secret-token" not in page.text  # the host only
    assert "webhook.test" in page.text
    assert f'title="{queued.event_id}"' in page.text


# -- verification ---------------------------------------------------------------------------


def _ndjson(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


def test_verify_streams_progress_and_names_a_tampered_record(console: ConsoleFactory) -> None:
    client = console()  # auditor: may verify
    records = seed(client, "acme", "cam-1", 8)  # with their checkpoints
    page = client.get("/console/verify")
    assert page.status_code == 200
    assert 'class="verify-run' in page.text
    token = csrf(page.text)

    clean = client.post("/console/verify/run", data={"csrf": token, "stream": "cam-1"})
    assert clean.status_code == 200, clean.text
    assert clean.headers["content-type"].startswith("application/x-ndjson")
    lines = _ndjson(clean.content)
    assert lines[0] == {"progress": {"stream": "cam-1", "records": 0, "expected": len(records)}}
    assert lines[-2]["progress"]["records"] == lines[-2]["progress"]["expected"]
    assert "Every verified stream is intact" in lines[-1]["html"]

    db = create_engine(services(client).settings.database_url)
    with db.begin() as conn:
        row = conn.execute(text("SELECT record FROM events WHERE doc_id = 'cam-1:4'")).one()
        edited = row[0].replace('"success"', '"failure"')
        assert edited != row[0]
        conn.execute(text("UPDATE events SET record = :r WHERE doc_id = 'cam-1:4'"), {"r": edited})
    db.dispose()

    # All streams (what the integrity home posts: the CSRF field alone).
    tampered = client.post("/console/verify/run", data={"csrf": token})
    lines = _ndjson(tampered.content)
    assert all("progress" in line for line in lines[:-1])
    html = lines[-1]["html"]
    assert "Verification FAILED" in html
    assert "<strong>modified</strong> at sequence 4" in html
    assert 'href="/console/events/cam-1:4"' in html
    logged = trail(client, "audit.verified")
    assert [e["record"]["event.outcome"] for e in logged] == ["success", "failure"]
    assert logged[-1]["record"]["ffaudit.metadata"]["endpoint"] == "console:verify"

    assert client.post("/console/verify/run", data={}).status_code == 403  # no CSRF token
    unknown = client.post("/console/verify/run", data={"csrf": token, "stream": "nope"})
    assert unknown.status_code == 404


# -- export ---------------------------------------------------------------------------------


def test_an_export_made_in_the_console_verifies_offline(
    console: ConsoleFactory, tmp_path: Path
) -> None:
    client = console()  # auditor: may export
    seed(client, "acme", "cam-1", 7)
    seed(client, "acme", "cam-2", 3)
    form = client.get("/console/verify", params={"stream": "cam-1", "action": "face.swapped"})
    assert 'id="export-stream" name="stream" value="cam-1"' in form.text
    assert '<option value="face.swapped" selected>' in form.text
    made = client.post(
        "/console/exports",
        data={"csrf": csrf(form.text), "stream": "cam-1", "action": ["face.swapped"]},
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    location = made.headers["location"]
    export_id = location.rsplit("/", 1)[-1]
    page = client.get(location)
    assert page.status_code == 200
    assert f"ffaudit verify-export {export_id} --pubkey ffaudit-service.pub" in page.text
    assert f"unzip ffaudit-export-{export_id}.zip" in page.text
    exported = trail(client, "audit.exported")
    assert [e["record"]["ffaudit.metadata"]["export_id"] for e in exported] == [export_id]

    download = client.get(f"/console/exports/{export_id}/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
        zf.extractall(tmp_path / "unpacked")
    bundle = tmp_path / "unpacked" / export_id
    api_file = client.get(f"/v1/exports/{export_id}/manifest.json", headers=bearer())
    assert (bundle / "manifest.json").read_bytes() == api_file.content  # byte for byte
    pub = tmp_path / "ffaudit-service.pub"
    pub.write_bytes(services(client).servicelog.keys.signer.verifier.pem())
    run = subprocess.run(
        [sys.executable, "-m", "audit", "verify-export", str(bundle), "--pubkey", str(pub)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK:" in run.stdout

    one = client.get(f"/console/exports/{export_id}/files/records.ndjson")
    assert one.content == (bundle / "records.ndjson").read_bytes()
    assert client.get("/console/exports/..%2F..%2Fetc/download").status_code == 404

    # Another tenant's viewer cannot fetch it; without a token, no export is made.
    client = console(tenant="other")
    assert client.get(f"/console/exports/{export_id}/download").status_code == 404
    assert client.post("/console/exports", data={"stream": "cam-1"}).status_code == 403


def test_security_verifies_but_may_not_export(console: ConsoleFactory) -> None:
    client = console(**SECURITY)
    page = client.get("/console/verify")
    assert page.status_code == 200
    assert 'action="/console/exports"' not in page.text
    refused = client.post("/console/exports", data={"csrf": csrf(page.text)})
    assert refused.status_code == 403


# -- retention ------------------------------------------------------------------------------


def test_retention_needs_an_admin_with_a_second_factor(console: ConsoleFactory) -> None:
    client = console(**ADMIN)
    seed(client, "acme", "cam-1", 3)
    page = client.get("/console/retention")
    assert page.status_code == 200, page.text
    assert "Policies" in page.text
    assert "Erasure receipts" in page.text
    made = client.post(
        "/console/retention/holds",
        data={"csrf": csrf(page.text), "scope": "stream", "value": "cam-1", "reason": "case 42"},
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    holds = client.get("/v1/retention/holds", headers=bearer(**ADMIN)).json()
    assert [(h["scope"], h["values"], h["reason"]) for h in holds] == [
        ("stream", ["cam-1"], "case 42")
    ]
    page = client.get("/console/retention")
    assert "case 42" in page.text
    assert "hold.placed" in page.text  # the history, from the log of the logs
    released = client.post(
        f"/console/retention/holds/{holds[0]['id']}/release",
        data={"csrf": csrf(page.text), "reason": "closed"},
        follow_redirects=False,
    )
    assert released.status_code == 303
    assert client.get("/v1/retention/holds", headers=bearer(**ADMIN)).json() == []

    client = console(sub="root", roles=["admin"], amr=["pwd"])
    assert client.get("/console/retention").status_code == 403
    refused = client.post("/console/retention/holds", data={"scope": "tenant", "reason": "x"})
    assert refused.status_code == 403
    client = console()  # auditor
    assert client.get("/console/retention").status_code == 403
