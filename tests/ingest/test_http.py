"""The HTTP API in-process (FastAPI TestClient runs the real app and its lifespan)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.db.session import upgrade
from audit.integrity.keys import Signer
from audit.settings import AuditSettings

from .conftest import make_records


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def client(tmp_path: Path, signer: Signer) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path}/api.db"
    upgrade(url)
    settings = AuditSettings(
        database_url=url,
        forward_enabled=False,
        max_request_bytes=256 * 1024,
        max_records_per_request=100,
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/streams",
            json={
                "stream": "cam-1",
                "tenant": "acme",
                "public_key_pem": signer.verifier.pem().decode(),
            },
        )
        assert response.status_code == 201, response.text
        yield client


def post(
    client: TestClient, body: bytes, content_type: str = "application/json", stream: str = "cam-1"
) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.post(
        f"/v1/streams/{stream}/records", content=body, headers={"content-type": content_type}
    )
    return response.status_code, response.json()


def test_json_array_then_ndjson_resend_is_idempotent(client: TestClient, signer: Signer) -> None:
    records = make_records(signer, 10)
    status, body = post(client, orjson.dumps(records))
    assert status == 200
    assert body["counts"] == {"ok": len(records)}
    ndjson = b"\n".join(orjson.dumps(r) for r in records) + b"\n"
    status, body = post(client, ndjson, "application/x-ndjson")
    assert status == 200
    assert body["counts"] == {"duplicate": len(records)}
    stream = client.get("/v1/streams/cam-1").json()
    assert stream["head_sequence"] == len(records)
    assert stream["closed"] is True


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message", "index"),
    [
        (b"{not json", "application/json", 422, "body is not JSON", None),
        (b'{"a": 1}', "application/json", 422, "JSON array", None),
        (b"[]", "application/json", 422, "no records", None),
        (b'{"ok": 1}\n{bad', "application/x-ndjson", 422, "record 1 (line 2): not JSON", None),
    ],
)
def test_bad_bodies_are_refused_clearly(
    client: TestClient,
    body: bytes,
    content_type: str,
    status: int,
    message: str,
    index: int | None,
) -> None:
    got, doc = post(client, body, content_type)
    assert got == status
    assert message in doc["error"]["message"]


def test_bad_record_is_named_by_index_and_nothing_is_stored(
    client: TestClient, signer: Signer
) -> None:
    records = make_records(signer, 5)
    bad = [*records[:3], {**records[3], "event.sequence": "four"}, records[4]]
    status, doc = post(client, orjson.dumps(bad))
    assert status == 422
    assert doc["error"]["index"] == 3
    assert "event.sequence" in doc["error"]["message"]
    assert client.get("/v1/streams/cam-1").json()["head_sequence"] == 0

    other = [*records[:2], {**records[2], "ffaudit.stream": "cam-2"}]
    status, doc = post(client, orjson.dumps(other))
    assert (status, doc["error"]["index"]) == (422, 2)


def test_limits(client: TestClient, signer: Signer) -> None:
    status, doc = post(client, b"[" + b" " * 300_000 + b"]")
    assert status == 413
    records = make_records(signer, 120, every=1000)
    status, doc = post(client, orjson.dumps(records[:101]))
    assert status == 413
    assert "more than 100 records" in doc["error"]["message"]


def test_unknown_stream_is_quarantined_with_202(client: TestClient) -> None:
    records = make_records(Signer.generate(), 2, stream="ghost")
    status, doc = post(client, orjson.dumps(records), stream="ghost")
    assert status == 202
    assert len(doc["quarantined"]) == len(records)


def test_stream_registration_rules(client: TestClient, signer: Signer) -> None:
    pem = signer.verifier.pem().decode()
    again = client.post(
        "/v1/streams", json={"stream": "cam-1", "tenant": "acme", "public_key_pem": pem}
    )
    assert again.status_code == 201
    other_key = Signer.generate().verifier.pem().decode()
    conflict = client.post(
        "/v1/streams", json={"stream": "cam-1", "tenant": "acme", "public_key_pem": other_key}
    )
    assert conflict.status_code == 409
    bad = client.post(
        "/v1/streams", json={"stream": "cam-2", "tenant": "Not A Slug", "public_key_pem": pem}
    )
    assert bad.status_code == 422
    assert "tenant" in bad.json()["error"]["message"]
    not_a_key = client.post(
        "/v1/streams", json={"stream": "cam-2", "tenant": "acme", "public_key_pem": "nope"}
    )
    assert not_a_key.status_code == 422
    assert client.get("/v1/streams/nope").status_code == 404


def test_operations_endpoints(client: TestClient, signer: Signer) -> None:
    post(client, orjson.dumps(make_records(signer, 3)))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "store": True}
    metrics = client.get("/metrics").text
    assert 'ffaudit_records_ingested_total{outcome="ok",source="http"} 4.0' in metrics
    # The stream's registration is in the log of the logs, stored like any record.
    assert 'ffaudit_records_ingested_total{outcome="ok",source="service"} 1.0' in metrics
    assert "ffaudit_ack_latency_seconds_count" in metrics
