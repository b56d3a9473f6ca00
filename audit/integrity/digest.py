"""SHA-256 and HMAC-SHA256 through `cryptography` (the project does not use hashlib).

Creating a hash context costs more than hashing a 1 KiB record; copying a pre-made empty
context halves that, which matters on the seal and verify hot paths.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac

_EMPTY_SHA256 = hashes.Hash(hashes.SHA256())


def sha256(data: bytes) -> bytes:
    h = _EMPTY_SHA256.copy()
    h.update(data)
    return h.finalize()


def sha256_hex(data: bytes) -> str:
    return sha256(data).hex()


def file_hex(path: Path, algorithm: hashes.HashAlgorithm | None = None) -> str:
    """Hex digest of a file (SHA-256 unless told), streamed: no file has to fit in memory."""
    digest = hashes.Hash(algorithm or hashes.SHA256())
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.finalize().hex()


class KeyedHash:
    """HMAC-SHA256 under one fixed key, reusing the keyed context."""

    __slots__ = ("_template",)

    def __init__(self, key: bytes) -> None:
        self._template = hmac.HMAC(key, hashes.SHA256())

    def hex(self, data: bytes) -> str:
        h = self._template.copy()
        h.update(data)
        return h.finalize().hex()
