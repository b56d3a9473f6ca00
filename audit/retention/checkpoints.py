"""Retention checkpoints (docs/record-spec.md §12): what lets a chain be verified after
retention purged some of its records.

For each run of consecutive sequences of a stream that one purge removes, the service signs
the run's boundary: the `ffaudit.prev` of its first record (what the record before the run
must hash to) and the `event.hash` of its last (what the first record after it must link
to). Verification jumps across the run with those two values, so it still proves that
every other record is there and unchanged; a range nobody signed is a gap. The runs are
those an archiver reports (audit.store.archive.RunCollector).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

import orjson
from sqlalchemy.orm import Session, sessionmaker

from audit.integrity import contexts
from audit.integrity.canonical import canonicalize
from audit.integrity.keys import Signer, Verifier
from audit.integrity.verify import Failure, FailureKind, PurgedRange
from audit.models import RetentionCheckpoint
from audit.retention.repository import RetentionRepository
from audit.store.archive import StreamRun

FORMAT: Final = "ffaudit.retention.v1"
CONTEXT: Final = contexts.RETENTION


def message(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes a retention checkpoint's signature covers."""
    return contexts.retention_message(payload)


def payload(
    tenant: str,
    run: StreamRun,
    *,
    day: str,
    archive: Mapping[str, Any],
    purged_at: str,
    signer: Verifier,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "tenant": tenant,
        "stream": run.stream,
        "first_sequence": run.first,
        "last_sequence": run.last,
        "first_prev": run.first_prev,
        "last_hash": run.last_hash,
        "intact": run.intact,
        "day": day,
        "archive": dict(archive),
        "purged_at": purged_at,
        "signer": signer.fingerprint,
    }


def sign(signer: Signer, body: Mapping[str, Any]) -> tuple[str, str]:
    """(the payload's JCS text as stored, base64 Ed25519 signature)."""
    return canonicalize(body).decode(), base64.b64encode(signer.sign(message(body))).decode()


def check(
    row: RetentionCheckpoint, tenant: str, stream: str, key: Verifier
) -> tuple[PurgedRange | None, Failure | None]:
    """The purged range a stored checkpoint vouches for (None if it vouches for nothing),
    and what is wrong with it. Only the signed payload is trusted, never the row's copied
    columns."""
    where = f"retention checkpoint {row.id} (sequences {row.first_sequence}..{row.last_sequence})"

    def failure(kind: FailureKind, detail: str) -> Failure:
        return Failure(kind, stream, None, row.first_sequence, f"{where}: {detail}")

    if row.signer != key.fingerprint:
        return None, failure(FailureKind.WRONG_KEY, "signed by another service key")
    try:
        body = orjson.loads(row.payload)
        raw = base64.b64decode(row.signature, validate=True)
    except (orjson.JSONDecodeError, binascii.Error, ValueError):
        return None, failure(FailureKind.MALFORMED, "unreadable payload or signature")
    if not isinstance(body, dict) or not key.verify(raw, message(body)):
        return None, failure(FailureKind.BAD_SIGNATURE, "signature does not verify")
    first, last = body.get("first_sequence"), body.get("last_sequence")
    if (
        body.get("format") != FORMAT
        or body.get("tenant") != tenant
        or body.get("stream") != stream
        or type(first) is not int
        or type(last) is not int
        or not 1 <= first <= last
        or not all(_is_hash(body.get(k)) for k in ("first_prev", "last_hash"))
    ):
        return None, failure(FailureKind.MALFORMED, "payload is not a checkpoint of this stream")
    purged = PurgedRange(first, last, body["first_prev"], body["last_hash"])
    if body.get("intact") is not True:
        # Signed, so the purge happened; but what it removed no longer verified by then.
        return purged, failure(
            FailureKind.MODIFIED, "the purged records were not intact when purged (see archive)"
        )
    return purged, None


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64


class PurgedRanges:
    """What stored-chain verification (QueryService.verify_stream) asks of retention."""

    def __init__(self, sessions: sessionmaker[Session], key: Verifier) -> None:
        self._sessions = sessions
        self._key = key

    def ranges(self, tenant: str, stream: str) -> tuple[list[PurgedRange], list[Failure]]:
        """The stream's purged ranges whose checkpoints verify, and the failures of those
        that do not (their records then count as missing)."""
        with self._sessions() as session:
            rows = RetentionRepository(session).checkpoints(tenant, stream)
        ranges: list[PurgedRange] = []
        failures: list[Failure] = []
        for row in rows:
            purged, failure = check(row, tenant, stream, self._key)
            if purged is not None:
                ranges.append(purged)
            if failure is not None:
                failures.append(failure)
        # One range per first sequence: a later purge of the same records (after a restore)
        # signs the same or a longer range.
        longest: dict[int, PurgedRange] = {}
        for r in ranges:
            if r.first not in longest or r.last > longest[r.first].last:
                longest[r.first] = r
        return sorted(longest.values(), key=lambda r: r.first), failures
