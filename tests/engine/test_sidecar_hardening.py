"""Issue 14, the sidecar as an attacker and an integrator meet it: every refusal leaves a
record, identities and sessions are bound, files have an owner and a lifetime, and a
normal stop closes the chain with a signed checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from fastapi.testclient import TestClient

from audit.integrity.seal import AuditEvent
from engine.api import Engine, _reap_once, create_app
from engine.identity import FailureLimiter
from engine.jobs.runner import JobRunner
from engine.pipeline.engine import FacePipeline
from engine.settings import EngineSettings
from tests.apptools import schemathesis
from tests.engine.test_api import SECRET, headers, token, wait_done


def build(work: Path, events: list[AuditEvent], **options: Any) -> Engine:
    settings = EngineSettings(work_dir=work, jwt_secret=SECRET, **options)
    runner = JobRunner(FacePipeline(settings, events.append), events.append, settings.work_dir)
    return Engine(settings, runner, events.append)


@pytest.fixture
def events() -> list[AuditEvent]:
    return []


@pytest.fixture
def engine(tmp_path: Path, events: list[AuditEvent]) -> Engine:
    return build(tmp_path / "work", events)


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as client:
        yield client


def image(path: Path, name: str = "t1.jpg") -> dict[str, Any]:
    return {"target": (name, path.read_bytes(), "image/jpeg")}


def actions(events: list[AuditEvent]) -> list[str]:
    return [e.action.value for e in events]


def uploads_left(engine: Engine) -> list[Path]:
    return [p for p in engine.uploads.rglob("*")]


def test_every_refused_job_leaves_a_record(
    client: TestClient, engine: Engine, events: list[AuditEvent], sample_image_path: Path
) -> None:
    cases = [
        ({"job_type": "swap"}, image(sample_image_path), {400, 409}),  # no source, no models
        ({"blend": "1.5"}, image(sample_image_path), {422}),  # form validation
        ({}, {"target": ("e.jpg", b"", "image/jpeg")}, {422}),  # empty
        ({}, {"target": ("g.jpg", b"garbage", "image/jpeg")}, {422}),  # not an image
    ]
    for data, files, statuses in cases:
        before = len(events)
        response = client.post("/v1/jobs", headers=headers(), data=data, files=files)
        assert response.status_code in statuses, response.text
        new = events[before:]
        refused = [e for e in new if e.action.value == "job.refused"]
        assert len(refused) == 1, (data, actions(new))
        assert refused[0].actor == "alice"
        assert refused[0].session == "s-1"
        assert refused[0].outcome.value == "failure"
    assert uploads_left(engine) == []


def test_a_refused_swap_erases_the_real_face_it_received_and_says_so(
    client: TestClient, engine: Engine, events: list[AuditEvent], sample_image_path: Path
) -> None:
    files = {**image(sample_image_path), "source": ("s.jpg", b"", "image/jpeg")}
    response = client.post("/v1/jobs", headers=headers(), data={"job_type": "swap"}, files=files)
    assert response.status_code == 422
    assert uploads_left(engine) == []  # the target, a real face, did not wait for the reaper
    erased = [e for e in events if e.action.value == "input.erased"]
    assert [e.metadata["reason"] for e in erased] == ["refused"]
    assert erased[0].metadata["role"] == "target"
    assert erased[0].file_sha256 is not None


def test_failed_authentications_are_recorded_without_flooding_the_trail(
    client: TestClient, events: list[AuditEvent], sample_image_path: Path
) -> None:
    bad = {"authorization": "Bearer not-a-token", "x-session-id": "s"}
    for _ in range(20):
        response = client.post("/v1/jobs", headers=bad, files=image(sample_image_path))
        assert response.status_code == 401
        assert response.json()["error"]["message"] == "invalid token"
    failed = [e for e in events if e.action.value == "auth.failed"]
    assert len(failed) == 5  # the burst; the other 15 are counted into the next record
    assert {e.actor for e in failed} == {"anonymous"}
    assert {e.client_ip for e in failed} == {"testclient"}
    assert failed[0].metadata["reason"] == "DecodeError"
    limiter = FailureLimiter(burst=2, every_s=10)
    assert [limiter.admit("ip", now=t) for t in (0, 0, 0, 0, 0)] == [0, 0, None, None, None]
    assert limiter.admit("ip", now=10) == 3  # one more allowed, reporting what it hid


@pytest.mark.parametrize("sub", ["system:ffengine", "SYSTEM:root", "", "  ", 7])
def test_reserved_and_empty_subjects_are_refused(
    client: TestClient, events: list[AuditEvent], sample_image_path: Path, sub: Any
) -> None:
    claims = {"sub": sub, "exp": datetime.now(UTC) + timedelta(minutes=5)}
    forged = {"authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    response = client.post(
        "/v1/jobs", headers={**forged, "x-session-id": "s"}, files=image(sample_image_path)
    )
    assert response.status_code == 401
    assert not [e for e in events if e.action.value.startswith("job.")]
    [failed] = [e for e in events if e.action.value == "auth.failed"]
    assert failed.actor == "anonymous"  # never the engine's own system actor
    assert failed.metadata["reason"] in ("bad_subject", "InvalidSubjectError")


def test_sessions_are_required_and_belong_to_one_user(
    client: TestClient, events: list[AuditEvent], sample_image_path: Path
) -> None:
    auth = {"authorization": f"Bearer {token('alice')}"}
    none = client.post("/v1/jobs", headers=auth, files=image(sample_image_path))
    assert none.status_code == 400
    assert "session" in none.json()["error"]["message"]
    # A token's jti is its session when no header names one.
    claims = {"sub": "bob", "jti": "tok-1", "exp": datetime.now(UTC) + timedelta(minutes=5)}
    with_jti = {"authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    accepted = client.post("/v1/jobs", headers=with_jti, files=image(sample_image_path))
    assert accepted.status_code == 202, accepted.text
    wait_done(client, accepted.json()["job_id"], "bob")
    assert {e.session for e in events if e.job_id == accepted.json()["job_id"]} == {"tok-1"}
    # Alice's session presented by mallory: refused, and that is on the record.
    assert client.get("/v1/jobs/x", headers=headers("alice", session="s-a")).status_code == 404
    stolen = client.post(
        "/v1/jobs", headers=headers("mallory", session="s-a"), files=image(sample_image_path)
    )
    assert stolen.status_code == 403
    # Bindings are files on disk: the reaper forgets sessions unused for a result TTL.
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    sessions = engine.settings.work_dir / "sessions"
    assert len(list(sessions.iterdir())) == 3  # tok-1 and s-1 (bob), s-a (alice)
    _reap_once(engine, now=time.time() + engine.settings.result_ttl_s + 1)
    assert list(sessions.iterdir()) == []
    denied = [e for e in events if e.action.value == "access.denied"]
    assert [(e.actor, e.session) for e in denied] == [("mallory", "s-a")]


def test_a_full_queue_answers_503_with_retry_after(
    tmp_path: Path, events: list[AuditEvent], sample_image_path: Path
) -> None:
    engine = build(tmp_path / "work", events, max_queued_jobs=1)
    with TestClient(create_app(engine)) as client:
        engine.admit("running")  # the worker's job and one queued: the queue is full
        engine.admit("queued")
        response = client.post("/v1/jobs", headers=headers(), files=image(sample_image_path))
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        [refused] = [e for e in events if e.action.value == "job.refused"]
        assert refused.metadata["reason"] == "busy"
        assert uploads_left(engine) == []


def test_the_reaper_never_touches_a_live_jobs_inputs(
    engine: Engine, events: list[AuditEvent]
) -> None:
    for name in ("ulive", "uorphan"):
        (engine.uploads / name).mkdir()
        (engine.uploads / name / "target.jpg").write_bytes(b"face")
    engine.admit("ulive")
    _reap_once(engine, now=time.time() + 10 * engine.settings.upload_ttl_s)
    assert sorted(p.name for p in engine.uploads.iterdir()) == ["ulive"]
    assert [e.metadata["reason"] for e in events if e.action.value == "input.erased"] == ["ttl"]


def test_jobs_survive_a_restart_expire_and_can_be_deleted_by_their_owner(
    tmp_path: Path, sample_image_path: Path
) -> None:
    events: list[AuditEvent] = []
    work = tmp_path / "work"
    with TestClient(create_app(build(work, events))) as client:
        job_id = client.post(
            "/v1/jobs", headers=headers(), files=image(sample_image_path, "blob")
        ).json()["job_id"]
        assert wait_done(client, job_id)["state"] == "completed"
    partial = work / "results" / f".{job_id}.part.avi"
    partial.write_bytes(b"half a video")  # as a crash mid-write leaves it
    engine = build(work, events)
    with TestClient(create_app(engine)) as client:
        assert not partial.exists()
        shown = client.get(f"/v1/jobs/{job_id}", headers=headers())
        assert shown.status_code == 200  # was 404 after any restart
        assert str(tmp_path) not in shown.text  # no server paths in answers
        assert shown.json()["result_available"] is True
        assert client.get(f"/v1/jobs/{job_id}/result", headers=headers()).status_code == 200
        theirs = headers("mallory", session="s-m")
        assert client.delete(f"/v1/jobs/{job_id}", headers=theirs).status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}", headers=headers()).status_code == 204
        assert client.get(f"/v1/jobs/{job_id}", headers=headers()).status_code == 404

        second = client.post("/v1/jobs", headers=headers(), files=image(sample_image_path))
        other = second.json()["job_id"]
        wait_done(client, other)
        _reap_once(engine, now=time.time() + engine.settings.result_ttl_s + 1)
        expired = client.get(f"/v1/jobs/{other}/result", headers=headers())
        assert expired.status_code == 409
        assert (
            client.get(f"/v1/jobs/{other}", headers=headers()).json()["result_available"] is False
        )

    assert list((work / "results").iterdir()) == []
    deleted = [e for e in events if e.action.value == "result.deleted"]
    assert sorted((e.job_id, e.metadata["reason"], e.actor) for e in deleted) == sorted(
        [(other, "ttl", "system:ffengine"), (job_id, "owner", "alice")]
    )


@pytest.mark.parametrize("name", [b"a\x00b.jpg", b"a\x01.jpg", b"tab\x7f.jpg"])
def test_control_characters_in_file_names_are_refused(
    client: TestClient, engine: Engine, sample_image_path: Path, name: bytes
) -> None:
    # Raw bytes on the wire, as an attacker sends them (httpx would escape them).
    boundary = b"ffengine-test-boundary"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="target"; filename="' + name + b'"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
        + sample_image_path.read_bytes()
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
    response = client.post(
        "/v1/jobs",
        headers={**headers(), "content-type": f"multipart/form-data; boundary={boundary.decode()}"},
        content=body,
    )
    assert response.status_code == 422, response.text
    assert uploads_left(engine) == []


# -- a normal stop, on the real sidecar -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sidecar(env: dict[str, str], port: int, **popen: Any) -> subprocess.Popen[bytes]:
    """A real `ffengine serve` on `port`, answering /healthz when this returns."""
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", str(port)], env=env, **popen
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError("the sidecar did not start")


@pytest.mark.parametrize("close", [False, True])
def test_sigterm_drains_seals_and_verifies(
    tmp_path: Path, sample_image_path: Path, close: bool
) -> None:
    port = free_port()
    trail = tmp_path / "audit.ndjson"
    env = {
        **os.environ,
        "FFENGINE_WORK_DIR": str(tmp_path / "work"),
        "FFENGINE_KEYS_DIR": str(tmp_path / "keys"),
        "FFENGINE_SPOOL_DIR": str(tmp_path / "spool"),
        "FFENGINE_AUDIT_FILE": str(trail),
        "FFENGINE_JWT_SECRET": SECRET,
        "FFENGINE_CHECKPOINT_INTERVAL_S": "3600",
        "FFENGINE_CLOSE_ON_STOP": "true" if close else "false",
    }
    server = start_sidecar(env, port, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        job = httpx.post(
            f"{base}/v1/jobs", headers=headers(), files=image(sample_image_path), timeout=30
        )
        assert job.status_code == 202, job.text
        server.send_signal(signal.SIGTERM)  # while the job is queued or running
        out, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    records = [orjson.loads(line) for line in trail.read_bytes().splitlines()]
    # The job was drained, not lost: it completed before the engine stopped.
    assert "job.completed" in [r["event.action"] for r in records], out.decode()[-2000:]
    last = records[-1]
    assert last["event.action"] == "audit.checkpoint"
    assert last["ffaudit.checkpoint.closing"] is close
    args = [sys.executable, "-m", "audit", "verify", str(trail), "--pubkey"]
    args.append(str(tmp_path / "keys" / "signing.pub"))
    verify = subprocess.run([*args, *(["--strict"] if close else [])], capture_output=True)
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
    if close:
        restart = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert restart.returncode == 2
        assert b"closed by a clean stop" in restart.stderr


@pytest.mark.slow
def test_schemathesis_on_the_sidecar(tmp_path: Path) -> None:
    """The OpenAPI document matches what the sidecar does (every check, on the real server)."""
    port = free_port()
    env = {
        **os.environ,
        "FFENGINE_WORK_DIR": str(tmp_path / "work"),
        "FFENGINE_KEYS_DIR": str(tmp_path / "keys"),
        "FFENGINE_SPOOL_DIR": str(tmp_path / "spool"),
        "FFENGINE_JWT_SECRET": SECRET,
    }
    server = start_sidecar(env, port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = schemathesis(
            f"http://127.0.0.1:{port}/openapi.json",
            Path(__file__).with_name("schemathesis.toml"),
            f"Authorization: Bearer {token('fuzzer', minutes=60)}",
            "X-Session-Id: fuzz-session",
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    assert result.returncode == 0, result.stdout[-8000:]
    assert "passed" in result.stdout


def test_a_body_over_the_limit_is_refused_while_it_streams(
    tmp_path: Path, events: list[AuditEvent]
) -> None:
    """Starlette spooled a whole multipart body to disk before the route saw its size (a
    200 MiB upload took 3 s to be refused): now the body is counted as it arrives."""
    engine = build(tmp_path / "work", events, max_upload_bytes=1 << 20)

    def body() -> Iterator[bytes]:
        for _ in range(64):  # 64 MiB offered, chunked: no Content-Length to go by
            yield b"x" * (1 << 20)

    with TestClient(create_app(engine)) as client:
        response = client.post(
            "/v1/jobs",
            headers={**headers(), "content-type": "multipart/form-data; boundary=b"},
            content=body(),
        )
        assert response.status_code == 413, response.text
        declared = client.post(
            "/v1/jobs",
            headers={
                **headers(),
                "content-type": "multipart/form-data; boundary=b",
                "content-length": str(1 << 30),
            },
            content=b"",
        )
        assert declared.status_code == 413
    assert [e.metadata["reason"] for e in events if e.action.value == "job.refused"] == [
        "too_large",
        "too_large",
    ]
    assert uploads_left(engine) == []


def test_the_body_limit_stops_reading_at_the_limit() -> None:
    """At the ASGI level: the app under the limit is never handed more than the limit,
    however much the client offers."""
    import asyncio

    from engine.api import _BodyLimit
    from engine.errors import TooLargeError

    chunks_read = 0

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            await receive()

    scope: dict[str, Any] = {"type": "http", "headers": []}
    with pytest.raises(TooLargeError):
        asyncio.run(_BodyLimit(app, limit=10_000)(scope, receive, None))  # type: ignore[arg-type]
    assert chunks_read == 11
    assert "ffengine_body_too_large" in scope["state"]
