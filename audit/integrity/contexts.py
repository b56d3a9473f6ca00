"""Every signing context, in one place: the prefix of each message a key signs.

Domain separation: a signature made for one purpose can never be presented as one for
another, even though the service key signs exports, retention checkpoints and archive
manifests, and producers' keys sign chain checkpoints. A new kind of signed message gets
its prefix here, next to the others, so no two can collide.
"""

from __future__ import annotations

from typing import Final

from audit.integrity.canonical import canonicalize

# Producer keys: a chain checkpoint's event.hash (docs/record-spec.md §4).
CHECKPOINT: Final = b"ffaudit.checkpoint.v1:"
# Service key: a retention checkpoint's payload (§12).
RETENTION: Final = b"ffaudit.retention.v1:"
# Service key: an archive's manifest.
ARCHIVE: Final = b"ffaudit.retention-archive.v1:"
# Service key: an export bundle's manifest, prefixed with its format (§10.2). v3 adds the
# transparency-log proofs; a verifier still checks v1 and v2 bundles under their own prefix.
EXPORT_FORMATS: Final = ("ffaudit.export.v1", "ffaudit.export.v2", "ffaudit.export.v3")


def checkpoint_message(event_hash: str) -> bytes:
    return CHECKPOINT + event_hash.encode("ascii")


def retention_message(payload: object) -> bytes:
    return RETENTION + canonicalize(payload)


def archive_message(manifest: object) -> bytes:
    return ARCHIVE + canonicalize(manifest)


def export_context(fmt: str) -> bytes:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"not an export format: {fmt!r}")
    return fmt.encode("ascii") + b":"
