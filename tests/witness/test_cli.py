"""`ffaudit witness keygen|vkey|serve` as an operator runs them: real processes and files."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.integrity.keys import Signer
from audit.integrity.notes import SIG_COSIGNATURE_V1, CosignatureSigner, parse_vkey
from audit.witness.client import WitnessClient, WitnessOutcome, WitnessReply
from tests.witness.conftest import WITNESS_NAME, Log, free_port


def ffaudit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit", "witness", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


def test_keygen_writes_a_private_key_and_prints_the_vkey(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    done = ffaudit("keygen", "--name", WITNESS_NAME, "--out", str(out))
    assert done.returncode == 0, done.stderr
    key = out / "witness.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    verifier = parse_vkey(done.stdout.strip())
    assert verifier.name == WITNESS_NAME
    assert verifier.sig_type == SIG_COSIGNATURE_V1
    assert verifier == CosignatureSigner(WITNESS_NAME, Signer.load(key).key).verifier
    assert (out / "witness.vkey").read_text() == done.stdout
    # The same vkey, from the key file.
    again = ffaudit("vkey", "--name", WITNESS_NAME, "--key", str(key))
    assert again.returncode == 0, again.stderr
    assert again.stdout == done.stdout


def test_keygen_keeps_an_existing_key(tmp_path: Path) -> None:
    assert ffaudit("keygen", "--name", WITNESS_NAME, "--out", str(tmp_path)).returncode == 0
    before = (tmp_path / "witness.key").read_bytes()
    refused = ffaudit("keygen", "--name", WITNESS_NAME, "--out", str(tmp_path))
    assert refused.returncode == 2
    assert "refusing to overwrite" in refused.stderr
    assert (tmp_path / "witness.key").read_bytes() == before
    forced = ffaudit("keygen", "--name", WITNESS_NAME, "--out", str(tmp_path), "--force")
    assert forced.returncode == 0
    assert (tmp_path / "witness.key").read_bytes() != before


def test_keygen_refuses_a_bad_name_before_writing(tmp_path: Path) -> None:
    done = ffaudit("keygen", "--name", "a+b", "--out", str(tmp_path / "keys"))
    assert done.returncode == 2
    assert "a+b" in done.stderr
    assert not (tmp_path / "keys").exists()


def test_vkey_of_a_file_that_is_no_key(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("nope")
    done = ffaudit("vkey", "--name", WITNESS_NAME, "--key", str(tmp_path / "k"))
    assert done.returncode == 2
    assert "private key" in done.stderr


def _wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the witness did not start in 60 s"
        time.sleep(0.1)


def test_serve_from_environment_and_flags(tmp_path: Path) -> None:
    done = ffaudit("keygen", "--name", WITNESS_NAME, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    witness = parse_vkey(done.stdout.strip())
    log = Log.new()
    logs = tmp_path / "logs.policy"
    logs.write_text(f"# the audit service's stream\nlog {log.verifier.vkey()}\n")
    port = free_port()
    env = {
        "FFWITNESS_NAME": WITNESS_NAME,
        "FFWITNESS_KEY_FILE": str(tmp_path / "witness.key"),
        "FFWITNESS_DATABASE_URL": f"sqlite:///{tmp_path}/state/witness.db",
    }
    command = [sys.executable, "-m", "audit", "witness", "serve"]
    process = subprocess.Popen(
        [*command, "--logs-file", str(logs), "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)

        async def go() -> tuple[WitnessReply, WitnessReply]:
            async with WitnessClient("w1", url, witness) as client:
                first = await client.add_checkpoint(0, [], log.note(4))
                second = await client.add_checkpoint(4, log.proof(4, 10), log.note(10))
                return first, second

        first, second = asyncio.run(go())
        assert first.outcome is WitnessOutcome.COSIGNED, first.detail
        assert second.outcome is WitnessOutcome.COSIGNED, second.detail
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert (tmp_path / "state" / "witness.db").is_file()  # migrated by serve


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs a name"),
        ({"FFWITNESS_NAME": WITNESS_NAME, "FFWITNESS_LOGS_FILE": "/nonexistent"}, "logs file"),
        ({"FFWITNESS_NAME": WITNESS_NAME, "FFWITNESS_MAX_BODY_BYTES": "99999999"}, "less than"),
    ],
)
def test_serve_refuses_to_start_without_what_it_needs(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    key = tmp_path / "witness.key"
    key.write_bytes(Signer.from_key(Ed25519PrivateKey.generate()).pem())
    logs = tmp_path / "logs.policy"
    logs.write_text(f"log {Log.new().verifier.vkey()}\n")
    base = {"FFWITNESS_KEY_FILE": str(key), "FFWITNESS_LOGS_FILE": str(logs)}
    done = ffaudit("serve", "--port", str(free_port()), "--no-migrate", env={**base, **env})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
