"""Each replica seals its own log-of-the-logs chain: two replicas on one host (same host
name) need their own names, or both would extend one stream from their own heads."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from audit.app import create_app
from tests.apptools import app_settings, bearer


def test_two_replicas_on_one_host_keep_two_intact_chains(tmp_path: Path) -> None:
    first = app_settings(tmp_path, replica_name="replica-a")
    second = first.model_copy(update={"replica_name": "replica-b"})
    with TestClient(create_app(first)) as a, TestClient(create_app(second)) as b:
        streams = {
            client.app.state.services.servicelog.stream_for("acme")  # type: ignore[attr-defined]
            for client in (a, b)
        }
        assert streams == {"ffaudit-service.acme.replica-a", "ffaudit-service.acme.replica-b"}
        for _ in range(3):  # reads are logged: each replica appends to its own stream
            for client in (a, b):
                client.get("/v1/events", headers=bearer()).raise_for_status()
        for stream in sorted(streams):
            result = a.post("/v1/verify", json={"stream": stream}, headers=bearer()).json()
            assert result["ok"] is True, result
            assert result["streams"][0]["records"] >= 3


@pytest.mark.parametrize("name", ["", "a.b", "x" * 41, "has space"])
def test_a_replica_name_is_one_dns_label_like_word(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError):
        app_settings(tmp_path, replica_name=name)
