"""What a slow or oversized HTTP client can cost the service (real app, raw sockets)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apptools import app_settings, bearer, serving


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    settings = app_settings(tmp_path, http_body_timeout_s=0.5, max_request_bytes=64 * 1024)
    with serving(settings) as url:
        yield url


def test_a_body_trickled_slowly_is_cut_at_its_deadline(service: str) -> None:
    host, port = service.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/streams/cam-1/records HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
        )
        started = time.monotonic()
        # A byte every 0.1 s (no idle timeout would ever fire), stopping before the 0.5 s
        # deadline: bytes sent after the server gave up would make its close a reset.
        for _ in range(3):
            time.sleep(0.1)
            sock.sendall(b" ")
        answer = b""
        while chunk := sock.recv(4096):  # the whole answer, until the server closes
            answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"RequestTimeoutError" in answer
    assert elapsed < 3


def test_an_oversized_body_is_refused_on_every_route(service: str) -> None:
    big = b"x" * (65 * 1024)
    for path in ("/v1/streams/cam-1/records", "/v1/alert-rules", "/v1/producers"):
        answer = httpx.post(f"{service}{path}", content=big, headers=bearer(), timeout=10)
        assert answer.status_code == 413, path
        assert answer.json()["error"]["type"] == "PayloadTooLargeError"


def test_ordinary_requests_pass_through(service: str) -> None:
    answer = httpx.get(f"{service}/v1/events", headers=bearer(), timeout=10)
    assert answer.status_code == 200
    body = {"label": "engine-1", "streams": ["cam-*"]}
    admin = bearer(roles=["admin"], amr=["pwd", "otp"])
    created = httpx.post(f"{service}/v1/producers", json=body, headers=admin, timeout=10)
    assert created.status_code == 201


def test_files_the_service_creates_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """`ffaudit serve` under umask 000: the control database, its WAL and SHM, the service
    keys and every directory it makes are the service user's alone."""
    import os
    import socket as sockets
    import stat
    import subprocess
    import sys

    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "var" / "deep"
    env = {
        **os.environ,
        "FFAUDIT_DATABASE_URL": f"sqlite:///{data}/control.db",
        "FFAUDIT_SERVICE_KEYS_DIR": str(data / "service-keys"),
        "FFAUDIT_FORWARD_ENABLED": "false",
    }
    serve = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0); from audit.cli import main; main()",
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        # Something that writes: a read of the events lands in the log of the logs (keys).
        httpx.get(f"http://127.0.0.1:{port}/v1/events", params={"tenant": "acme"}, timeout=10)
    finally:
        serve.terminate()
        serve.wait(30)
    created = [p for p in (tmp_path / "var").rglob("*")]
    assert any(p.name == "control.db" for p in created)
    for path in created:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        elif path.suffix == ".pub":
            assert mode & 0o022 == 0, (path, oct(mode))  # a public key may be read, not written
        else:
            assert mode & 0o077 == 0, (path, oct(mode))


def test_an_idle_connection_outlives_a_clients_keep_alive(tmp_path: Path) -> None:
    """A client reusing a keep-alive connection just before its own expiry (httpx: 5 s) must
    find the server still holding it. When both sides expire at the same moment, the client
    can send into a connection the server is closing and get no answer (the soak's dropped
    query, "Server disconnected without sending a response")."""
    with serving(app_settings(tmp_path)) as url:
        host, port = url.removeprefix("http://").split(":")
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(httpx.Limits().keepalive_expiry or 5.0)  # what httpx's pool would do
            time.sleep(0.5)  # and the time between its check and the request arriving
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
