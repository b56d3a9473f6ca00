"""Key material: a stream's Ed25519 signing pair and the PII pseudonym keyring.

`ffaudit keygen --out DIR` writes DIR/signing.key (PKCS#8 PEM, 0600), DIR/signing.pub
(SubjectPublicKeyInfo PEM) and DIR/pii.key (the keyring, JSON, 0600).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.common.files import write_atomic
from audit.integrity.digest import sha256_hex
from audit.integrity.errors import KeyMaterialError, UsageError

SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
PII_KEY = "pii.key"
KEYRING_FORMAT = "ffaudit.pii-keyring.v1"


def public_key_fingerprint(key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key: names the signer inside records."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)


@dataclass(frozen=True, slots=True)
class Verifier:
    key: Ed25519PublicKey
    fingerprint: str

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> Verifier:
        return cls(key, public_key_fingerprint(key))

    @classmethod
    def load(cls, path: Path) -> Verifier:
        data = _read(path)
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyMaterialError(f"{path}: not a PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyMaterialError(f"{path}: not an Ed25519 public key")
        return cls.from_key(key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True, slots=True)
class Signer:
    key: Ed25519PrivateKey
    verifier: Verifier

    @classmethod
    def generate(cls) -> Signer:
        return cls.from_key(Ed25519PrivateKey.generate())

    @classmethod
    def from_key(cls, key: Ed25519PrivateKey) -> Signer:
        return cls(key, Verifier.from_key(key.public_key()))

    @classmethod
    def load(cls, path: Path) -> Signer:
        data = _read(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyMaterialError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyMaterialError(f"{path}: not an Ed25519 private key")
        return cls.from_key(key)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    def pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class PseudonymKey:
    key_id: str
    secret: bytes
    created: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class Keyring:
    """Pseudonym keys. `current` pseudonymises new records; every active key still matches
    queries, so rotation never makes old records unfindable."""

    keys: tuple[PseudonymKey, ...]
    current: str

    def __post_init__(self) -> None:
        ids = [k.key_id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyMaterialError("keyring has duplicate key ids")
        if self.current not in {k.key_id for k in self.keys if k.active}:
            raise KeyMaterialError(f"keyring's current key {self.current!r} is not an active key")

    @classmethod
    def generate(cls) -> Keyring:
        key = _new_pseudonym_key()
        return cls((key,), key.key_id)

    def rotate(self) -> Keyring:
        key = _new_pseudonym_key()
        return Keyring((*self.keys, key), key.key_id)

    @property
    def active(self) -> tuple[PseudonymKey, ...]:
        return tuple(k for k in self.keys if k.active)

    def get(self, key_id: str) -> PseudonymKey:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise KeyMaterialError(f"no pseudonym key {key_id!r} in the keyring")

    def dumps(self) -> bytes:
        doc = {
            "format": KEYRING_FORMAT,
            "current": self.current,
            "keys": [
                {
                    "id": k.key_id,
                    "secret": base64.b64encode(k.secret).decode(),
                    "created": k.created,
                    "active": k.active,
                }
                for k in self.keys
            ],
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def loads(cls, data: bytes, source: str = "keyring") -> Keyring:
        try:
            doc: Any = orjson.loads(data)
            if doc.get("format") != KEYRING_FORMAT:
                raise KeyMaterialError(f"{source}: not an {KEYRING_FORMAT} file")
            keys = tuple(
                PseudonymKey(
                    key_id=str(k["id"]),
                    secret=base64.b64decode(k["secret"], validate=True),
                    created=str(k["created"]),
                    active=k["active"] is True,
                )
                for k in doc["keys"]
            )
            current = str(doc["current"])
        except KeyMaterialError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise KeyMaterialError(f"{source}: malformed keyring ({exc!r})") from exc
        if any(len(k.secret) < 32 for k in keys):
            raise KeyMaterialError(f"{source}: pseudonym keys must be at least 32 bytes")
        return cls(keys, current)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        return cls.loads(_read(path), str(path))


def _new_pseudonym_key() -> PseudonymKey:
    now = datetime.now(UTC)
    key_id = f"pk-{now:%Y%m%d}-{secrets.token_hex(4)}"
    return PseudonymKey(key_id, secrets.token_bytes(32), now.isoformat(timespec="seconds"))


@dataclass(frozen=True, slots=True)
class KeySet:
    """What `seal` needs from a keys directory."""

    signer: Signer
    keyring: Keyring

    @classmethod
    def load(cls, directory: Path) -> KeySet:
        if not directory.is_dir():
            raise UsageError(f"{directory}: not a directory (create one with `ffaudit keygen`)")
        return cls(Signer.load(directory / SIGNING_KEY), Keyring.load(directory / PII_KEY))


def keygen(directory: Path, *, force: bool = False) -> KeySet:
    """Create a fresh key set in `directory`; refuses to overwrite keys unless `force`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    targets = [directory / n for n in (SIGNING_KEY, SIGNING_PUB, PII_KEY)]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise UsageError(f"refusing to overwrite existing key files: {', '.join(existing)}")
    keys = KeySet(Signer.generate(), Keyring.generate())
    # Created with their final modes (write_atomic): a secret is never readable by others.
    write_atomic(targets[0], keys.signer.pem(), mode=0o600)
    write_atomic(targets[1], keys.signer.verifier.pem(), mode=0o644)
    write_atomic(targets[2], keys.keyring.dumps(), mode=0o600)
    return keys


def rotate_pseudonym_key(directory: Path) -> Keyring:
    path = directory / PII_KEY
    keyring = Keyring.load(path).rotate()
    write_atomic(path, keyring.dumps(), mode=0o600)
    return keyring


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read {path}: {exc.strerror}") from exc
