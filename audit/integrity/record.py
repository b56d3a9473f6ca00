"""Record field names and shape (docs/record-spec.md is the normative text).

A record is one flat JSON object whose keys are ECS dotted field names where ECS has one and
`ffaudit.*` otherwise. Flat keys make "the record without `event.hash` and
`ffaudit.signature`" a removal of two top-level keys for every third-party verifier, and
Elasticsearch maps dotted keys as objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

SCHEMA_VERSION: Final = 1
ZERO_HASH: Final = "0" * 64

TIMESTAMP: Final = "@timestamp"
EVENT_ID: Final = "event.id"
EVENT_ACTION: Final = "event.action"
EVENT_KIND: Final = "event.kind"
EVENT_CATEGORY: Final = "event.category"
EVENT_TYPE: Final = "event.type"
EVENT_OUTCOME: Final = "event.outcome"
EVENT_DATASET: Final = "event.dataset"
EVENT_SEQUENCE: Final = "event.sequence"
EVENT_HASH: Final = "event.hash"
USER_HASH: Final = "user.hash"
TRACE_ID: Final = "trace.id"
ERROR_TYPE: Final = "error.type"
ERROR_MESSAGE: Final = "error.message"
FILE_SHA256: Final = "file.hash.sha256"

SCHEMA: Final = "ffaudit.schema"
STREAM: Final = "ffaudit.stream"
TENANT: Final = "ffaudit.tenant"
PREV: Final = "ffaudit.prev"
KEY_ID: Final = "ffaudit.key_id"
CLIENT_IP_HASH: Final = "ffaudit.client.ip_hash"
SESSION_HASH: Final = "ffaudit.session.hash"
TARGET_HASH: Final = "ffaudit.target.hash"
METADATA: Final = "ffaudit.metadata"
SIGNATURE: Final = "ffaudit.signature"
CP_FIRST: Final = "ffaudit.checkpoint.first_sequence"
CP_RECORDS: Final = "ffaudit.checkpoint.records"
CP_CLOSING: Final = "ffaudit.checkpoint.closing"
CP_SIGNER: Final = "ffaudit.checkpoint.signer"

# Fields excluded from the hashed bytes: the hash itself and the signature over it.
UNHASHED: Final = (EVENT_HASH, SIGNATURE)

REQUIRED: Final[Mapping[str, type | tuple[type, ...]]] = {
    TIMESTAMP: str,
    EVENT_ID: str,
    EVENT_ACTION: str,
    EVENT_OUTCOME: str,
    EVENT_SEQUENCE: int,
    EVENT_HASH: str,
    SCHEMA: int,
    STREAM: str,
    TENANT: str,
    PREV: str,
}


def format_timestamp(ts: datetime) -> str:
    """UTC, RFC 3339, always six fractional digits and `Z` (lexical order = time order)."""
    if ts.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def document_id(stream: str, sequence: int, event_hash: str | None = None) -> str:
    """A stored record's id (spec §7.1): the first record at a sequence owns `stream:seq`;
    a rival, or evidence kept aside, gets the first 16 hex digits of its hash appended."""
    base = f"{stream}:{sequence}"
    return base if event_hash is None else f"{base}:{event_hash[:16]}"


def schema_error(record: dict[str, Any]) -> str | None:
    """Why a shaped record is not of the schema this code reads, or None: one rule for the
    offline verifier and ingest (a schema-2 record was `ok` at ingest, malformed offline)."""
    if record[SCHEMA] != SCHEMA_VERSION:
        return f"unknown {SCHEMA} {record[SCHEMA]!r}; this verifier reads {SCHEMA_VERSION}"
    return None


def shape_error(record: Any) -> str | None:
    """Why `record` is not shaped like a record, or None. Cheap: runs on every verify."""
    if type(record) is not dict:
        return "not a JSON object"
    for name, kind in REQUIRED.items():
        value = record.get(name)
        if value is None:
            return f"missing field {name!r}"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {name!r} has the wrong type"
    seq = record[EVENT_SEQUENCE]
    if seq < 1:
        return f"{EVENT_SEQUENCE} must be >= 1"
    if len(record[EVENT_HASH]) != 64 or len(record[PREV]) != 64:
        return "hash fields must be 64 hex digits"
    return None
