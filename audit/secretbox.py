"""Secrets the service must read back, encrypted at rest under the service's own key.

A forward producer's password cannot be stored as a hash: the Fluentd handshake proves it as
SHA-512(auth_salt + username + password) with a fresh salt per connection, so the server needs
the password itself. It is kept as a Fernet token (AES-128-CBC + HMAC-SHA256, from
`cryptography`) under keys in `<service_keys_dir>/secrets.keys`: one key a line, the first
encrypts, every line decrypts, so a key is rotated by putting a new one first
and re-encrypting every token (`ffaudit db rotate-secrets`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from audit.common.files import write_atomic
from audit.errors import KeyMaterialError

KEYS_FILE = "secrets.keys"


class SecretBox:
    def __init__(self, keys: list[bytes], source: Path | None = None) -> None:
        if not keys:
            raise KeyMaterialError("a secret box needs at least one key")
        self._box = MultiFernet([Fernet(key) for key in keys])
        self._source = source  # the keys directory, re-read when a token needs a newer key

    @classmethod
    def load(cls, directory: Path, *, create: bool = True) -> SecretBox:
        path = directory / KEYS_FILE
        if not path.exists():
            if not create:
                raise KeyMaterialError(f"{path}: no secret keys")
            _write_keys(path, [Fernet.generate_key()])
        return cls(_read_keys(path), source=directory)

    def seal(self, plaintext: str) -> str:
        return self._box.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def seal_bytes(self, data: bytes) -> bytes:
        return self._box.encrypt(data)

    def open(self, token: str) -> str:
        return self.open_bytes(token.encode("ascii")).decode("utf-8")

    def open_bytes(self, token: bytes) -> bytes:
        try:
            return self._box.decrypt(token)
        except InvalidToken:
            pass
        if self._source is not None:  # rotated by another process since we loaded the keys
            keys = _read_keys(self._source / KEYS_FILE)
            self._box = MultiFernet([Fernet(key) for key in keys])
            try:
                return self._box.decrypt(token)
            except InvalidToken:
                pass
        raise KeyMaterialError("a stored secret does not decrypt under any key in secrets.keys")

    def rotate(self, token: str) -> str:
        """`token` re-encrypted under the first key."""
        return self._box.rotate(token.encode("ascii")).decode("ascii")


def is_sealed(value: str) -> bool:
    """Whether `value` is a Fernet token (version byte 0x80, base64 "gAAAAA…")."""
    return value.startswith("gAAAAA")


def rotate_keys(directory: Path) -> None:
    """Put a new key first; the old ones still decrypt until every token is rotated."""
    path = directory / KEYS_FILE
    old = path.read_bytes().splitlines() if path.exists() else []
    _write_keys(path, [Fernet.generate_key(), *[k.strip() for k in old if k.strip()]])


def _read_keys(path: Path) -> list[bytes]:
    lines = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
    try:
        for line in lines:
            Fernet(line)
    except ValueError as exc:
        raise KeyMaterialError(f"{path}: not Fernet keys ({exc})") from None
    return lines


def _write_keys(path: Path, keys: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, b"".join(key + b"\n" for key in keys), mode=0o600)
