"""The console's events explorer and event page, through the real app and a signed-in
browser session."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from audit.integrity.events import EventAction, Outcome
from audit.integrity.seal import AuditEvent
from audit.query.service import Filters
from audit.services import Services
from audit.settings import AuditSettings
from dashboards.views.events import TRAIL_READS, pick_interval
from tests.apptools import bearer
from tests.dashboards.conftest import ConsoleFactory, doc_id, seed

XSS = "<script>alert(1)</script>"
_HIST = re.compile(r'<script type="application/json" id="hist">(.*?)</script>', re.S)
_LINK = re.compile(r'href="/console/events/([^"?]+)"')


def services(client: TestClient) -> Services:
    svc: Services = client.app.state.services  # type: ignore[attr-defined]
    return svc


def listed(html: str) -> set[str]:
    """The ids of the records the page links to."""
    return set(_LINK.findall(html))


def histogram_total(html: str) -> int:
    found = _HIST.search(html)
    assert found, "no histogram data on the page"
    return sum(n for _, n in json.loads(found.group(1))["buckets"])


def store_count(client: TestClient, tenant: str, filters: Filters) -> int:
    """What the store holds for `filters`, asked through the same service call as the API."""
    svc = services(client)
    query = svc.queries.build(tenant, None, filters)

    async def count() -> int:
        return sum((await svc.store.stats(query, by="stream")).values())

    assert client.portal is not None
    return client.portal.call(count)


def two_streams(client: TestClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return seed(client, "acme", "cam-1", 6), seed(client, "acme", "cam-2", 4)


def test_explorer_lists_both_streams(console: ConsoleFactory) -> None:
    client = console()
    one, two = two_streams(client)
    page = client.get("/console/events")
    assert page.status_code == 200, page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    ids = listed(page.text)
    assert {doc_id(r) for r in one + two} <= ids
    assert "cam-1" in page.text
    assert "cam-2" in page.text
    # the default columns, and a chosen set
    assert "Actor (pseudonym)" in page.text
    chosen = client.get("/console/events", params=[("col", "stream"), ("col", "message")])
    assert "Actor (pseudonym)</th>" not in chosen.text
    assert "Message</th>" in chosen.text


def test_a_filter_changes_the_results(console: ConsoleFactory) -> None:
    client = console()
    one, two = two_streams(client)
    page = client.get("/console/events", params={"stream": "cam-2"})
    assert page.status_code == 200, page.text
    assert listed(page.text) == {doc_id(r) for r in two}
    # the form keeps the filter, so the URL is the view's state
    assert 'name="stream" value="cam-2"' in page.text
    # an actor given raw is pseudonymised as GET /v1/events does
    mine = client.get("/console/events", params={"actor": "alice", "stream": "cam-1"})
    alice = {doc_id(r) for r in one if r.get("event.action") == "job.started"}
    assert alice
    assert listed(mine.text) == alice
    api = client.get(
        "/v1/events", params={"actor": "alice", "stream": "cam-1"}, headers=bearer()
    ).json()
    assert {e["id"] for e in api["events"]} == alice
    failed = client.get("/console/events", params=[("action", "frame.failed")])
    assert listed(failed.text) == {
        doc_id(r) for r in one + two if r["event.action"] == "frame.failed"
    }


def test_pagination_carries_a_cursor(console: ConsoleFactory) -> None:
    client = console()
    records = seed(client, "acme", "cam-1", 60)
    first = client.get("/console/events", params={"stream": "cam-1"})
    found = re.search(r'href="(/console/events\?[^"]*cursor=[^"]+)" rel="next"', first.text)
    assert found, "no next-page link"
    url = found.group(1).replace("&amp;", "&")
    assert "stream=cam-1" in url
    second = client.get(url)
    assert second.status_code == 200
    seen = listed(first.text) | listed(second.text)
    assert seen == {doc_id(r) for r in records}
    assert not listed(first.text) & listed(second.text)


class TestHistogram:
    @pytest.fixture
    def console_settings(self, any_store_settings: AuditSettings) -> AuditSettings:
        return any_store_settings

    def test_total_equals_the_store_count(self, console: ConsoleFactory) -> None:
        client = console()
        two_streams(client)
        for params, filters in [
            ({}, Filters(actions=tuple(a for a in EventAction if a not in TRAIL_READS))),
            ({"stream": "cam-2"}, Filters(streams=("cam-2",))),
            ({"action": "frame.failed"}, Filters(actions=("frame.failed",))),
            (
                {"outcome": "failure", "stream": "cam-1"},
                Filters(outcomes=("failure",), streams=("cam-1",)),
            ),
        ]:
            page = client.get("/console/events", params=params)
            assert page.status_code == 200, page.text
            expected = store_count(client, "acme", filters)
            assert expected > 0
            assert histogram_total(page.text) == expected, params


def test_interval_gives_a_readable_chart() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for span, width in [
        (timedelta(seconds=30), 1),
        (timedelta(hours=1), 60),
        (timedelta(days=1), 15 * 60),
        (timedelta(days=30), 6 * 3600),
        (timedelta(days=365), 7 * 86400),
    ]:
        assert pick_interval(t0, t0 + span) == width
        assert span.total_seconds() / width <= 120


def test_event_page_json_and_chain_links(console: ConsoleFactory) -> None:
    client = console()
    records = seed(client, "acme", "cam-1", 12)
    middle = next(r for r in records if r["event.sequence"] == 3)
    page = client.get(f"/console/events/{doc_id(middle)}")
    assert page.status_code == 200, page.text
    assert "&#34;event.hash&#34;: &#34;" + middle["event.hash"] in page.text
    assert 'href="/console/events/cam-1:2" rel="prev"' in page.text
    assert 'href="/console/events/cam-1:4" rel="next"' in page.text
    # the first checkpoint at or after it (every 5 events: sequence 6)
    checkpoint = next(r for r in records if r["event.action"] == "audit.checkpoint")
    assert checkpoint["event.sequence"] >= 3
    assert f'href="/console/events/{doc_id(checkpoint)}"' in page.text
    # the events around it: the stream's neighbours, up to 10 on each side
    around = listed(page.text)
    assert {f"cam-1:{n}" for n in (1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)} <= around
    first = client.get("/console/events/cam-1:1")
    assert 'rel="prev"' not in first.text
    assert client.get("/console/events/cam-1:999").status_code == 404


def test_free_text_is_escaped(console: ConsoleFactory) -> None:
    client = console()
    records = seed(
        client,
        "acme",
        "cam-1",
        [
            AuditEvent(
                action=EventAction.FRAME_FAILED,
                outcome=Outcome.FAILURE,
                error_type="BadFrame",
                error_message=f"frame said {XSS}",
                metadata={"note": XSS},
            )
        ],
    )
    assert XSS in json.dumps(records[0])  # it is stored as sent
    explorer = client.get("/console/events", params=[("col", "message"), ("col", "stream")])
    event = client.get(f"/console/events/{doc_id(records[0])}")
    for page in (explorer, event):
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_other_tenants_event_is_not_found(console: ConsoleFactory) -> None:
    client = console()
    records = seed(client, "acme", "cam-a", 3)
    seed(client, "globex", "cam-g", 3)
    assert client.get(f"/console/events/{doc_id(records[0])}").status_code == 200
    console(tenant="globex")
    page = client.get(f"/console/events/{doc_id(records[0])}")
    assert page.status_code in (403, 404)
    assert records[0]["event.hash"] not in page.text
    explorer = client.get("/console/events")
    assert explorer.status_code == 200
    assert "cam-g:1" in listed(explorer.text)
    assert not any(i.startswith("cam-a:") for i in listed(explorer.text))


def test_a_subject_is_sent_to_its_own_view(console: ConsoleFactory) -> None:
    client = console(sub="alice", roles=["subject"])
    assert client.get("/console/events").status_code == 403
    assert client.get("/console/events/cam-1:1").status_code == 403


def test_the_page_view_is_in_the_log_of_the_logs(console: ConsoleFactory) -> None:
    client = console()
    seed(client, "acme", "cam-1", 3)
    secret_actor = "someone-secret"
    assert (
        client.get("/console/events", params={"actor": secret_actor, "q": "frame"}).status_code
        == 200
    )
    trail = client.get("/console/events", params={"action": "audit.queried", "col": "stream"})
    assert trail.status_code == 200
    reads = client.get(
        "/v1/events", params={"action": "audit.queried", "limit": 100}, headers=bearer()
    ).json()["events"]
    views = [
        e["record"]["ffaudit.metadata"]
        for e in reads
        if e["record"].get("ffaudit.metadata", {}).get("endpoint") == "console:events"
    ]
    assert views, reads
    logged = next(m for m in views if "actor" in m.get("filters", []))
    assert logged["filters"] == ["actor", "text"]
    assert secret_actor not in json.dumps(reads)
    # the trail's reads are hidden from the explorer unless asked for
    plain = client.get("/console/events")
    assert "audit.queried</td>" not in plain.text
    shown = client.get("/console/events", params={"include_trail": "1"})
    assert "audit.queried</td>" in shown.text


def test_store_count_helper_agrees_with_api(console: ConsoleFactory) -> None:
    client = console()
    one, _ = two_streams(client)
    assert store_count(client, "acme", Filters(streams=("cam-1",))) == len(one)
    assert asyncio.iscoroutinefunction(services(client).store.histogram)


def test_an_alert_group_pseudonym_filters_the_explorer_and_links_to_an_export(
    console: ConsoleFactory,
) -> None:
    client = console()
    one, _ = two_streams(client)
    alice = [r for r in one if r.get("event.action") == "job.started"]
    pseudonym = alice[0]["user.hash"]
    page = client.get("/console/events", params={"actor_hash": pseudonym})
    assert page.status_code == 200, page.text
    assert listed(page.text) == {doc_id(r) for r in one + _ if r.get("user.hash") == pseudonym}
    assert "/console/verify?actor_hash=" + pseudonym in page.text  # "export these"
    bad = client.get("/console/events", params={"actor_hash": "not-a-pseudonym"})
    assert bad.status_code == 422
    assert "<!doctype html>" in bad.text
