"""One nesting limit for records, everywhere (docs/record-spec.md §2): the sealer refuses,
both ingest paths refuse, and a record stored before the limit never breaks a listing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from audit.app import create_app
from audit.errors import CanonicalizationError
from audit.integrity.canonical import MAX_DEPTH, MAX_RECORD_BYTES, canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.integrity.verify import ChainVerifier, FailureKind
from audit.store.protocol import StoredEvent
from audit.store.sql import SqlEventStore
from tests.apptools import app_settings, bearer


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def test_the_limit_is_exact() -> None:
    canonicalize(nested(MAX_DEPTH))
    with pytest.raises(CanonicalizationError, match=f"deeper than {MAX_DEPTH}"):
        canonicalize(nested(MAX_DEPTH + 1))
    with pytest.raises(CanonicalizationError):
        canonicalize({"a": [[[[nested(MAX_DEPTH - 2)]]]]})


def test_the_sealer_refuses_what_no_verifier_could_read() -> None:
    sealer = Sealer(
        ChainWriter("s", "acme", Signer.generate(), policy=CheckpointPolicy(10, None)),
        Pseudonymizer(Keyring.generate(), "acme"),
    )
    event = AuditEvent(action=EventAction.JOB_SUBMITTED, actor="a", metadata=nested(300))
    with pytest.raises(CanonicalizationError):
        sealer.seal(event)


def test_seal_names_the_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "audit", "keygen", "--out", str(keys)], check=True)
    event = {
        "timestamp": "2026-12-04T10:00:00Z",
        "user_id": "alice",
        "action": "face_swap",
        "status": "success",
        "metadata": nested(300),
    }
    run = subprocess.run(
        [sys.executable, "-m", "audit", "seal", "--stream", "s", "--keys", str(keys)],
        input=json.dumps(event).encode() + b"\n",
        capture_output=True,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert b"line 1" in run.stderr
    assert b"deeper" in run.stderr


def deep_record(signer: Signer, levels: int) -> dict[str, Any]:
    """A record as a producer without the limit would seal it (hash by the reference JCS)."""
    record: dict[str, Any] = {
        "@timestamp": "2026-12-04T10:00:00.000000Z",
        "event.id": "0123456789abcdef-1",
        "event.action": "job.submitted",
        "event.outcome": "success",
        "event.sequence": 1,
        "ffaudit.schema": 1,
        "ffaudit.stream": "cam-1",
        "ffaudit.tenant": "acme",
        "ffaudit.prev": "0" * 64,
        "ffaudit.metadata": nested(levels),
    }
    digest = hashes.Hash(hashes.SHA256())
    digest.update(rfc8785.dumps(record))
    record["event.hash"] = digest.finalize().hex()
    return record


def test_http_ingest_refuses_and_a_stored_deep_record_is_shown_with_a_marker(
    tmp_path: Path,
) -> None:
    settings = app_settings(tmp_path)
    signer = Signer.generate()
    with TestClient(create_app(settings)) as client:
        register = {
            "stream": "cam-1",
            "tenant": "acme",
            "public_key_pem": signer.verifier.pem().decode(),
        }
        admin = bearer(roles=["admin"], amr=["otp"])
        client.post("/v1/streams", json=register, headers=admin).raise_for_status()
        answer = client.post(
            "/v1/streams/cam-1/records",
            content=json.dumps([deep_record(signer, 300)]),  # orjson itself stops at 255
            headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        assert "deeper than" in answer.json()["error"]["message"]
        # One that got in before the limit existed must not make the listing answer 500:
        # stored shallow through the store, then given its deep form in the table, as an
        # older version of the service would have written it.
        record = deep_record(signer, 200)
        shallow = {**record, "ffaudit.metadata": {"leaf": 1}}
        stored = StoredEvent(
            doc_id="cam-1:1",
            tenant="acme",
            stream="cam-1",
            sequence=1,
            event_hash=record["event.hash"],
            timestamp=datetime(2026, 12, 4, 10, tzinfo=UTC),
            record=shallow,
            verdict="ok",
            failure=None,
            received_at=datetime.now(UTC),
        )
        store = SqlEventStore(settings.event_store_database_url)
        asyncio.run(store.write([stored]))
        asyncio.run(store.close())
        database = create_engine(settings.event_store_database_url)
        with database.begin() as conn:
            conn.execute(
                text("UPDATE events SET record = :r WHERE doc_id = 'cam-1:1'"),
                {"r": json.dumps(record)},
            )
        database.dispose()
        listing = client.get("/v1/events", params={"stream": "cam-1"}, headers=bearer())
        assert listing.status_code == 200, listing.text
        [shown] = listing.json()["events"]
        assert "nests deeper" in shown["record"]["ffaudit.unrenderable"]
        assert shown["record"]["event.hash"] == record["event.hash"]
        one = client.get("/v1/events/cam-1:1", headers=bearer())
        assert one.status_code == 200


def big_record(signer: Signer, size: int) -> dict[str, Any]:
    record = deep_record(signer, 1)
    record.pop("event.hash")
    record["ffaudit.metadata"] = {"blob": "x" * size}
    digest = hashes.Hash(hashes.SHA256())
    digest.update(rfc8785.dumps(record))
    record["event.hash"] = digest.finalize().hex()
    return record


def test_one_size_limit_for_records_everywhere(tmp_path: Path) -> None:
    # The sealer refuses to make a record over the limit...
    sealer = Sealer(
        ChainWriter("s", "acme", Signer.generate(), policy=CheckpointPolicy(10, None)),
        Pseudonymizer(Keyring.generate(), "acme"),
    )
    event = AuditEvent(
        action=EventAction.JOB_SUBMITTED, actor="a", metadata={"blob": "x" * MAX_RECORD_BYTES}
    )
    with pytest.raises(CanonicalizationError, match="larger than"):
        sealer.seal(event)
    # ...a verifier calls one malformed, and HTTP ingest refuses it with its index.
    signer = Signer.generate()
    too_big = big_record(signer, MAX_RECORD_BYTES)
    verifier = ChainVerifier(signer.verifier)
    kinds = {f.kind for f in verifier.feed_record(1, too_big)}
    assert kinds == {FailureKind.MALFORMED}
    fits = big_record(signer, MAX_RECORD_BYTES // 2)
    assert ChainVerifier(signer.verifier).feed_record(1, fits) == []
    settings = app_settings(tmp_path, max_request_bytes=4 * MAX_RECORD_BYTES)
    with TestClient(create_app(settings)) as client:
        register = {
            "stream": "cam-1",
            "tenant": "acme",
            "public_key_pem": signer.verifier.pem().decode(),
        }
        admin = bearer(roles=["admin"], amr=["otp"])
        client.post("/v1/streams", json=register, headers=admin).raise_for_status()
        answer = client.post(
            "/v1/streams/cam-1/records",
            content=json.dumps([too_big]),
            headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["index"] == 0
        assert "larger than" in answer.json()["error"]["message"]
