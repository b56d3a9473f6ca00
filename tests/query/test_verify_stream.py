"""POST /v1/verify with `Accept: application/x-ndjson`: progress lines, then the report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from audit.app import create_app
from audit.query.progress import NDJSON
from audit.query.service import PROGRESS_EVERY
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer
from tests.query.conftest import load_chains

Env = tuple[TestClient, AuditSettings, dict[str, int]]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    settings = app_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        # cam-1 spans a few progress intervals; cam-2 is short.
        sizes = load_chains(client, "", {"cam-1": 2 * PROGRESS_EVERY + 400, "cam-2": 30})
        yield client, settings, sizes


def lines_of(client: TestClient, body: dict[str, Any], **who: Any) -> list[dict[str, Any]]:
    with client.stream(
        "POST", "/v1/verify", json=body, headers={**bearer(**who), "accept": NDJSON}
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith(NDJSON)
        return [orjson.loads(line) for line in response.iter_lines() if line]


def test_progress_lines_then_the_same_report_as_plain_json(env: Env) -> None:
    client, _, sizes = env
    plain = client.post("/v1/verify", json={"stream": "cam-1"}, headers=bearer())
    assert plain.headers["content-type"] == "application/json"
    assert plain.json()["ok"] is True
    lines = lines_of(client, {"stream": "cam-1"})
    *progress, last = lines
    assert last == {"result": plain.json()}
    updates = [line["progress"] for line in progress]
    assert updates[0] == {"stream": "cam-1", "records": 0, "expected": sizes["cam-1"]}
    counts = [u["records"] for u in updates]
    assert counts == sorted(counts)
    assert PROGRESS_EVERY in counts
    assert 2 * PROGRESS_EVERY in counts
    assert counts[-1] == sizes["cam-1"]  # the last one is the final count
    assert {u["expected"] for u in updates} == {sizes["cam-1"]}
    # Refused media type and quality 0: the plain report.
    refused = client.post(
        "/v1/verify",
        json={"stream": "cam-2"},
        headers={**bearer(), "accept": f"{NDJSON};q=0, application/json"},
    )
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["ok"] is True


def test_a_time_range_streams_every_stream_of_the_tenant(env: Env) -> None:
    client, _, sizes = env
    lines = lines_of(client, {"since": "2020-01-01T00:00:00Z"})
    started = [
        line["progress"]["stream"] for line in lines[:-1] if line["progress"]["records"] == 0
    ]
    report = lines[-1]["result"]
    assert {"cam-1", "cam-2"} <= set(started)
    assert started == [s["stream"] for s in report["streams"]]
    assert report["ok"] is True
    assert {s["stream"]: s["records"] for s in report["streams"]}.items() >= sizes.items()


def test_edits_and_deletions_inside_the_store_reach_the_result_line(env: Env) -> None:
    client, settings, sizes = env
    db = create_engine(settings.database_url)
    with db.begin() as conn:
        row = conn.execute(text("SELECT record FROM events WHERE doc_id = 'cam-1:1500'")).one()
        edited = row[0].replace('"success"', '"failure"')
        conn.execute(
            text("UPDATE events SET record = :r WHERE doc_id = 'cam-1:1500'"), {"r": edited}
        )
        conn.execute(text("DELETE FROM events WHERE doc_id = :d"), {"d": f"cam-2:{sizes['cam-2']}"})
    db.dispose()
    lines = lines_of(client, {"since": "2020-01-01T00:00:00Z"})
    report = lines[-1]["result"]
    assert report["ok"] is False
    streams = {s["stream"]: s for s in report["streams"]}
    assert [(f["kind"], f["sequence"]) for f in streams["cam-1"]["failures"]] == [
        ("modified", 1500)
    ]
    assert streams["cam-2"]["matches_head"] is False
    assert streams["cam-2"]["stored_last_sequence"] == sizes["cam-2"] - 1
    plain = client.post("/v1/verify", json={"stream": "cam-1"}, headers=bearer()).json()
    assert plain["ok"] is False
    # A verification that found failures is logged as a failed one, not "success, ok=false".
    stream = client.app.state.services.servicelog.stream_for("acme")  # type: ignore[attr-defined]
    logged = client.get(
        "/v1/events",
        params={"stream": stream, "action": "audit.verified", "order": "asc"},
        headers=bearer(),
    ).json()["events"]
    assert [
        (e["record"]["event.outcome"], e["record"]["ffaudit.metadata"]["ok"]) for e in logged
    ] == [("failure", False), ("failure", False)]


def test_an_error_mid_stream_is_the_last_line_and_is_logged(env: Env) -> None:
    client, settings, sizes = env
    db = create_engine(settings.database_url)
    with db.begin() as conn:  # a damaged key row: cam-2 cannot be verified at all
        conn.execute(text("UPDATE streams SET public_key_pem = 'garbage' WHERE id = 'cam-2'"))
    db.dispose()
    lines = lines_of(client, {"since": "2020-01-01T00:00:00Z"})
    assert all("progress" in line for line in lines[:-1])
    assert lines[-2]["progress"] == {"stream": "cam-2", "records": 0, "expected": sizes["cam-2"]}
    assert lines[-1] == {
        "error": {"type": "KeyMaterialError", "message": "stream 'cam-2' has an unreadable key"}
    }
    stream = client.app.state.services.servicelog.stream_for("acme")  # type: ignore[attr-defined]
    logged = client.get(
        "/v1/events",
        params={"stream": stream, "action": "audit.verified", "order": "asc"},
        headers=bearer(),
    ).json()["events"]
    assert [e["record"]["event.outcome"] for e in logged] == ["failure"]
    assert logged[0]["record"]["ffaudit.metadata"]["error"] == "KeyMaterialError"


def test_refusals_come_before_the_stream_in_the_error_schema(env: Env) -> None:
    client, _, _ = env
    ndjson = {"accept": NDJSON}
    missing = client.post("/v1/verify", json={"stream": "nope"}, headers={**bearer(), **ndjson})
    assert missing.status_code == 404
    assert missing.json() == {"error": {"type": "NotFoundError", "message": "no stream 'nope'"}}
    other_tenant = client.post(
        "/v1/verify", json={"stream": "cam-1"}, headers={**bearer(tenant="other"), **ndjson}
    )
    assert other_tenant.status_code == 404
    engineer = client.post(
        "/v1/verify", json={"stream": "cam-1"}, headers={**bearer(roles=["engineer"]), **ndjson}
    )
    assert engineer.status_code == 403
    assert engineer.json()["error"]["type"] == "ForbiddenError"
    anonymous = client.post("/v1/verify", json={"stream": "cam-1"}, headers=ndjson)
    assert anonymous.status_code == 401
    empty = client.post("/v1/verify", json={}, headers={**bearer(), **ndjson})
    assert empty.status_code == 422
    assert empty.json()["error"]["type"] == "InvalidInputError"


def test_streamed_verifications_are_in_the_log_of_the_logs(env: Env) -> None:
    client, _, _ = env
    lines_of(client, {"stream": "cam-1"})
    stream = client.app.state.services.servicelog.stream_for("acme")  # type: ignore[attr-defined]
    logged = client.get(
        "/v1/events", params={"stream": stream, "action": "audit.verified"}, headers=bearer()
    ).json()["events"]
    assert len(logged) == 1
    assert logged[0]["record"]["event.outcome"] == "success"
    assert logged[0]["record"]["ffaudit.metadata"] == {"streams": 1, "ok": True}


def test_openapi_documents_both_media_types(env: Env) -> None:
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/verify"]["post"]["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/VerifyOut"}
    lines = content[NDJSON]["schema"]["oneOf"]
    assert {"$ref": "#/components/schemas/ErrorBody"} in lines
    refs = [line.get("properties", {}).get("result", {}).get("$ref") for line in lines]
    assert "#/components/schemas/VerifyOut" in refs
    assert {"ErrorBody", "VerifyOut"} <= set(spec["components"]["schemas"])
