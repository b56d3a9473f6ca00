"""Producers as they really are, into the running app: fluent-logger and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fluent import sender

from audit.app import create_app
from audit.db.session import upgrade
from audit.integrity.keys import Signer, keygen
from audit.settings import AuditSettings
from audit.store.sql import SqlEventStore

from .conftest import make_records


def test_fluent_logger_message_mode_into_the_service(tmp_path: Path) -> None:
    """The real fluent-logger client (Message mode, no ack) delivers into verification."""
    url = f"sqlite:///{tmp_path}/e2e.db"
    upgrade(url)
    signer = Signer.generate()
    records = make_records(signer, 20)
    settings = AuditSettings(database_url=url, forward_port=0)
    with TestClient(create_app(settings)) as client:
        client.post(
            "/v1/streams",
            json={
                "stream": "cam-1",
                "tenant": "acme",
                "public_key_pem": signer.verifier.pem().decode(),
            },
        ).raise_for_status()
        port = client.app.state.services.forward.port  # type: ignore[attr-defined]
        logger = sender.FluentSender(
            "ffaudit", host="127.0.0.1", port=port, nanosecond_precision=True
        )
        try:
            for record in records:
                assert logger.emit("audit", record), logger.last_error
        finally:
            logger.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            head = client.get("/v1/streams/cam-1").json()
            if head["head_sequence"] == len(records):
                break
            time.sleep(0.05)
        assert head["head_sequence"] == len(records)
        assert head["signed_through"] == len(records)
        metrics = client.get("/metrics").text
        assert (
            f'ffaudit_records_ingested_total{{outcome="ok",source="forward"}} {len(records)}.0'
            in metrics
        )

    async def stored() -> list[int]:
        store = SqlEventStore(url)
        try:
            return [e.sequence async for e in store.scan("acme", "cam-1")]
        finally:
            await store.close()

    assert asyncio.run(stored()) == list(range(1, len(records) + 1))


def ffaudit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )


def test_streams_register_cli(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    env = {"FFAUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"}
    pub = str(tmp_path / "keys" / "signing.pub")
    first = ffaudit(
        "streams", "register", "--stream", "cam-1", "--tenant", "acme", "--pubkey", pub, env=env
    )
    assert first.returncode == 0, first.stderr
    assert '"head_sequence": 0' in first.stdout
    again = ffaudit(
        "streams", "register", "--stream", "cam-1", "--tenant", "acme", "--pubkey", pub, env=env
    )
    assert again.returncode == 0
    keygen(tmp_path / "other")
    clash = ffaudit(
        "streams",
        "register",
        "--stream",
        "cam-1",
        "--tenant",
        "acme",
        "--pubkey",
        str(tmp_path / "other" / "signing.pub"),
        env=env,
    )
    assert clash.returncode == 2
    assert "already registered with another key" in clash.stderr
    bad = ffaudit(
        "streams", "register", "--stream", "cam 1", "--tenant", "acme", "--pubkey", pub, env=env
    )
    assert bad.returncode == 2
    assert "stream must be" in bad.stderr
    shown = ffaudit("streams", "show", "cam-1", env=env)
    assert shown.returncode == 0
    missing = ffaudit("streams", "show", "nope", env=env)
    assert missing.returncode == 2
    assert "no stream 'nope'" in missing.stderr


@pytest.mark.parametrize("flag", ["--help"])
def test_serve_help_documents_every_setting(flag: str) -> None:
    result = ffaudit("serve", flag, env={})
    assert result.returncode == 0
    for name in (
        "FFAUDIT_DATABASE_URL",
        "FFAUDIT_ELASTICSEARCH_URL",
        "FFAUDIT_FORWARD_PORT",
        "FFAUDIT_FORWARD_SHARED_KEY",
        "FFAUDIT_REORDER_WINDOW",
    ):
        assert name in result.stdout
