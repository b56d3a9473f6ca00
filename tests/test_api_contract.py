"""What the OpenAPI document promises, held where the review found the code laxer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.integrity.keys import Signer
from tests.apptools import app_settings, bearer


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(tmp_path))) as client:
        yield client


@pytest.mark.parametrize("value", ["0.5", "1700000000", "-3", "1e9"])
def test_a_number_is_not_a_date_time(client: TestClient, value: str) -> None:
    for path in ("/v1/events", "/v1/stats"):
        answer = client.get(path, params={"until": value}, headers=bearer())
        assert answer.status_code == 422, (path, value)
    verify = client.post("/v1/verify", json={"until": 0.5}, headers=bearer())
    assert verify.status_code == 422
    assert client.get("/v1/events", params={"until": "2026-11-03T00:00:00Z"}, headers=bearer())


def test_dry_run_must_be_a_boolean(client: TestClient) -> None:
    admin = bearer(roles=["admin"], amr=["otp"])
    for value in (0, 1, "false", None):
        answer = client.post("/v1/retention/run", json={"dry_run": value}, headers=admin)
        assert answer.status_code == 422, value  # 0 read as false started a real run


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    answer = client.request("OPTIONS", "/v1/webhooks", headers=bearer())
    assert answer.status_code == 405
    assert set(answer.headers["allow"].split(", ")) == {"GET", "POST"}
    rules = client.request("PATCH", "/v1/alert-rules/1", headers=bearer())
    assert rules.status_code == 405
    assert set(rules.headers["allow"].split(", ")) >= {"PUT", "DELETE"}


def test_counts_and_switches_take_json_integers_and_booleans_only(client: TestClient) -> None:
    security = bearer(roles=["security"])
    rule = {"name": "r", "group_by": "stream", "window_s": 60, "threshold": 3}
    for bad in ({"threshold": False}, {"threshold": "3"}, {"window_s": 60.5}, {"enabled": 0}):
        answer = client.post("/v1/alert-rules", json={**rule, **bad}, headers=security)
        assert answer.status_code == 422, bad
    # 60.0 is an integer to JSON Schema (no fractional part): taken as 60.
    made = client.post("/v1/alert-rules", json={**rule, "window_s": 60.0}, headers=security)
    assert made.status_code == 201, made.text
    assert made.json()["window_s"] == 60


def test_the_document_states_the_rules_the_code_applies(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    # This deployment's retention floor, not a generic 1.
    days = schemas["PolicyUpdate"]["properties"]["days"]
    assert days["minimum"] == client.app.state.services.settings.retention_min_days  # type: ignore[attr-defined]
    assert "pattern" in schemas["StreamRegistration"]["properties"]["stream"]
    assert {"anyOf"} <= set(schemas["VerifyRequest"])
    assert len(schemas["HoldCreate"]["oneOf"]) == 4
    # A newline after a valid name is refused (a `$` that matches before "\n" let it in).
    admin = bearer(roles=["admin"], amr=["otp"])
    body = {"stream": "cam-1\n", "tenant": "acme", "public_key_pem": "x"}
    assert client.post("/v1/streams", json=body, headers=admin).status_code == 422


def test_refused_requests_are_in_the_log_of_the_logs(client: TestClient) -> None:
    engineer = bearer(roles=["engineer"], sub="eve")
    assert client.post("/v1/verify", json={"stream": "x"}, headers=engineer).status_code == 403
    admin = bearer(roles=["admin"], amr=["otp"])
    for status in (201, 409):  # the same name again, with another key
        key = Signer.generate().verifier.pem().decode()
        body = {"stream": "cam-1", "tenant": "acme", "public_key_pem": key}
        assert client.post("/v1/streams", json=body, headers=admin).status_code == status
    stream = client.app.state.services.servicelog.stream_for("acme")  # type: ignore[attr-defined]
    logged = client.get(
        "/v1/events",
        params={"stream": stream, "action": "access.denied", "order": "asc"},
        headers=bearer(),
    ).json()["events"]
    assert [
        (e["record"]["ffaudit.metadata"]["status"], e["record"]["ffaudit.metadata"]["route"])
        for e in logged
    ] == [(403, "/v1/verify"), (409, "/v1/streams")]
    assert {e["record"]["event.outcome"] for e in logged} == {"failure"}
