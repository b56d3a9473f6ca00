from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from audit.integrity.chain import ChainWriter, CheckpointPolicy, SealedRecord, record_hash
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring.generate()


def sample_event(i: int) -> AuditEvent:
    return AuditEvent(
        action=EventAction.FACE_SWAPPED if i % 3 else EventAction.FACE_DETECTED,
        outcome=Outcome.SUCCESS,
        timestamp=T0 + timedelta(milliseconds=50 * i),
        actor=f"user-{i % 4}",
        client_ip=f"198.51.100.{i % 7}",
        session=f"session-{i % 5}",
        target=f"/srv/uploads/clip-{i}.mp4",
        job_id=f"job-{i // 10}",
        metadata={"source_face_index": 0, "target_face_index": i % 3, "blend_ratio": 0.75},
    )


Seal = Callable[..., list[bytes]]


@pytest.fixture
def sealed(signer: Signer, keyring: Keyring) -> Seal:
    """sealed(n, every=k) -> NDJSON lines of one closed stream of n events."""

    def make(n: int, every: int = 5, stream: str = "s1") -> list[bytes]:
        sealer = Sealer(
            ChainWriter(stream, "acme", signer, policy=CheckpointPolicy(every, None)),
            Pseudonymizer(keyring, "acme"),
        )
        records: list[SealedRecord] = []
        for i in range(n):
            records += sealer.seal(sample_event(i))
        records += sealer.close(T0 + timedelta(hours=1))
        return [r.line for r in records]

    return make


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """What an attacker without the signing key can do: recompute a record's hash."""
    record["event.hash"] = record_hash(record)
    return record


def load(line: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(line)
    return doc
