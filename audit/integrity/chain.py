"""Hash chain and signed checkpoints (the producer side).

event.hash = hex SHA-256(JCS(record without event.hash and ffaudit.signature))
ffaudit.prev = the previous record's event.hash (64 zeros for sequence 1)

A checkpoint is an ordinary chained record (`audit.checkpoint`) whose `ffaudit.signature`
is Ed25519 over checkpoint_message(event.hash). Its event.hash commits through the prev
links to every earlier record of the stream, so one signature covers the whole prefix.
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from audit.integrity import record as f
from audit.integrity.canonical import canonicalize, record_body
from audit.integrity.contexts import checkpoint_message as checkpoint_message
from audit.integrity.digest import sha256_hex
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Signer


def record_hash(record: Mapping[str, Any]) -> str:
    """event.hash of `record`, whether or not it already carries one."""
    if f.EVENT_HASH in record or f.SIGNATURE in record:
        # A C-level copy and two deletions: faster than filtering every key in Python.
        body = dict(record)
        for name in f.UNHASHED:
            body.pop(name, None)
        record = body
    return sha256_hex(record_body(record))


@dataclass(frozen=True, slots=True)
class SealedRecord:
    record: dict[str, Any]
    line: bytes  # RFC 8785 form of the full record (what `seal` writes), no newline


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every: int | None = 1000  # records, counting the checkpoint itself
    # seconds of record time from the first record after the last checkpoint
    interval_s: float | None = 60.0


@dataclass(slots=True)
class ChainHead:
    sequence: int = 0
    hash: str = f.ZERO_HASH


class ChainWriter:
    """Turns record bodies into sequenced, hashed records for one stream. Thread-safe."""

    def __init__(
        self,
        stream: str,
        tenant: str,
        signer: Signer,
        *,
        dataset: str = "ffaudit.audit",
        policy: CheckpointPolicy | None = None,
        head: ChainHead | None = None,
    ) -> None:
        self.stream = stream
        self.tenant = tenant
        self.dataset = dataset
        self._signer = signer
        self._policy = policy or CheckpointPolicy()
        self._head = head or ChainHead()
        self._segment_first = self._head.sequence + 1
        self._segment_started: float | None = None
        self._last_ts: datetime | None = None
        self._lock = threading.Lock()
        # event.id = random per-writer prefix + sequence: unique across writers and restarts
        # without the cost of a uuid4 per record (a quarter of the sealing time).
        self._id_prefix = secrets.token_hex(8) + "-"
        self.closed = False

    @property
    def head(self) -> ChainHead:
        return ChainHead(self._head.sequence, self._head.hash)

    def append(
        self, action: EventAction, outcome: Outcome, body: dict[str, Any], ts: datetime
    ) -> list[SealedRecord]:
        """Chain one record; returns it and, when the policy says so, a checkpoint after it.

        `body` holds the record's own fields; the chain fields (@timestamp, event.*,
        ffaudit.stream/tenant/prev/schema) are the writer's, and event.* keys are refused.
        """
        if any(key.startswith("event.") for key in body):
            raise ValueError("record bodies may not set event.* fields")
        with self._lock:
            if self.closed:
                raise RuntimeError(f"stream {self.stream!r} is closed")
            records = [self._link(action, outcome, body, ts)]
            now = ts.timestamp()
            if self._segment_started is None:
                self._segment_started = now
            if self._due(now):
                records.append(self._checkpoint(ts, closing=False))
            return records

    def checkpoint(self, ts: datetime | None = None, *, closing: bool = False) -> SealedRecord:
        """A signed checkpoint now; with closing=True the stream accepts nothing after it."""
        with self._lock:
            if self.closed:
                raise RuntimeError(f"stream {self.stream!r} is closed")
            ts = ts or datetime.now(UTC)
            if self._last_ts is not None and ts < self._last_ts:
                ts = self._last_ts  # a checkpoint is never stamped before what it covers
            sealed = self._checkpoint(ts, closing=closing)
            self.closed = closing
            return sealed

    def _due(self, now: float) -> bool:
        records = self._head.sequence - self._segment_first + 2  # + the checkpoint itself
        policy = self._policy
        if policy.every is not None and records >= policy.every:
            return True
        return (
            policy.interval_s is not None
            and self._segment_started is not None
            and now - self._segment_started >= policy.interval_s
        )

    def _checkpoint(self, ts: datetime, *, closing: bool) -> SealedRecord:
        body = {
            f.CP_FIRST: self._segment_first,
            f.CP_RECORDS: self._head.sequence + 2 - self._segment_first,
            f.CP_CLOSING: closing,
            f.CP_SIGNER: self._signer.verifier.fingerprint,
        }
        record = self._link(EventAction.AUDIT_CHECKPOINT, Outcome.SUCCESS, body, ts).record
        signature = self._signer.sign(checkpoint_message(record[f.EVENT_HASH]))
        record[f.SIGNATURE] = base64.b64encode(signature).decode("ascii")
        self._segment_first = self._head.sequence + 1
        self._segment_started = None
        return SealedRecord(record, canonicalize(record))

    def _link(
        self, action: EventAction, outcome: Outcome, body: dict[str, Any], ts: datetime
    ) -> SealedRecord:
        info = action.info
        sequence = self._head.sequence + 1
        record: dict[str, Any] = {
            **body,
            f.TIMESTAMP: f.format_timestamp(ts),
            f.EVENT_ID: f"{self._id_prefix}{sequence}",
            f.EVENT_ACTION: action.value,
            f.EVENT_KIND: info.kind,
            f.EVENT_CATEGORY: list(info.category),
            f.EVENT_TYPE: list(info.type),
            f.EVENT_OUTCOME: outcome.value,
            f.EVENT_DATASET: self.dataset,
            f.EVENT_SEQUENCE: sequence,
            f.SCHEMA: f.SCHEMA_VERSION,
            f.STREAM: self.stream,
            f.TENANT: self.tenant,
            f.PREV: self._head.hash,
        }
        hashed = record_body(record)
        digest = sha256_hex(hashed)
        record[f.EVENT_HASH] = digest
        if self._last_ts is None or ts > self._last_ts:
            self._last_ts = ts
        self._head.sequence = sequence
        self._head.hash = digest
        return SealedRecord(record, splice_hash(hashed, digest))


def splice_hash(hashed: bytes, digest: str) -> bytes:
    """Canonical bytes of the full record from those of the record without event.hash.

    event.hash sorts right before event.id, and no other key can sort between them: record
    bodies may not set event.* fields, and the writer sets no other event.h*/event.i* key.
    """
    at = hashed.index(b',"event.id":') + 1
    return hashed[:at] + b'"event.hash":"' + digest.encode("ascii") + b'",' + hashed[at:]
