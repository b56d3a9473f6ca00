"""`ffaudit export`: create, download and verify a bundle in one command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction
from audit.integrity.keys import SIGNING_PUB, Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from tests.apptools import app_settings, bearer, jwt_token, serving


def test_export_creates_downloads_and_verifies(tmp_path: Path) -> None:
    settings = app_settings(tmp_path)
    keyring, signer = Keyring.generate(), Signer.generate()
    TenantKeyrings(settings.keyrings_dir).import_keyring("acme", keyring.dumps())
    sealer = Sealer(
        ChainWriter("cam-1", "acme", signer, policy=CheckpointPolicy(4, None)),
        Pseudonymizer(keyring, "acme"),
    )
    records = [
        r.record
        for who in ("alice", "bob", "alice", "carol", "alice")
        for r in sealer.seal(AuditEvent(EventAction.JOB_SUBMITTED, actor=who, job_id="j"))
    ]
    with serving(settings) as url:
        admin = bearer(roles=["admin"], amr=["otp"])
        body = {
            "stream": "cam-1",
            "tenant": "acme",
            "public_key_pem": signer.verifier.pem().decode(),
        }
        httpx.post(f"{url}/v1/streams", json=body, headers=admin).raise_for_status()
        httpx.post(
            f"{url}/v1/streams/cam-1/records",
            content=orjson.dumps(records),
            headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
        ).raise_for_status()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "audit",
                "export",
                "--actor",
                "alice",
                "--since",
                "2020-01-01",
                "--out",
                str(tmp_path / "bundles"),
                "--pubkey",
                str(settings.service_keys_dir / SIGNING_PUB),
                "--service",
                url,
            ],
            env={**os.environ, "FFAUDIT_TOKEN": jwt_token()},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 records in" in run.stderr
    assert "OK: 3 records in 1 ranges verified" in run.stdout
    [bundle] = (tmp_path / "bundles").iterdir()
    assert (bundle / "manifest.json").is_file()
    assert (bundle.stat().st_mode & 0o077) == 0
