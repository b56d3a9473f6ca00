"""File hashes through `cryptography` (the project does not use hashlib)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashes.Hash(hashes.SHA256())
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.finalize().hex()
