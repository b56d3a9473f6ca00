"""A working day, end to end, on each event store: three streams each with its own pseudonym
key, an insider's forgery, a row edited in the store, an IP burst and a flood. Every answer
an auditor, a security analyst or an engineer gets must be complete or say why not, current
with the store, and lead from each alert to its records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.exports import verify_export
from audit.integrity.chain import ChainWriter, CheckpointPolicy, record_hash
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.ratelimit import SessionRateLimiter
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from audit.services import Services
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer
from tests.auth.test_queries import edit_stored

T0 = (datetime.now(UTC) - timedelta(minutes=20)).replace(second=0, microsecond=0)
IP = "198.51.100.66"
STREAMS = ("cam-a", "cam-b", "web")


class Producer:
    def __init__(self, stream: str, *, limit: bool = False) -> None:
        self.stream, self.signer, self.keyring = stream, Signer.generate(), Keyring.generate()
        self.sealer = Sealer(
            ChainWriter(stream, "acme", self.signer, policy=CheckpointPolicy(6, None)),
            Pseudonymizer(self.keyring, "acme"),
            SessionRateLimiter(rate=0.5, burst=3) if limit else None,
        )

    def seal(self, at: datetime, action: EventAction, **fields: Any) -> list[dict[str, Any]]:
        event = AuditEvent(action=action, timestamp=at, **fields)
        return [r.record for r in self.sealer.seal(event)]


@pytest.fixture(params=["sqlite", "elasticsearch"])
def day(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[TestClient, AuditSettings]]:
    store: dict[str, Any] = {}
    if request.param == "elasticsearch":
        store = {
            "elasticsearch_url": request.getfixturevalue("elasticsearch_url"),
            "elasticsearch_index_prefix": request.getfixturevalue("fresh_es_prefix"),
        }
    settings = app_settings(
        tmp_path,
        alert_evaluation_enabled=False,
        reverify_enabled=False,
        webhook_delivery_enabled=False,
        **store,
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings


def post(client: TestClient, stream: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    answer = client.post(
        f"/v1/streams/{stream}/records",
        content=orjson.dumps(records),
        headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_a_working_day(day: tuple[TestClient, AuditSettings]) -> None:
    client, settings = day
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    auditor, security = bearer(), bearer(roles=["security"])
    producers = {s: Producer(s, limit=s == "cam-b") for s in STREAMS}
    admin = bearer(roles=["admin"], amr=["otp"])
    for p in producers.values():
        body = {
            "stream": p.stream,
            "tenant": "acme",
            "public_key_pem": p.signer.verifier.pem().decode(),
        }
        client.post("/v1/streams", json=body, headers=admin).raise_for_status()
    keyrings = TenantKeyrings(settings.keyrings_dir)
    for s in ("cam-a", "web"):  # cam-b's key is forgotten at first
        keyrings.import_keyring("acme", producers[s].keyring.dumps())
    # The app's own event loop runs the background jobs (its store client lives there).
    portal = client.portal
    assert portal is not None
    portal.call(lambda: services.alert_scheduler.tick(T0, lease=False))  # watermarks at T0

    at = T0 + timedelta(minutes=1)
    cam_a: list[dict[str, Any]] = []
    for n in range(3):
        job, failed = f"job-{n}", n == 2
        cam_a += producers["cam-a"].seal(at, EventAction.JOB_SUBMITTED, actor="alice", job_id=job)
        cam_a += producers["cam-a"].seal(
            at,
            EventAction.JOB_FAILED if failed else EventAction.JOB_COMPLETED,
            outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
            actor="alice",
            job_id=job,
            error_type="ModelError" if failed else None,
            error_message="the model pack has no recognition model" if failed else None,
        )
    # An IP burst on the web application: twelve requests in ten seconds.
    web = [
        r
        for i in range(12)
        for r in producers["web"].seal(
            at + timedelta(seconds=i), EventAction.JOB_SUBMITTED, actor="bob", client_ip=IP
        )
    ]
    # A flood on cam-b: one session far over its rate (dropped, summarised).
    cam_b = [
        r
        for i in range(20)
        for r in producers["cam-b"].seal(
            at + timedelta(milliseconds=10 * i),
            EventAction.FACE_SWAPPED,
            actor="alice",
            session="s-flood",
        )
    ]
    # The session's next event, after the window: the drops are summarised.
    cam_b += producers["cam-b"].seal(
        at + timedelta(seconds=30), EventAction.JOB_SUBMITTED, actor="alice", session="s-flood"
    )
    # An insider forges cam-a's next record before the genuine one (hash and link correct).
    genuine_next = producers["cam-a"].seal(
        at, EventAction.JOB_SUBMITTED, actor="alice", job_id="j9"
    )
    rest = [
        r
        for _ in range(6)
        for r in producers["cam-a"].seal(at, EventAction.JOB_STARTED, job_id="j9")
    ]
    head_cut = len(cam_a) - (len(cam_a) % 6)  # post up to a checkpoint: signed through it
    post(client, "cam-a", cam_a[:head_cut])
    forged = {k: v for k, v in genuine_next[0].items() if k != "event.hash"}
    forged["event.outcome"] = "failure"
    forged["event.hash"] = record_hash(forged)
    post(client, "cam-a", [*cam_a[head_cut:], forged])
    post(client, "cam-a", genuine_next + rest)
    post(client, "web", web)
    post(client, "cam-b", cam_b)

    # Auditor: alice by raw id; the answer names the stream it could not search.
    found = client.get("/v1/events", params={"actor": "alice"}, headers=auditor).json()
    assert {e["stream"] for e in found["events"]} == {"cam-a"}
    assert "cam-b" in found["coverage"]["not_searchable"]
    keyrings.import_keyring("acme", producers["cam-b"].keyring.dumps())
    found = client.get(
        "/v1/events", params={"actor": "alice", "limit": 500}, headers=auditor
    ).json()
    assert {e["stream"] for e in found["events"]} == {"cam-a", "cam-b"}
    assert "cam-b" not in found["coverage"]["not_searchable"]

    # The forgery: kept aside as evidence, blamed by id; the genuine chain verifies.
    verified = client.post("/v1/verify", json={"stream": "cam-a"}, headers=auditor).json()
    [stream] = verified["streams"]
    assert stream["matches_head"] is True
    assert [(f["kind"], f["record_id"]) for f in stream["failures"]] == [
        ("inserted", f"cam-a:{forged['event.sequence']}")
    ]

    # Someone edits a cam-b row in the store: the scheduled re-verification finds it.
    edit_stored(settings, "cam-b:2", "failure")
    reverified = portal.call(lambda: services.reverifier.tick(full=True, lease=False))
    assert reverified.tampered == ["acme/cam-b"]
    shown = client.get("/v1/events/cam-b:2", headers=auditor).json()
    assert shown["intact"] is False

    # Exports are evidence either way: the edited row and the forgery are stated in the
    # signed manifest (it answered 409 before), and the bundle verifies as authentic.
    made = client.post("/v1/exports", json={"stream": ["cam-b", "cam-a"]}, headers=auditor)
    assert made.status_code == 201, made.text
    manifest = made.json()["manifest"]
    assert [(x["kind"], x["stream"], x["sequence"]) for x in manifest["failures"]] == [
        ("modified_record", "cam-b", 2)
    ]
    assert [(x["kind"], x["stream"], x["sequence"]) for x in manifest["findings"]] == [
        ("rejected_at_ingest", "cam-a", forged["event.sequence"])
    ]
    bundle = Path(settings.exports_dir) / "acme" / made.json()["export_id"]
    report = verify_export(bundle, services.servicelog.keys.signer.verifier)
    assert report.authentic
    assert report.damaged
    assert [(x.kind.value, x.sequence, x.declared) for x in report.failures] == [
        ("modified_record", 2, True)
    ]

    # The scheduled rules: from each alert to its records.
    portal.call(lambda: services.alert_scheduler.tick(T0 + timedelta(minutes=10), lease=False))
    alerts = client.get("/v1/alerts", params={"limit": 100}, headers=security).json()["alerts"]
    rules = {a["rule"] for a in alerts}
    assert {"chain_attack", "store_tampered", "client_ip_burst", "rate_limited"} <= rules
    [burst] = [a for a in alerts if a["rule"] == "client_ip_burst"]
    shown_query = burst["detail"]["records_query"]
    followed = client.get(shown_query["path"], params=shown_query["params"], headers=auditor).json()
    assert len(followed["events"]) == 12
    assert {e["stream"] for e in followed["events"]} == {"web"}
    [flood] = [a for a in alerts if a["rule"] == "rate_limited"]
    dropped = sum(
        r["ffaudit.metadata"]["dropped"] for r in cam_b if r["event.action"] == "audit.rate_limited"
    )
    assert flood["detail"]["dropped"] == dropped > 1
    assert flood["detail"]["sessions"][0]["dropped"] == dropped

    # The engineer: the failed job and its error.
    jobs = client.get("/v1/jobs", params={"outcome": "failure"}, headers=bearer(roles=["engineer"]))
    assert [(j["job_id"], j["error_type"]) for j in jobs.json()["jobs"]] == [
        ("job-2", "ModelError")
    ]
