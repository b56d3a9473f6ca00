"""The sidecar API: caller identity from a bearer token, jobs, results, upload erasure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from audit.integrity.seal import AuditEvent
from engine.api import Engine, create_app
from engine.jobs.runner import JobRunner
from engine.pipeline.engine import FacePipeline
from engine.settings import EngineSettings

SECRET = "test-secret-of-at-least-32-bytes-long!"


def token(sub: str, *, secret: str = SECRET, minutes: int = 5) -> str:
    claims = {"sub": sub, "exp": datetime.now(UTC) + timedelta(minutes=minutes)}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture
def events() -> list[AuditEvent]:
    return []


@pytest.fixture
def client(tmp_path: Path, events: list[AuditEvent]) -> Iterator[TestClient]:
    settings = EngineSettings(work_dir=tmp_path / "work", jwt_secret=SECRET)
    runner = JobRunner(FacePipeline(settings, events.append), events.append, settings.work_dir)
    with TestClient(create_app(Engine(settings, runner, events.append))) as client:
        yield client


def headers(sub: str = "alice", session: str = "s-1", **kw: object) -> dict[str, str]:
    return {"authorization": f"Bearer {token(sub, **kw)}", "x-session-id": session}  # type: ignore[arg-type]


def wait_done(client: TestClient, job_id: str, sub: str = "alice") -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers(sub)).json()
        if body["state"] in ("completed", "failed"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_submit_anonymize_fetch_result_and_uploads_are_erased(
    client: TestClient, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    with sample_image_path.open("rb") as image:
        response = client.post(
            "/v1/jobs",
            headers=headers(),
            files={"target": ("t1.jpg", image, "image/jpeg")},
            data={"job_type": "anonymize", "method": "mosaic"},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    body = wait_done(client, job_id)
    assert body["state"] == "completed"
    assert body["faces"] == 6  # CenterFace, the default detector: every face of t1.jpg
    assert body["needs_review"] is False
    result = client.get(f"/v1/jobs/{job_id}/result", headers=headers())
    assert result.status_code == 200
    assert result.content[:3] == b"\xff\xd8\xff"  # a JPEG, like the input
    # The caller's identity and session reached the records; the upload is gone.
    job_events = [e for e in events if e.job_id == job_id]
    assert {e.actor for e in job_events} == {"alice"}
    assert {e.session for e in job_events} == {"s-1"}
    # The one record that is not the job's: the engine loading its detector at start-up.
    assert [e.action.value for e in events if e.job_id != job_id] == ["model.loaded"]
    assert any(e.action.value == "input.erased" for e in events)
    assert list((tmp_path / "work" / "uploads").iterdir()) == []


def test_identity_is_required_and_checked(client: TestClient, sample_image_path: Path) -> None:
    files = {"target": ("t1.jpg", sample_image_path.read_bytes(), "image/jpeg")}
    assert client.post("/v1/jobs", files=files).status_code == 401
    forged = {
        "authorization": f"Bearer {token('alice', secret='another-secret-xxxxxxxxxxxxxxxxxxxx')}"
    }
    assert client.post("/v1/jobs", files=files, headers=forged).status_code == 401
    expired = {"authorization": f"Bearer {token('alice', minutes=-1)}"}
    response = client.post("/v1/jobs", files=files, headers=expired)
    assert response.status_code == 401
    # Only that: PyJWT's reasons would tell a forger what to fix.
    assert response.json()["error"] == {"type": "UnauthorizedError", "message": "invalid token"}
    unsigned = jwt.encode({"sub": "alice", "exp": 9999999999}, "", algorithm="none")
    assert (
        client.post(
            "/v1/jobs", files=files, headers={"authorization": f"Bearer {unsigned}"}
        ).status_code
        == 401
    )


def test_callers_see_only_their_own_jobs(client: TestClient, sample_image_path: Path) -> None:
    files = {"target": ("t1.jpg", sample_image_path.read_bytes(), "image/jpeg")}
    job_id = client.post("/v1/jobs", files=files, headers=headers("alice")).json()["job_id"]
    wait_done(client, job_id)
    theirs = headers("mallory", session="s-m")
    assert client.get(f"/v1/jobs/{job_id}", headers=theirs).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/result", headers=theirs).status_code == 404


def test_bad_submissions(client: TestClient, sample_image_path: Path) -> None:
    files = {"target": ("t1.jpg", sample_image_path.read_bytes(), "image/jpeg")}
    swap = client.post("/v1/jobs", files=files, headers=headers(), data={"job_type": "swap"})
    assert swap.status_code in (400, 409)  # no source, and no model pack here
    blend = client.post("/v1/jobs", files=files, headers=headers(), data={"blend": "1.5"})
    assert blend.status_code == 422
    empty = client.post(
        "/v1/jobs", headers=headers(), files={"target": ("e.jpg", b"", "image/jpeg")}
    )
    assert empty.status_code == 422
    garbage = client.post(
        "/v1/jobs", headers=headers(), files={"target": ("g.jpg", b"not an image", "image/jpeg")}
    )
    assert garbage.status_code == 422  # probed on upload: not an image or video it can read


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result"} <= set(spec["paths"])
