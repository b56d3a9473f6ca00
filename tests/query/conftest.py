"""A service with bearer tokens, in-process (TestClient) or listening on a port (for the
CLI), holding sealed chains to verify."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from audit.integrity.keys import Signer
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer, serving
from tests.ingest.conftest import make_records


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
    settings = app_settings(tmp_path)
    with serving(settings) as url:
        yield url, settings
