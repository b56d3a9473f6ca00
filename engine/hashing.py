"""File hashes (through `cryptography`: the project does not use hashlib)."""

from __future__ import annotations

from pathlib import Path

from audit.integrity.digest import file_hex


def sha256_file(path: Path) -> str:
    return file_hex(path)
