"""A witness as `ffaudit witness serve` runs it (real key and logs files, a migrated
database, uvicorn on a loopback port) and a log that submits to it: an RFC 6962 tree of its
own and its Ed25519 note key."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.types import ASGIApp

from audit.db.session import upgrade
from audit.integrity.keys import Signer
from audit.integrity.merkle import MemoryTree
from audit.integrity.notes import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
)
from audit.witness.app import create_app
from audit.witness.schemas import encode_add_checkpoint
from audit.witness.settings import WitnessSettings
from tests.apptools import running

ORIGIN = "log.example/audit/acme/cam-1"
WITNESS_NAME = "witness.example/w1"


@dataclass
class Log:
    """A log: its tree and note key. `note(size)` is its signed checkpoint at `size`."""

    signer: NoteSigner
    tree: MemoryTree = field(default_factory=MemoryTree)
    tag: str = "entry"

    @classmethod
    def new(cls, origin: str = ORIGIN, tag: str = "entry") -> Log:
        return cls(NoteSigner(origin, Ed25519PrivateKey.generate()), tag=tag)

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier

    def grow(self, size: int) -> None:
        while self.tree.size < size:
            self.tree.append_entry(f"{self.tag} {self.tree.size}".encode())

    def checkpoint(self, size: int) -> Checkpoint:
        self.grow(size)
        return Checkpoint(self.signer.name, size, self.tree.root(size))

    def note(self, size: int) -> bytes:
        return sign_checkpoint(self.checkpoint(size), self.signer).encode()

    def proof(self, old: int, new: int) -> list[bytes]:
        self.grow(new)
        return self.tree.consistency_proof(old, new) if old else []

    def body(self, old: int, size: int, proof: Sequence[bytes] | None = None) -> bytes:
        """The add-checkpoint body from `old` to `size` (the right proof unless given)."""
        proof = self.proof(old, size) if proof is None else proof
        return encode_add_checkpoint(old, proof, self.note(size))


@dataclass
class WitnessSetup:
    settings: WitnessSettings
    cosigner: CosignatureSigner
    log: Log

    @property
    def verifier(self) -> NoteVerifier:
        return self.cosigner.verifier


def witness_setup(tmp_path: Path, database_url: str, *logs: Log, **extra: object) -> WitnessSetup:
    """Key and logs file of a witness of `logs` (default: one new Log of ORIGIN, which
    `.log` is) keeping its state in `database_url` (migrated)."""
    logs = logs or (Log.new(),)
    signer = Signer.generate()
    key_file = tmp_path / "witness.key"
    key_file.write_bytes(signer.pem())
    logs_file = tmp_path / "logs.policy"
    logs_file.write_text("".join(f"log {log.verifier.vkey()}\n" for log in logs))
    settings = WitnessSettings(
        name=WITNESS_NAME,
        key_file=key_file,
        logs_file=logs_file,
        database_url=database_url,
        **extra,  # type: ignore[arg-type]
    )
    return WitnessSetup(settings, CosignatureSigner(WITNESS_NAME, signer.key), logs[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """`app` under uvicorn on a free loopback port; yields its base URL."""
    with running(app, access_log=False) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file the migrations built, once: tests take copies."""
    path = tmp_path_factory.mktemp("template") / "witness.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(migrated_sqlite: Path, tmp_path: Path) -> str:
    """A migrated SQLite database file of this test alone."""
    path = tmp_path / "witness.db"
    shutil.copyfile(migrated_sqlite, path)
    return f"sqlite:///{path}"


@pytest.fixture
def setup(tmp_path: Path, sqlite_url: str) -> WitnessSetup:
    return witness_setup(tmp_path, sqlite_url)


@pytest.fixture
def witness_url(setup: WitnessSetup) -> Iterator[str]:
    """The witness of `setup`, serving."""
    with serving(create_app(setup.settings)) as url:
        yield url
