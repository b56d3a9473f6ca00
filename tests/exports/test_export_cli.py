"""`ffaudit export`: create, download and verify a bundle in one command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

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


def test_a_hostile_service_cannot_write_outside_the_output_directory(tmp_path: Path) -> None:
    # What a spoofed service (a wrong --service URL, a plain-http man in the middle) might
    # answer: the command writes nothing, anywhere.
    class Hostile(BaseHTTPRequestHandler):
        answers: ClassVar[list[dict[str, Any]]] = [
            {"export_id": "../../escape", "records": 1, "manifest": {}, "files": []},
            {"export_id": "abc123", "records": 1, "manifest": {}, "files": ["../../x.pub"]},
        ]

        def do_POST(self) -> None:
            body = orjson.dumps(self.answers.pop(0))
            self.send_response(201)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"evil")

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "a" / "b" / "out"
    try:
        for _ in range(2):
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "audit",
                    "export",
                    "--out",
                    str(out),
                    "--service",
                    f"http://127.0.0.1:{server.server_port}",
                    "--tenant",
                    "acme",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            assert run.returncode == 2, run.stdout + run.stderr
            assert "not an export" in run.stderr or "no bundle has" in run.stderr
    finally:
        server.shutdown()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []
