"""File hashes (through `cryptography`: the project does not use hashlib)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac

from audit.integrity.digest import file_hex


def sha256_file(path: Path) -> str:
    return file_hex(path)


def keyed_tag(key: str, purpose: str, value: str) -> str:
    """HMAC-SHA256 of `value` under `key`, domain-separated by `purpose`: how the sidecar
    keeps who owns a job or a session on disk without writing the raw user id there (an
    unkeyed hash of an e-mail address is a dictionary lookup away from it)."""
    mac = hmac.HMAC(key.encode("utf-8"), hashes.SHA256())
    mac.update(f"ffengine.{purpose}\x00{value}".encode())
    return mac.finalize().hex()
