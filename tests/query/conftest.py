"""A service with bearer tokens, in-process (TestClient) or listening on a port (for the
CLI), holding sealed chains to verify."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.db.session import upgrade
from audit.integrity.keys import Signer
from audit.settings import AuditSettings
from tests.ingest.conftest import make_records

SECRET = "v" * 40
ISS, AUD = "https://idp.example", "ffaudit"


def jwt_token(**overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "sub": "auditor-1",
        "tenant": "acme",
        "roles": ["auditor"],
        "iss": ISS,
        "aud": AUD,
        "exp": now + 600,
        "nbf": now - 5,
        "amr": ["pwd", "otp"],
    }
    claims.update(overrides)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(**overrides: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {jwt_token(**overrides)}"}


def settings_for(tmp_path: Path, **extra: Any) -> AuditSettings:
    settings = AuditSettings(
        database_url=f"sqlite:///{tmp_path}/verify.db",
        forward_enabled=False,
        jwt_hs256_secret=SECRET,
        jwt_issuer=ISS,
        jwt_audience=AUD,
        service_keys_dir=tmp_path / "service-keys",
        keyrings_dir=tmp_path / "keyrings",
        exports_dir=tmp_path / "exports",
        **extra,
    )
    upgrade(settings.database_url)
    return settings


def load_chains(client: TestClient | Any, base: str, sizes: dict[str, int]) -> dict[str, int]:
    """Register and ingest each stream of tenant acme, `sizes[stream]` events each (`client`:
    a TestClient, or the httpx module with the service's URL as `base`); returns how many
    records each stream holds, checkpoints included."""
    out = {}
    for stream, events in sizes.items():
        signer = Signer.generate()
        registration = {
            "stream": stream,
            "tenant": "acme",
            "public_key_pem": signer.verifier.pem().decode(),
        }
        admin = bearer(sub="root", roles=["admin"])
        client.post(f"{base}/v1/streams", json=registration, headers=admin).raise_for_status()
        records = make_records(signer, events, stream=stream, every=100)
        client.post(
            f"{base}/v1/streams/{stream}/records",
            content=orjson.dumps(records),
            headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
        ).raise_for_status()
        out[stream] = len(records)
    return out


@pytest.fixture
def service_url(tmp_path: Path) -> Iterator[tuple[str, AuditSettings]]:
    """The real app on a free loopback port, with bearer tokens required."""
    settings = settings_for(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the service did not start"
        assert time.monotonic() < deadline, "the service did not start in 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=15)
