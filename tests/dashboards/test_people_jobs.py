"""The console's people and jobs views: who did what (/console/actors), the job timeline
(/console/jobs, /console/jobs/{id}) and a subject's own records (/console/mine), through the
real app and a signed-in browser session."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.service import Filters
from audit.services import Services
from dashboards.views.jobs import error_groups, human, timeline
from tests.apptools import bearer
from tests.dashboards.conftest import (
    ConsoleFactory,
    console_client,
    doc_id,
    seed,
    settings_of,
    store_settings,
)

AUDITOR: dict[str, Any] = {"sub": "auditor-1", "roles": ["auditor"]}
ENGINEER: dict[str, Any] = {"sub": "eng-1", "roles": ["engineer"]}
SECURITY: dict[str, Any] = {"sub": "sec-1", "roles": ["security"]}
ALICE: dict[str, Any] = {"sub": "alice", "roles": ["subject"]}
XSS = "<script>alert(1)</script>"
_HIST = re.compile(r'<script type="application/json" id="actor-hist">(.*?)</script>', re.S)
INPUT = "a" * 64
SOURCE = "b" * 64
OUTPUT = "c" * 64
MODEL = "d" * 64
LOADED = "e" * 64
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def services(client: TestClient) -> Services:
    svc: Services = client.app.state.services  # type: ignore[attr-defined]
    return svc


def job(
    job_id: str,
    actor: str,
    *,
    error: str | None = None,
    message: str = "the model failed",
    frames: int = 2,
) -> list[dict[str, Any]]:
    """A job's records as an engine writes them: submitted (inputs, models, providers),
    model loaded, started, frames (one failed), then completed or failed."""
    out: list[dict[str, Any]] = [
        {
            "action": EventAction.JOB_SUBMITTED,
            "actor": actor,
            "job_id": job_id,
            "metadata": {
                "job_type": "video",
                "input_sha256": INPUT,
                "source_sha256": SOURCE,
                "models": [{"name": "inswapper", "version": "128", "sha256": MODEL}],
                "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            },
        },
        {
            "action": EventAction.MODEL_LOADED,
            "actor": "system",
            "job_id": job_id,
            "metadata": {
                "role": "detector",
                "name": "retinaface",
                "version": "10g",
                "sha256": LOADED,
                "providers": ["CUDAExecutionProvider"],
            },
        },
        {"action": EventAction.JOB_STARTED, "actor": actor, "job_id": job_id},
    ]
    for frame in range(frames):
        out.append(
            {
                "action": EventAction.FACE_SWAPPED,
                "actor": actor,
                "job_id": job_id,
                "metadata": {"frame": frame},
            }
        )
    out.append(
        {
            "action": EventAction.FRAME_FAILED,
            "outcome": Outcome.FAILURE,
            "actor": actor,
            "job_id": job_id,
            "error_type": "NoFaceDetected",
            "error_message": "no face in frame 7",
            "metadata": {"frame": 7},
        }
    )
    if error is None:
        out.append(
            {
                "action": EventAction.JOB_COMPLETED,
                "actor": actor,
                "job_id": job_id,
                "metadata": {"output_sha256": OUTPUT},
            }
        )
    else:
        out.append(
            {
                "action": EventAction.JOB_FAILED,
                "outcome": Outcome.FAILURE,
                "actor": actor,
                "job_id": job_id,
                "error_type": error,
                "error_message": message,
            }
        )
    return out


def history(
    client: TestClient, tenant: str = "acme", stream: str = "cam-1"
) -> list[dict[str, Any]]:
    """alice: job-a (completed), job-b (failed, ModelError); bob: job-c (completed), job-d
    and job-e (failed, OutOfMemory)."""
    records = (
        job("job-a", "alice")
        + job("job-b", "alice", error="ModelError")
        + job("job-c", "bob")
        + job("job-d", "bob", error="OutOfMemory")
        + job("job-e", "bob", error="OutOfMemory")
    )
    return seed(client, tenant, stream, records, start=START)


def user_hash(records: list[dict[str, Any]], job_id: str, action: str) -> str:
    return next(
        str(r["user.hash"])
        for r in records
        if r.get("trace.id") == job_id and r.get("event.action") == action
    )


def trail(client: TestClient, tenant: str = "acme") -> list[dict[str, Any]]:
    """The tenant's log of the logs page views of the console, oldest first."""
    stream = services(client).servicelog.stream_for(tenant)
    answer = client.get(
        "/v1/events",
        params={"stream": stream, "action": "audit.queried", "order": "asc", "limit": 1000},
        headers=bearer(tenant=tenant),
    )
    answer.raise_for_status()
    return [
        e["record"]["ffaudit.metadata"]
        for e in answer.json()["events"]
        if str(e["record"]["ffaudit.metadata"].get("endpoint", "")).startswith("console:")
    ]


def count(client: TestClient, tenant: str, filters: Filters, own: str | None = None) -> int:
    svc = services(client)
    query = svc.queries.build(tenant, own, filters)

    async def total() -> int:
        return sum((await svc.store.stats(query, by="stream")).values())

    assert client.portal is not None
    return client.portal.call(total)


def section(html: str, heading_id: str) -> str:
    """The <section> of the page whose heading has this id."""
    found = re.search(rf'<section[^>]*aria-labelledby="{heading_id}".*?</section>', html, re.S)
    assert found, f"no section {heading_id}"
    return found.group(0)


# -- who did what ----------------------------------------------------------------------------


def test_actor_page_by_raw_id(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    records = history(client)
    page = client.get("/console/actors", params={"actor": "alice"})
    assert page.status_code == 200, page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    jobs = section(page.text, "jobs-heading")
    assert "job-a" in jobs
    assert "job-b" in jobs
    assert "job-c" not in jobs
    assert "job-d" not in jobs
    assert re.search(r"job-b</a></th>.*?badge red\">failure.*?ModelError", jobs, re.S)
    assert re.search(r"job-a</a></th>.*?badge green\">success", jobs, re.S)
    failures = section(page.text, "failures-heading")
    assert "ModelError" in failures
    assert "NoFaceDetected" in failures
    assert "OutOfMemory" not in failures
    # every failure of alice's, counted by the store
    failed = count(client, "acme", Filters(actor="alice", outcomes=("failure",)))
    assert failed == 3
    assert "Failures (3)" in page.text
    # actions over time: per day from the store, and the histogram's data agree
    total = count(client, "acme", Filters(actor="alice"))
    day = START.strftime("%Y-%m-%d")
    over_time = section(page.text, "over-time-heading")
    assert re.search(rf"{day}</th><td class=\"num\">(\d+)", over_time)
    found = _HIST.search(page.text)
    assert found
    assert sum(n for _, n in json.loads(found.group(1))["buckets"]) == total
    # the action list links to alice's records only
    mine = {
        doc_id(r)
        for r in records
        if r.get("user.hash") == user_hash(records, "job-a", "job.started")
    }
    listed = set(
        re.findall(r'href="/console/events/([^"]+)"', section(page.text, "actions-heading"))
    )
    assert listed
    assert listed <= mine
    # the keys the raw id was matched under
    assert "Matched under pseudonym key(s)" in page.text


def test_actor_page_by_pseudonym(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    records = history(client)
    bob = user_hash(records, "job-c", "job.started")
    page = client.get("/console/actors", params={"actor": bob})
    assert page.status_code == 200, page.text
    jobs = section(page.text, "jobs-heading")
    assert {"job-c", "job-d", "job-e"} <= set(re.findall(r"job-[a-e]", jobs))
    assert "job-a" not in jobs
    assert "OutOfMemory" in section(page.text, "failures-heading")
    # a pseudonym nobody has: an empty page, not an error
    empty = client.get("/console/actors", params={"actor": "0" * 64})
    assert empty.status_code == 200
    assert "No job." in empty.text


def test_actor_search_form_and_escaping(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    blank = client.get("/console/actors")
    assert blank.status_code == 200
    assert '<label for="a-actor">' in blank.text
    hostile = client.get("/console/actors", params={"actor": XSS})
    assert hostile.status_code == 200
    assert XSS not in hostile.text
    assert "&lt;script&gt;" in hostile.text


def test_actor_exports_from_the_log_of_the_logs(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    made = client.post(
        "/v1/exports", json={"job": ["job-a"]}, headers=bearer(sub="auditor-1", roles=["auditor"])
    )
    assert made.status_code == 201, made.text
    export_id = made.json()["export_id"]
    page = client.get("/console/actors", params={"actor": "auditor-1"})
    exports = section(page.text, "exports-heading")
    assert export_id in exports
    assert "Exports made (1)" in exports
    # alice made none
    other = client.get("/console/actors", params={"actor": "alice"})
    assert export_id not in other.text
    assert "No export by this actor." in other.text


def _seal_with_vault(
    client: TestClient, tenant: str, stream: str, events: list[AuditEvent]
) -> list[dict[str, Any]]:
    """Seal as an engine configured with the subject vault (v2 pseudonyms for user ids)."""
    svc = services(client)
    keyring = Keyring.load(settings_of(client).keyrings_dir / f"{tenant}.pii.key")
    signer = Signer.generate()
    client.post(
        "/v1/streams",
        headers=bearer(sub="root", roles=["admin"], tenant=tenant),
        json={"stream": stream, "tenant": tenant, "public_key_pem": signer.verifier.pem().decode()},
    ).raise_for_status()
    sealer = Sealer(
        ChainWriter(stream, tenant, signer, policy=CheckpointPolicy(5, None)),
        Pseudonymizer(keyring, tenant, vault=svc.subjects.vault),
    )
    out = [r.record for e in events for r in sealer.seal(e)]
    out += [r.record for r in sealer.checkpoint()]
    client.post(
        f"/v1/streams/{stream}/records",
        content=orjson.dumps(out),
        headers={**bearer(roles=["ingest"], tenant=tenant), "content-type": "application/json"},
    ).raise_for_status()
    return out


def test_an_erased_subject_is_shown_as_erased(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)  # imports the tenant keyring
    events = [
        AuditEvent(action=EventAction.JOB_SUBMITTED, actor="dave", job_id="job-v", timestamp=START),
        AuditEvent(
            action=EventAction.JOB_COMPLETED,
            actor="dave",
            job_id="job-v",
            timestamp=START + timedelta(seconds=5),
        ),
    ]
    sealed = _seal_with_vault(client, "acme", "vault-cam", events)
    v2 = next(str(r["user.hash"]) for r in sealed if r.get("trace.id") == "job-v")
    before = client.get("/console/actors", params={"actor": "dave"})
    assert "job-v" in section(before.text, "jobs-heading")
    assert "live key" in before.text
    assert "erased subject" not in before.text
    erased = client.post(
        "/v1/subjects/erase",
        json={"subject": "dave"},
        headers=bearer(sub="dpo-1", roles=["admin"]),
    )
    assert erased.status_code == 200, erased.text
    after = client.get("/console/actors", params={"actor": "dave"})
    assert after.status_code == 200
    assert "erased subject" in after.text
    assert "job-v" not in section(after.text, "jobs-heading")
    # the records are still there under their pseudonym, and still verify
    by_hash = client.get("/console/actors", params={"actor": v2})
    assert "job-v" in section(by_hash.text, "jobs-heading")
    verified = client.post("/v1/verify", json={"stream": "vault-cam"}, headers=bearer())
    assert verified.json()["ok"] is True
    # someone never sealed with the vault, in a tenant that has erasures: receipts name no
    # one, so the page says it cannot tell them apart (and never says "not erased")
    alice = client.get("/console/actors", params={"actor": "alice"})
    assert "not erased" not in alice.text
    assert "receipts name no one" in alice.text
    assert "job-a" in section(alice.text, "jobs-heading")


def test_an_id_never_erased_in_a_tenant_without_erasures(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    page = client.get("/console/actors", params={"actor": "alice"})
    assert "not erased" in page.text
    assert "erased subject" not in page.text


# -- jobs ------------------------------------------------------------------------------------


def test_jobs_list_and_failures_grouped_by_error_type(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    page = client.get("/console/jobs")
    assert page.status_code == 200, page.text
    listed = re.findall(r'href="/console/jobs/(job-[a-e])"', page.text)
    assert {"job-a", "job-b", "job-c", "job-d", "job-e"} <= set(listed)
    groups = section(page.text, "failed-heading")
    assert "Failed jobs by error type (3)" in groups
    assert re.search(r"OutOfMemory</a></th>\s*<td class=\"num\">2</td>", groups)
    assert re.search(r"ModelError</a></th>\s*<td class=\"num\">1</td>", groups)
    assert groups.index("OutOfMemory") < groups.index("ModelError")  # most frequent first
    day = START.strftime("%Y-%m-%d")
    assert f"{day}: 2" in groups
    assert re.search(rf"{day}</th><td class=\"num\">3</td>", groups)
    # as the API lists them
    api = client.get("/v1/jobs", params={"outcome": "failure"}, headers=bearer()).json()
    assert {j["job_id"] for j in api["jobs"]} == {"job-b", "job-d", "job-e"}
    failed = client.get("/console/jobs", params={"outcome": "failure"})
    jobs_list = section(failed.text, "jobs-list-heading")
    assert set(re.findall(r'href="/console/jobs/(job-[a-e])"', jobs_list)) == {
        "job-b",
        "job-d",
        "job-e",
    }


def test_job_timeline(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    page = client.get("/console/jobs/job-b")
    assert page.status_code == 200, page.text
    assert 'badge red">failed' in page.text
    assert "ModelError" in page.text
    assert "the model failed" in page.text
    inputs = section(page.text, "inputs-heading")
    assert INPUT in inputs
    assert SOURCE in inputs
    models = section(page.text, "models-heading")
    assert MODEL in models
    assert "inswapper" in models
    assert LOADED in models
    assert "retinaface" in models
    assert "CUDAExecutionProvider" in models
    frames = section(page.text, "frames-heading")
    assert "NoFaceDetected" in frames
    assert "no face in frame 7" in frames
    assert "Failed frames (1)" in frames
    steps = section(page.text, "steps-heading")
    actions = re.findall(r'<th scope="row">([a-z_.]+)</th>', steps)
    assert actions[0] == "job.submitted"
    assert actions[-1] == "job.failed"
    assert len(actions) == 7
    assert "1.0 s" in steps  # the seeder's step between records
    # the API's timeline: the same records
    api = client.get("/v1/jobs/job-b", headers=bearer()).json()
    assert api["outcome"] == "job.failed"
    assert {e["id"] for e in api["events"]} <= set(
        re.findall(r'href="/console/events/([^"]+)"', steps)
    )
    completed = client.get("/console/jobs/job-a")
    assert 'badge green">completed' in completed.text
    assert OUTPUT in section(completed.text, "inputs-heading")
    missing = client.get("/console/jobs/no-such-job")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"]


def test_timeline_and_groups_are_pure() -> None:
    assert human(timedelta(milliseconds=250)) == "250 ms"
    assert human(timedelta(seconds=90)) == "90.0 s"
    assert human(None) == ""
    assert error_groups([]) == []
    assert timeline([]).outcome is None


def test_engineer_sees_jobs_but_not_who_did_what(console: ConsoleFactory) -> None:
    client = console(**ENGINEER)
    history(client)
    jobs = client.get("/console/jobs")
    assert jobs.status_code == 200
    assert ">Jobs</a>" in jobs.text
    assert "Who did what" not in jobs.text  # not in the navigation
    assert client.get("/console/jobs/job-a").status_code == 200
    assert client.get("/console/actors", params={"actor": "alice"}).status_code == 403
    assert client.get("/console/mine").status_code == 403


def test_security_reads_actors_and_jobs(console: ConsoleFactory) -> None:
    client = console(**SECURITY)
    history(client)
    page = client.get("/console/actors", params={"actor": "alice"})
    assert page.status_code == 200
    # security may not read erasure receipts: the page does not claim to know
    assert "not erased" not in page.text
    assert client.get("/console/jobs").status_code == 200
    assert client.get("/console/mine").status_code == 403


def test_tenant_isolation(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    seed(client, "other", "cam-9", job("job-x", "alice", error="SecretError"), start=START)
    jobs = client.get("/console/jobs")
    assert "job-x" not in jobs.text
    assert "SecretError" not in jobs.text
    assert client.get("/console/jobs/job-x").status_code == 404
    page = client.get("/console/actors", params={"actor": "alice"})
    assert "job-x" not in page.text
    assert "SecretError" not in page.text
    # the other tenant's auditor sees its own job, and none of acme's
    client = console(sub="auditor-9", tenant="other", roles=["auditor"])
    theirs = client.get("/console/jobs")
    assert "job-x" in theirs.text
    assert "job-a" not in theirs.text
    assert client.get("/console/jobs/job-a").status_code == 404


def test_page_views_are_in_the_log_of_the_logs(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    history(client)
    client.get("/console/actors", params={"actor": "alice"}).raise_for_status()
    client.get("/console/jobs").raise_for_status()
    client.get("/console/jobs/job-a").raise_for_status()
    logged = trail(client)
    endpoints = [m["endpoint"] for m in logged]
    assert "console:actors" in endpoints
    assert "console:jobs" in endpoints
    assert "console:job" in endpoints
    actors = next(m for m in logged if m["endpoint"] == "console:actors")
    assert actors["filters"] == ["actor"]
    assert "alice" not in json.dumps(logged)  # a raw id is never logged
    client = console(**ALICE)
    client.get("/console/mine").raise_for_status()
    assert "console:mine" in [m["endpoint"] for m in trail(client)]


# -- my records ------------------------------------------------------------------------------


SUBJECT_PROBES = [
    "/console/events",
    "/console/actors",
    "/console/jobs",
    "/console/jobs/job-a",
    "/console/alerts",
    "/console/verify",
    "/console/retention",
]


def test_mine_shows_only_the_subjects_records(console: ConsoleFactory) -> None:
    client = console(**ALICE)
    records = history(client)
    page = client.get("/console/mine")
    assert page.status_code == 200, page.text
    assert ">My records</a>" in page.text
    jobs = section(page.text, "my-jobs-heading")
    assert "job-a" in jobs
    assert "job-b" in jobs
    assert re.search(r"job-b</th>.*?badge red\">failure.*?ModelError", jobs, re.S)
    for other in ("job-c", "job-d", "job-e", "OutOfMemory"):
        assert other not in page.text
    alice = user_hash(records, "job-a", "job.started")
    shown = set(re.findall(r'<td class="mono">([a-z0-9-]+:\d+)</td>', page.text))
    theirs = {doc_id(r) for r in records if r.get("user.hash") == alice}
    assert shown
    assert shown <= theirs
    assert count(client, "acme", Filters(), own="alice") == len(theirs)
    assert f"{len(theirs)} record(s) whose actor is you" in page.text
    # no export permission: how to request one
    assert 'id="request-export"' in page.text
    assert "Download a signed export" not in page.text
    # the navigation offers nothing else
    assert re.findall(r'<nav aria-label="Views">.*?</nav>', page.text, re.S)[0].count("<li>") == 1


def test_another_subject_never_sees_alices_records(console: ConsoleFactory) -> None:
    client = console(**ALICE)
    history(client)
    client = console(sub="bob", roles=["subject"])
    page = client.get("/console/mine")
    assert page.status_code == 200
    assert "job-c" in page.text
    assert "job-a" not in page.text
    assert "job-b" not in page.text
    assert "ModelError" not in page.text
    nobody = console(sub="zoe", roles=["subject"]).get("/console/mine")
    assert "No job." in nobody.text
    assert "0 record(s) whose actor is you" in nobody.text


@pytest.mark.parametrize("path", SUBJECT_PROBES)
def test_a_subject_gets_403_elsewhere(console: ConsoleFactory, path: str) -> None:
    client = console(**ALICE)
    history(client)
    answer = client.get(path, params={"actor": "bob"} if "actors" in path else None)
    assert answer.status_code == 403, (path, answer.status_code)
    assert "job-c" not in answer.text


def test_a_subject_lands_on_its_own_records(console: ConsoleFactory) -> None:
    # The landing page after sign-in is the integrity home, which a subject may not read:
    # it is sent to My records rather than to a 403 and an access.denied record.
    client = console(**ALICE)
    history(client)
    answer = client.get("/console/", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/mine"
    denied = client.get(
        "/v1/events",
        params={
            "stream": services(client).servicelog.stream_for("acme"),
            "action": "access.denied",
        },
        headers=bearer(),
    )
    assert denied.json()["events"] == []


def test_only_narrowed_callers_see_mine(console: ConsoleFactory) -> None:
    client = console(**AUDITOR)
    assert client.get("/console/mine").status_code == 403
    both = console(sub="alice", roles=["subject", "auditor"])
    assert both.get("/console/mine").status_code == 403


# -- Elasticsearch ---------------------------------------------------------------------------


def test_job_timeline_on_elasticsearch(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = store_settings(tmp_path, "elasticsearch", request)
    with console_client(tmp_path, settings, **AUDITOR) as client:
        history(client)
        assert client.portal is not None
        client.portal.call(services(client).store.refresh)
        page = client.get("/console/jobs/job-d")
        assert page.status_code == 200, page.text
        assert "OutOfMemory" in page.text
        assert MODEL in section(page.text, "models-heading")
        assert "Failed frames (1)" in page.text
        listing = client.get("/console/jobs")
        groups = section(listing.text, "failed-heading")
        assert re.search(r"OutOfMemory</a></th>\s*<td class=\"num\">2</td>", groups)
