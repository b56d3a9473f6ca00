"""The witness's configuration: its logs file (C2SP tlog-policy `log` lines) and settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from audit.errors import UsageError
from audit.integrity.notes import CosignatureSigner, vkey_for
from audit.witness.service import load_logs
from audit.witness.settings import DEFAULT_MAX_BODY_BYTES, WitnessSettings
from tests.witness.conftest import Log


def test_logs_file_of_a_whole_policy(tmp_path: Path) -> None:
    a, b = Log.new("log.example/a"), Log.new("log.example/b")
    witness = CosignatureSigner("w.example/1", Ed25519PrivateKey.generate()).verifier
    path = tmp_path / "policy"
    path.write_text(
        "# logs\n"
        f"log {a.verifier.vkey()}\n"
        f"\t log\t{b.verifier.vkey()}  https://log.example/b   \n"
        "\n"
        f"witness W1 {witness.vkey()}\n"
        "quorum W1\n"
    )
    assert load_logs(path) == (a.verifier, b.verifier)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no `log <vkey>` line"),
        ("# nothing\n\n", "no `log <vkey>` line"),
        ("log\n", "expected `log <vkey> [url]`"),
        ("log a+b+c\n", "policy:1"),
        ("logs {log}\n", "expected"),
        ("log {log} url extra\n", "expected"),
        ("log {log}\nlog {log}\n", "policy:2: origin"),
        ("log {cosigner}\n", "Ed25519 note key"),
        ("log {log}\x0b\n", "control character"),
    ],
)
def test_bad_logs_files(tmp_path: Path, text: str, message: str) -> None:
    log = Log.new().verifier.vkey()
    cosigner = CosignatureSigner("w.example/1", Ed25519PrivateKey.generate()).verifier.vkey()
    path = tmp_path / "policy"
    path.write_text(text.format(log=log, cosigner=cosigner))
    with pytest.raises(UsageError, match=re.escape(message)):
        load_logs(path)


def test_origin_longer_than_the_column(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    path.write_text(f"log {Log.new('x' * 256).verifier.vkey()}\n")
    with pytest.raises(UsageError, match="at most 255"):
        load_logs(path)


def test_missing_logs_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_logs(tmp_path / "absent")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFWITNESS_NAME", "witness.example/w9")
    monkeypatch.setenv("FFWITNESS_PORT", "9999")
    settings = WitnessSettings()
    assert settings.name == "witness.example/w9"
    assert settings.port == 9999
    assert settings.host == "127.0.0.1"
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES


@pytest.mark.parametrize("size", [0, 4095, 1024 * 1024 + 1])
def test_body_limit_is_bounded(size: int) -> None:
    with pytest.raises(ValidationError):
        WitnessSettings(max_body_bytes=size)


def test_one_key_may_sign_many_logs(tmp_path: Path) -> None:
    """An audit service signs every stream's log with its one key, under each origin."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "policy"
    path.write_text(
        "".join(
            f"log {vkey_for(f'ffaudit/acme/cam-{n}', key.public_key()).vkey()}\n" for n in (1, 2)
        )
    )
    logs = load_logs(path)
    assert [log.name for log in logs] == ["ffaudit/acme/cam-1", "ffaudit/acme/cam-2"]
