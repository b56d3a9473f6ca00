"""The console in a real browser (chromium through Playwright) against the real service.

One uvicorn server per event store (SQLite, Elasticsearch), real data ingested through the
HTTP API as an engine sends it (sealed, chained, signed), and one chromium for the module.
Tenants keep the cases apart: `acme` holds a healthy history (three people, three jobs, a
job whose error text is markup), `beta` another tenant's, `broken` a record that failed
verification at ingest (and its critical alert), `tamper` a chain edited inside the store
afterwards. The service re-verifies the stored chains every second here (each one whole
every 4 s), so that the integrity home has its verdict within moments.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from playwright.sync_api import Browser, Page

from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import SIGNING_PUB, Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.record import document_id
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer, jwt_token, serving
from tests.auth.test_queries import edit_stored
from tests.conftest import drop_prefix
from tests.dashboards.browser import (
    ADMIN,
    SECURITY,
    SUBJECT,
    assert_accessible,
    chromium_fixture,  # noqa: F401  (the `chromium` fixture)
    csp_violations,
    new_page,
    sign_in,
    watch,
)
from tests.dashboards.screenshots import SHOTS, Shot, capture

A = EventAction
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
ACME, BETA, BROKEN, TAMPER = "acme", "beta", "broken", "tamper"
ACME_STREAM, BETA_STREAM = "acme-cam-1", "beta-cam-1"
BROKEN_STREAM, TAMPER_STREAM = "broken-cam-1", "tamper-cam-1"
GREEN_WAIT_S = 20.0


def ev(
    action: EventAction,
    actor: str,
    job: str,
    outcome: Outcome = Outcome.SUCCESS,
    **fields: Any,
) -> AuditEvent:
    return AuditEvent(action=action, outcome=outcome, actor=actor, job_id=job, **fields)


F = Outcome.FAILURE
ACME_HISTORY = [
    ev(A.JOB_SUBMITTED, "alice", "job-1", file_sha256="a1" * 32),
    ev(A.JOB_STARTED, "alice", "job-1"),
    ev(A.MODEL_LOADED, "alice", "job-1", metadata={"model": "inswapper_128"}),
    ev(A.FACE_SWAPPED, "alice", "job-1", metadata={"frame": 1}),
    ev(A.FACE_SWAPPED, "alice", "job-1", metadata={"frame": 2}),
    ev(A.FACE_SWAPPED, "alice", "job-1", metadata={"frame": 3}),
    ev(
        A.FRAME_FAILED,
        "alice",
        "job-1",
        F,
        error_type="NoFaceDetected",
        error_message="no face in frame 4",
        metadata={"frame": 4},
    ),
    ev(A.JOB_COMPLETED, "alice", "job-1"),
    ev(A.JOB_SUBMITTED, "bob", "job-2", file_sha256="b2" * 32),
    ev(A.JOB_STARTED, "bob", "job-2"),
    ev(A.FACE_SWAPPED, "bob", "job-2", metadata={"frame": 1}),
    ev(A.FACE_SWAPPED, "bob", "job-2", metadata={"frame": 2}),
    ev(
        A.JOB_FAILED,
        "bob",
        "job-2",
        F,
        error_type="OutOfMemory",
        error_message="CUDA out of memory",
    ),
    ev(A.JOB_SUBMITTED, "carol", "job-3", file_sha256="c3" * 32),
    ev(A.JOB_STARTED, "carol", "job-3"),
    ev(A.FACE_SWAPPED, "carol", "job-3", metadata={"frame": 1}),
    ev(A.JOB_COMPLETED, "carol", "job-3"),
    # Free text that is markup: shown as text, never run.
    ev(A.JOB_SUBMITTED, "mallory", "job-x"),
    ev(
        A.JOB_FAILED,
        "mallory",
        "job-x",
        F,
        error_type="InjectedMarkup",
        error_message=PAYLOAD,
        metadata={"note": PAYLOAD},
    ),
]
BETA_HISTORY = [
    ev(A.JOB_SUBMITTED, "zed", "beta-run-7"),
    ev(A.JOB_STARTED, "zed", "beta-run-7"),
    ev(A.FACE_SWAPPED, "zed", "beta-run-7"),
    ev(A.JOB_COMPLETED, "zed", "beta-run-7"),
]
SMALL_HISTORY = [ev(A.FACE_SWAPPED, "dora", "job-9", metadata={"frame": i}) for i in range(6)]


# -- the service and its data ---------------------------------------------------------------


class Producer:
    """An engine's side of one stream: seals events and sends them over the HTTP API."""

    def __init__(self, world: World, tenant: str, stream: str) -> None:
        self.world = world
        self.tenant = tenant
        self.stream = stream
        signer = Signer.generate()
        httpx.post(
            f"{world.base}/v1/streams",
            headers=bearer(sub="root", roles=["admin"], tenant=tenant),
            json={
                "stream": stream,
                "tenant": tenant,
                "public_key_pem": signer.verifier.pem().decode(),
            },
            timeout=30,
        ).raise_for_status()
        self.sealer = Sealer(
            ChainWriter(stream, tenant, signer, policy=CheckpointPolicy(5, None)),
            Pseudonymizer(world.keyring(tenant), tenant),
        )
        self.when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def seal(self, events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
        """`events` a minute apart, then a checkpoint: every record is signed."""
        out: list[dict[str, Any]] = []
        for event in events:
            self.when += timedelta(minutes=1)
            out += [r.record for r in self.sealer.seal(replace(event, timestamp=self.when))]
        out += [r.record for r in self.sealer.checkpoint(self.when)]
        return out

    def send(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        answer = httpx.post(
            f"{self.world.base}/v1/streams/{self.stream}/records",
            content=orjson.dumps(list(records)),
            headers={
                **bearer(roles=["ingest"], tenant=self.tenant),
                "content-type": "application/json",
            },
            timeout=60,
        )
        answer.raise_for_status()
        report: dict[str, Any] = answer.json()
        return report


@dataclass
class World:
    """A running service on one store, its data, and signed-in browser sessions."""

    store: str
    base: str
    settings: AuditSettings
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by stream
    _pages: dict[tuple[str, str], Page] = field(default_factory=dict)

    def keyring(self, tenant: str) -> Keyring:
        """The tenant's pseudonym keyring, imported into the service (raw-id queries)."""
        path = self.settings.keyrings_dir / f"{tenant}.pii.key"
        if path.is_file():
            return Keyring.load(path)
        keyring = Keyring.generate()
        TenantKeyrings(self.settings.keyrings_dir).import_keyring(tenant, keyring.dumps())
        return keyring

    def page(self, browser: Browser, tenant: str = ACME, **claims: Any) -> Page:
        """The page signed in as jwt_token(tenant=tenant, **claims): signed in through the
        form once per identity, then reused (its console log cleared) by later tests."""
        key = (tenant, json.dumps(claims, sort_keys=True))
        page = self._pages.get(key)
        if page is None or page.is_closed():
            page = self._pages[key] = new_page(browser)
            sign_in(page, self.base, jwt_token(tenant=tenant, **claims))
        watch(page).clear()
        return page

    def close(self) -> None:
        for page in self._pages.values():
            if not page.is_closed():
                page.context.close()

    def open(self, page: Page, path: str) -> None:
        answer = page.goto(self.base + path)
        assert answer is not None
        assert answer.status == 200, f"{path}: {answer.status}\n{page.inner_text('main')}"

    def api(self, path: str, tenant: str = ACME, **params: Any) -> Any:
        answer = httpx.get(
            self.base + path, params=params, headers=bearer(tenant=tenant), timeout=30
        )
        answer.raise_for_status()
        return answer.json()


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    store = str(request.param)
    tmp = tmp_path_factory.mktemp(f"console-{store}")
    extra: dict[str, Any] = {
        "reverify_enabled": True,
        "reverify_tick_s": 1.0,
        "reverify_full_interval_s": 4.0,
    }
    es_url = prefix = None
    if store == "elasticsearch":
        es_url = str(request.getfixturevalue("elasticsearch_url"))
        prefix = f"ffaudit-test-{uuid.uuid4().hex[:10]}"
        extra |= {"elasticsearch_url": es_url, "elasticsearch_index_prefix": prefix}
    settings = app_settings(tmp, **extra)
    try:
        with serving(settings) as base:
            world = World(store, base, settings)
            for tenant, stream, history in (
                (ACME, ACME_STREAM, ACME_HISTORY),
                (BETA, BETA_STREAM, BETA_HISTORY),
                (TAMPER, TAMPER_STREAM, SMALL_HISTORY),
            ):
                producer = Producer(world, tenant, stream)
                world.records[stream] = producer.seal(history)
                producer.send(world.records[stream])
            # `broken`: the third record arrives edited (its hash no longer matches), then
            # the genuine one: the edited copy is kept as evidence, verdict rejected.
            producer = Producer(world, BROKEN, BROKEN_STREAM)
            records = world.records[BROKEN_STREAM] = producer.seal(SMALL_HISTORY)
            edited = {**records[2], "event.outcome": "failure"}
            report = producer.send([*records[:2], edited, *records[3:]])
            assert any(r["outcome"] == "rejected" for r in report["results"]), report
            producer.send([records[2]])
            try:
                yield world
            finally:
                world.close()
    finally:
        if es_url is not None and prefix is not None:
            drop_prefix(es_url, prefix)


# -- helpers -------------------------------------------------------------------------------


def text_of(page: Page, selector: str = "main") -> str:
    return page.inner_text(selector)


def clean(page: Page) -> None:
    """What a view must never do: break its CSP, throw, or log errors."""
    w = watch(page)
    assert not w.csp, f"CSP violations on {page.url}: {w.csp}"
    assert not w.page_errors, f"script errors on {page.url}: {w.page_errors}"
    assert not w.errors, f"console errors on {page.url}: {w.errors}"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out ({timeout:.0f} s) waiting for {what}"
        time.sleep(0.25)


def lede_status(world: World, page: Page) -> str:
    world.open(page, "/console/")
    classes = page.get_attribute("p.lede", "class") or ""
    found = re.search(r"status-(\w+)", classes)
    return found.group(1) if found else ""


def wait_green(world: World, page: Page) -> None:
    """The integrity home is green once the re-verifier has passed every stream once."""
    wait_for(lambda: lede_status(world, page) == "green", GREEN_WAIT_S, "a green integrity home")


def table_rows(page: Page, selector: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))",
    )
    return rows


def histogram_total(page: Page) -> int:
    block = page.get_attribute("[data-histogram]", "data-histogram")
    assert block, "no chart on the page"
    data = json.loads(page.inner_text(f'script[type="application/json"]#{block}'))
    return sum(int(n) for _, n in data["buckets"])


def doc_of(record: dict[str, Any]) -> str:
    return document_id(str(record["ffaudit.stream"]), int(record["event.sequence"]))


def xss_record(world: World) -> dict[str, Any]:
    return next(
        r
        for r in world.records[ACME_STREAM]
        if r.get("trace.id") == "job-x" and r["event.action"] == "job.failed"
    )


# -- every view ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    view: str
    path: str | Callable[[World], str]
    expect: tuple[str, ...]
    claims: dict[str, Any] = field(default_factory=lambda: ADMIN)
    tenant: str = ACME

    def url(self, world: World) -> str:
        return self.path(world) if callable(self.path) else self.path


def _event_path(world: World) -> str:
    return f"/console/events/{doc_of(world.records[ACME_STREAM][3])}"


CASES = [
    Case("integrity", "/console/", ("Every stream of tenant acme verifies", ACME_STREAM)),
    Case("events", "/console/events", ("Filters", "face.swapped", ACME_STREAM, "job-2")),
    Case(
        "event",
        _event_path,
        (f"{ACME_STREAM}, sequence 4", "Signed by checkpoint", '"trace.id": "job-1"'),
    ),
    Case(
        "actors", "/console/actors?actor=bob", ("User bob", "OutOfMemory", "job-2", "5 action(s)")
    ),
    Case(
        "jobs",
        "/console/jobs",
        ("OutOfMemory", "CUDA out of memory", "job-1", "job-3", "2 completed"),
    ),
    Case(
        "job", "/console/jobs/job-1", ("completed", "no face in frame 4", "a1" * 32, "model.loaded")
    ),
    Case("alerts", "/console/alerts?state=open", ("Alerts", "open", "acknowledged", "resolved")),
    Case(
        "verify", "/console/verify", ("Verify stored chains", "Export a signed bundle", ACME_STREAM)
    ),
    Case("retention", "/console/retention", ("Policies", "Legal holds", "No legal hold")),
    Case(
        "mine",
        "/console/mine",
        ("What the audit trail of tenant acme holds about you", "job-1"),
        claims=SUBJECT,
    ),
    Case(
        "alerts-broken",
        "/console/alerts",
        ("critical", BROKEN_STREAM, "Acknowledge"),
        tenant=BROKEN,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.view for c in CASES])
def test_every_view_renders_its_data(world: World, chromium: Browser, case: Case) -> None:
    page = world.page(chromium, case.tenant, **case.claims)
    if case.view == "integrity":
        wait_green(world, page)
    world.open(page, case.url(world))
    shown = text_of(page)
    for expected in case.expect:
        assert expected in shown, f"{case.view}: {expected!r} not on the page:\n{shown}"
    # The integrity strip (htmx, every page) has loaded its verdict.
    page.wait_for_selector(".integrity-strip .badge:not(.unknown)", timeout=10_000)
    clean(page)


@pytest.mark.parametrize("case", CASES, ids=[c.view for c in CASES])
def test_axe_finds_no_serious_violation(world: World, chromium: Browser, case: Case) -> None:
    page = world.page(chromium, case.tenant, **case.claims)
    world.open(page, case.url(world))
    page.wait_for_selector(".integrity-strip .badge:not(.unknown)", timeout=10_000)
    assert_accessible(page, f"{case.view} ({world.store})")


def test_axe_on_the_sign_in_page(world: World, chromium: Browser) -> None:
    page = new_page(chromium)
    world.open(page, "/console/sign-in")
    clean(page)
    assert_accessible(page, f"sign-in ({world.store})")
    page.context.close()


# -- the events explorer -------------------------------------------------------------------


def test_filters_change_the_url_and_the_results(world: World, chromium: Browser) -> None:
    page = world.page(chromium, **ADMIN)
    world.open(page, "/console/events")
    everything = table_rows(page, "#results")
    assert len(everything) > 10

    page.select_option("#f-action", ["face.swapped"])
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    assert "action=face.swapped" in page.url
    rows = table_rows(page, "#results")
    swapped = sum(1 for e in ACME_HISTORY if e.action is A.FACE_SWAPPED)
    assert len(rows) == swapped
    action_col = [
        c.strip()
        for c in page.eval_on_selector_all("#results thead th", "hs => hs.map(h => h.innerText)")
    ].index("Action")
    assert {r[action_col] for r in rows} == {"face.swapped"}
    assert f"{swapped} event(s) over time" in text_of(page)

    page.fill("#f-job", "job-2")
    with page.expect_navigation():
        page.click("form.filters button[type=submit]")
    assert "job=job-2" in page.url
    assert "action=face.swapped" in page.url
    assert len(table_rows(page, "#results")) == 2

    # A facet is a link to the same view narrowed by it (the stream's: the tenant's log of
    # the logs has failures of its own).
    world.open(page, f"/console/events?stream={ACME_STREAM}")
    with page.expect_navigation():
        page.click(".facets a[href*='outcome=failure']")
    assert "outcome=failure" in page.url
    failed = sum(1 for e in ACME_HISTORY if e.outcome is Outcome.FAILURE)
    assert len(table_rows(page, "#results")) == failed
    # Reset: back to everything.
    with page.expect_navigation():
        page.click("form.filters a:text('Reset')")
    assert page.url == f"{world.base}/console/events"
    assert len(table_rows(page, "#results")) >= len(everything)
    clean(page)


def test_the_histogram_totals_the_store_count(world: World, chromium: Browser) -> None:
    page = world.page(chromium, **ADMIN)
    stats = world.api("/v1/stats", by="stream")["counts"]
    assert stats[ACME_STREAM] == len(world.records[ACME_STREAM])
    world.open(page, f"/console/events?stream={ACME_STREAM}")
    assert histogram_total(page) == stats[ACME_STREAM]
    assert f"{stats[ACME_STREAM]} event(s) over time" in text_of(page)
    # Unfiltered: the chart totals what the explorer counts (trail reads hidden).
    world.open(page, "/console/events")
    heading = page.inner_text("#chart-heading")
    assert heading.startswith(f"{histogram_total(page)} event(s)")
    # uPlot drew it, from the JSON block, under the page's CSP.
    page.wait_for_selector("[data-histogram] canvas", timeout=10_000)
    clean(page)


# -- integrity -----------------------------------------------------------------------------


def test_a_broken_record_turns_the_integrity_home_red(world: World, chromium: Browser) -> None:
    page = world.page(chromium, BROKEN, **ADMIN)
    world.open(page, "/console/")
    assert "status-red" in (page.get_attribute("p.lede", "class") or "")
    assert "Some records of tenant broken failed verification" in text_of(page, "p.lede")
    row = page.locator("table.grid tbody tr", has_text=BROKEN_STREAM)
    assert "red" in row.locator(".badge").inner_text()
    reasons = row.locator("ul.reasons").inner_text()
    assert "1 record(s) failed verification at ingest" in reasons
    assert "open critical alert(s)" in reasons
    strip = page.wait_for_selector(".integrity-strip .badge.red", timeout=10_000)
    assert strip is not None
    assert f"integrity: red: {BROKEN_STREAM}" in strip.inner_text()
    # The failed count links to the records kept as evidence.
    with page.expect_navigation():
        row.locator("a[href*='verdict=broken']").click()
    assert "verdict=rejected" in page.url
    assert "rejected" in text_of(page, "#results")
    clean(page)


def test_a_store_edited_after_ingest_turns_the_integrity_home_red(
    world: World, chromium: Browser
) -> None:
    page = world.page(chromium, TAMPER, **ADMIN)
    wait_green(world, page)
    edit_stored(world.settings, doc_of(world.records[TAMPER_STREAM][2]), "failure")
    wait_for(lambda: lede_status(world, page) == "red", GREEN_WAIT_S, "the re-verifier's verdict")
    row = page.locator("table.grid tbody tr", has_text=TAMPER_STREAM)
    reasons = row.locator("ul.reasons").inner_text()
    assert "re-verification found the store no longer holds what ingest accepted" in reasons
    assert "FAILED" in row.inner_text()
    # "Verify now" streams its progress and ends with the failure, in this page.
    page.click("form.verify-run button[type=submit]")
    summary = page.wait_for_selector("#verify-progress .verify-summary", timeout=30_000)
    assert summary is not None
    assert "Verification FAILED" in summary.inner_text()
    assert "modified" in summary.inner_text()
    clean(page)


# -- alerts --------------------------------------------------------------------------------


def test_acknowledge_an_alert(world: World, chromium: Browser) -> None:
    page = world.page(chromium, BROKEN, **SECURITY)
    world.open(page, "/console/alerts?state=open")
    row = page.locator("#alert-list tbody tr", has_text=BROKEN_STREAM).first
    title = row.locator("td").nth(1).locator("a").inner_text()
    with page.expect_navigation():
        row.locator("button:text('Acknowledge')").click()
    assert "/console/alerts" in page.url
    assert title not in text_of(page, "#alert-list table")
    world.open(page, "/console/alerts?state=acknowledged")
    acknowledged = page.locator("#alert-list tbody tr", has_text=title)
    assert acknowledged.count() == 1
    assert acknowledged.locator("button:text('Acknowledge')").count() == 0
    assert acknowledged.locator("button:text('Resolve')").count() == 1
    # The integrity home no longer counts it as an open alert (the failed record remains).
    world.open(page, "/console/")
    reasons = page.locator("table.grid tbody tr", has_text=BROKEN_STREAM).inner_text()
    assert "failed verification at ingest" in reasons
    assert "open critical alert" not in reasons
    clean(page)


# -- verify & export -----------------------------------------------------------------------


def test_download_an_export_and_verify_it_offline(
    world: World, chromium: Browser, tmp_path: Path
) -> None:
    page = world.page(chromium, **ADMIN)
    world.open(page, "/console/verify")
    page.fill("#export-stream", ACME_STREAM)
    with page.expect_navigation():
        page.click("form[action='/console/exports'] button[type=submit]")
    assert re.search(r"/console/exports/[^/]+$", page.url), page.url
    export_id = page.url.rsplit("/", 1)[-1]
    assert f"{len(world.records[ACME_STREAM])} record(s)" in text_of(page, "p.lede")
    with page.expect_download() as info:
        page.click("a[download]")
    archive = tmp_path / info.value.suggested_filename
    info.value.save_as(archive)
    assert archive.name == f"ffaudit-export-{export_id}.zip"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unpacked")
    bundle = tmp_path / "unpacked" / export_id
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "audit",
            "verify-export",
            str(bundle),
            "--pubkey",
            str(world.settings.service_keys_dir / SIGNING_PUB),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK:" in run.stdout
    clean(page)


# -- tenants and sessions ------------------------------------------------------------------


def test_tenant_b_sees_none_of_tenant_a(world: World, chromium: Browser) -> None:
    page = world.page(chromium, BETA, **ADMIN)
    acme_marks = (ACME_STREAM, "job-1", "job-2", "OutOfMemory", "inswapper", BROKEN_STREAM)
    for path, own in (
        ("/console/", BETA_STREAM),
        ("/console/events", BETA_STREAM),
        ("/console/events?include_trail=1", BETA_STREAM),
        ("/console/jobs", "beta-run-7"),
        ("/console/actors?actor=bob", "0 action(s)"),
        ("/console/alerts", "No open alert"),
        ("/console/verify", BETA_STREAM),
        ("/console/retention", "Legal holds"),
    ):
        world.open(page, path)
        shown = text_of(page, "body")
        assert own in shown, f"{path}: {own!r} missing"
        leaked = [m for m in acme_marks if m in shown]
        assert not leaked, f"{path} shows tenant acme's {leaked}"
        clean(page)
    # Acme's records by their ids: not found, as if they did not exist.
    for path in (f"/console/events/{doc_of(world.records[ACME_STREAM][0])}", "/console/jobs/job-1"):
        answer = page.goto(world.base + path)
        assert answer is not None
        assert answer.status == 404, path
        assert "Not found" in text_of(page)


def _forged(**claims: Any) -> str:
    """A token like jwt_token's, signed with another secret."""
    good = jwt.decode(jwt_token(**claims), options={"verify_signature": False})
    return jwt.encode(good, "f" * 40, algorithm="HS256")


def _edited(**changes: Any) -> str:
    """A genuine token whose claims were edited afterwards (its signature kept)."""
    header, payload, signature = jwt_token(**ADMIN).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edited = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).rstrip(b"=")
    return f"{header}.{edited.decode()}.{signature}"


@pytest.mark.parametrize(
    ("kind", "token"),
    [
        ("forged", lambda: _forged(**ADMIN)),
        ("expired", lambda: jwt_token(exp=int(time.time()) - 60, nbf=int(time.time()) - 600)),
        ("edited-tenant-claim", lambda: _edited(tenant=BETA)),
    ],
)
def test_forged_and_expired_tokens_are_refused(
    world: World, chromium: Browser, kind: str, token: Callable[[], str]
) -> None:
    page = new_page(chromium)
    # Through the form: the sign-in page again, with the reason.
    world.open(page, "/console/sign-in")
    page.fill("#token", token())
    with page.expect_navigation():
        page.click("form[action='/console/sign-in'] button[type=submit]")
    assert page.url.endswith("/console/sign-in")
    assert page.inner_text("h1") == "Sign in"
    assert page.locator("p.error[role=alert]").count() == 1
    # As a cookie set by hand: every view answers the sign-in page, nothing of the tenant.
    host = world.base.removeprefix("http://")
    page.context.add_cookies(
        [{"name": "ffaudit_console", "value": token(), "url": f"http://{host}/"}]
    )
    for path in ("/console/", "/console/events", "/console/alerts"):
        page.goto(world.base + path)
        assert page.inner_text("h1") == "Sign in", path
        assert page.locator("nav[aria-label=Views]").count() == 0
        assert ACME_STREAM not in text_of(page, "body")
    page.context.close()


def test_a_post_without_the_csrf_token_is_refused(world: World, chromium: Browser) -> None:
    page = world.page(chromium, **ADMIN)
    world.open(page, "/console/verify")
    exports_before = len(list(world.settings.exports_dir.rglob("manifest.json")))
    # The session cookie goes along; the token does not.
    posts: list[tuple[str, dict[str, str | float | bool]]] = [
        ("/console/exports", {"stream": ACME_STREAM}),
        ("/console/retention/holds", {"scope": "tenant", "reason": "csrf test"}),
        ("/console/sign-out", {}),
    ]
    for path, form in posts:
        answer = page.request.post(world.base + path, form=form, max_redirects=0)
        assert answer.status == 403, f"{path}: {answer.status}"
        wrong = page.request.post(world.base + path, form={**form, "csrf": "0" * 64})
        assert wrong.status == 403, f"{path} with a wrong token: {wrong.status}"
    # From the page itself (same origin, cookies sent), without the header: refused too.
    status = page.evaluate(
        "fetch('/console/sign-out', {method: 'POST', credentials: 'same-origin'})"
        ".then(r => r.status)"
    )
    assert status == 403
    assert len(list(world.settings.exports_dir.rglob("manifest.json"))) == exports_before
    world.open(page, "/console/retention")
    assert "csrf test" not in text_of(page)
    assert page.locator("nav[aria-label=Views]").count() == 1  # still signed in


# -- markup in the data --------------------------------------------------------------------


def test_csp_blocks_an_injected_script(world: World, chromium: Browser) -> None:
    page = world.page(chromium, **ADMIN)
    record = xss_record(world)
    views = [
        "/console/events?job=job-x&col=time&col=action&col=error&col=message",
        f"/console/events/{doc_of(record)}",
        "/console/jobs",
        "/console/jobs/job-x",
        "/console/actors?actor=mallory",
    ]
    for path in views:
        world.open(page, path)
        shown = text_of(page)
        # Literally: the event page shows the record as JSON (its quotes escaped).
        literal = PAYLOAD if "/events/" not in path else PAYLOAD.replace('"', '\\"')
        assert literal in shown, f"{path}: the text is not shown literally:\n{shown}"
        assert page.evaluate("typeof window.__pwned") == "undefined", path
        assert page.locator("main img[src=x]").count() == 0, path
        assert page.locator("main script:not([type='application/json'])").count() == 0, path
        clean(page)
    # Were it ever put into the page as markup, the CSP would still refuse to run it.
    page.evaluate(
        """payload => {
            document.querySelector("main").insertAdjacentHTML("beforeend", payload);
            const s = document.createElement("script");
            s.textContent = "window.__pwned = 1";
            document.body.append(s);
        }""",
        PAYLOAD,
    )
    wait_for(lambda: len(csp_violations(page)) >= 2, 10, "the CSP to report both blocks")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    reports = " ".join(csp_violations(page))
    assert "inline event handler" in reports
    assert "inline script" in reports


# -- screenshots ---------------------------------------------------------------------------


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # the SQLite world, once
def test_screenshots_of_every_view(world: World, chromium: Browser, tmp_path: Path) -> None:
    """docs/console/<view>.png (1440x900) when FFAUDIT_SCREENSHOTS=1; otherwise into a
    temporary folder, so that the script stays in working order."""
    publish = os.environ.get("FFAUDIT_SCREENSHOTS") == "1"
    out = Path(__file__).parents[2] / "docs" / "console" if publish else tmp_path

    signed_out = new_page(chromium)

    def page_for(shot: Shot) -> Page:
        if shot.claims is None:
            return signed_out
        return world.page(chromium, shot.tenant, **shot.claims)

    written = capture(page_for, world.base, {"event": _event_path(world)}, out)
    signed_out.context.close()
    assert sorted(p.name for p in written) == sorted(f"{s.view}.png" for s in SHOTS)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
