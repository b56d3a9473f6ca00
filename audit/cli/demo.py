"""`ffaudit demo`: the whole product on one machine with embedded defaults, in one command.

Starts the audit service (SQLite, no servers), lets the engine anonymize insightface's
bundled sample image while its audit records travel over the forward protocol, then shows
who did what and proves the chain verifies — in the service's store and in the engine's
own NDJSON copy.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from audit.errors import UsageError

if TYPE_CHECKING:
    from audit.integrity.keys import Keyring, Verifier

_ENGINE_TIMEOUT_S = 600  # a cold start loads onnxruntime and the detector; a job is seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceThread:
    """The real `ffaudit serve` app, in a background thread."""

    def __init__(self, workdir: Path, forward_shared_key: str | None = None) -> None:
        import uvicorn

        from audit.app import create_app
        from audit.cli.service import uvicorn_options
        from audit.db.session import upgrade
        from audit.settings import AuditSettings

        workdir.mkdir(parents=True, exist_ok=True)
        self.db = f"sqlite:///{workdir}/ffaudit.db"
        upgrade(self.db)
        self.http_port, self.forward_port = _free_port(), _free_port()
        settings = AuditSettings(
            database_url=self.db,
            http_port=self.http_port,
            forward_port=self.forward_port,
            forward_shared_key=forward_shared_key,
            service_keys_dir=workdir / "service-keys",
            keyrings_dir=workdir / "keyrings",
            exports_dir=workdir / "exports",
        )
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.http_port,
            log_level="warning",
            **uvicorn_options(settings),
        )
        self.settings = settings
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise UsageError("the audit service did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


# The engine's own records name this actor (engine.pipeline.engine.SYSTEM_ACTOR; the
# service does not import the engine, tests/test_demo.py holds the two equal).
ENGINE_SYSTEM_ACTOR = "system:ffengine"


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the audit service running after the demo (Ctrl-C stops it), to look around.",
)
def demo(workdir: Path, keep: bool) -> int:
    """Run the end-to-end demo (no servers needed) and verify its audit trail."""
    insightface = find_spec("insightface")
    if insightface is None or insightface.origin is None or find_spec("engine") is None:
        raise UsageError("the demo needs the engine: pip install -e '.[engine]'")
    from audit.integrity.keys import keygen

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    workdir = workdir.resolve()
    sample = Path(insightface.origin).parent / "data" / "images" / "t1.jpg"
    actor = f"{getpass.getuser()}@demo"
    say = click.echo

    # The forward port as production runs it: a shared key, and the engine logs in as a
    # producer bound to its tenant and stream.
    service = ServiceThread(workdir, forward_shared_key=secrets.token_urlsafe(24))
    service.start()
    say(
        f"1. audit service up: HTTP {service.url}, forward 127.0.0.1:{service.forward_port}, "
        f"SQLite at {workdir}/ffaudit.db"
    )
    try:
        tenant, stream, keys_dir = "demo", "demo-engine", workdir / "engine" / "keys"
        producer = httpx.post(
            f"{service.url}/v1/producers",
            params={"tenant": tenant},
            json={"label": "engine-1", "streams": [stream]},
        )
        producer.raise_for_status()
        # The demo registers the engine's key itself (step 2): made here, the engine finds
        # it and does not ask the user to register it.
        keys = keygen(keys_dir)
        httpx.post(
            f"{service.url}/v1/streams",
            json={
                "stream": stream,
                "tenant": tenant,
                "public_key_pem": keys.signer.verifier.pem().decode(),
            },
        ).raise_for_status()
        say(
            f"2. engine stream {stream!r} registered for tenant {tenant!r} "
            f"(Ed25519 key {keys.signer.verifier.fingerprint[:16]}…); the engine logs in "
            f"to the forward port as producer {producer.json()['name']!r}"
        )

        # The engine runs as its own process, as in production: `ffengine run`.
        output = workdir / "t1-anonymized.jpg"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FFENGINE_")}
        env.update(
            FFENGINE_WORK_DIR=str(workdir / "engine"),
            FFENGINE_KEYS_DIR=str(keys_dir),
            FFENGINE_SPOOL_DIR=str(workdir / "engine" / "spool"),
            FFENGINE_STREAM=stream,
            FFENGINE_TENANT=tenant,
            FFENGINE_FORWARD_SHARED_KEY=service.settings.forward_shared_key or "",
            FFENGINE_FORWARD_USERNAME=producer.json()["name"],
            FFENGINE_FORWARD_PASSWORD=producer.json()["password"],
        )
        engine = subprocess.run(
            [
                *(sys.executable, "-m", "engine", "run", "--job-type", "anonymize"),
                *("--target", str(sample), "--output", str(output)),
                *("--audit-file", str(workdir / "records.ndjson")),
                *("--audit-forward", f"127.0.0.1:{service.forward_port}"),
                *("--actor", actor, "--close-stream", "--require-delivery"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=_ENGINE_TIMEOUT_S,
            check=False,
        )
        if engine.returncode != 0:
            raise UsageError(
                f"ffengine run failed (exit {engine.returncode}): {engine.stderr.strip()}"
            )
        record = json.loads(engine.stdout)

        head = httpx.get(f"{service.url}/v1/streams/{stream}").json()
        stored = asyncio.run(_stored(service.db, tenant, stream))
        say(
            f"3. job {record['spec']['job_id'][:12]}…: {record['faces']} faces hidden by "
            f"{record['spec']['detector']}{_model(stored)} -> {output}"
            + (
                "\n   detector fallback: the output needs human review"
                if record["needs_review"]
                else ""
            )
        )
        say("\n4. who did what (from the audit service's store):")
        _table(stored, keys.keyring, tenant, actor)
        problems = _verify(workdir / "records.ndjson", stored, keys.signer.verifier, head)
        say(
            f"\n5. verification: {len(stored)} records, chain head {head['head_sequence']}, "
            f"signed through {head['signed_through']}, stream closed: {head['closed']}"
        )
        if problems:
            for problem in problems:
                say(f"   FAIL {problem}")
            return 1
        say(
            "   OK: every hash, link and signature verifies, in the store and in "
            f"{workdir}/records.ndjson"
        )
        say(
            f"   check it yourself: ffaudit verify --strict --pubkey "
            f"{keys_dir}/signing.pub {workdir}/records.ndjson"
        )
        if keep:
            _keep_running(service, tenant, stream)
        else:
            say("   look around with the service still running: ffaudit demo --keep")
        return 0
    finally:
        service.stop()


def _model(stored: list[Any]) -> str:
    """The detector's pinned hash and licence, as the engine's model.loaded record says."""
    for event in stored:
        rec = event.record
        meta = rec.get("ffaudit.metadata", {})
        if rec.get("event.action") == "model.loaded" and meta.get("role") == "detector":
            return f" (model sha256 {str(meta.get('sha256', ''))[:12]}…, {meta.get('licence')})"
    return ""


def _keep_running(service: ServiceThread, tenant: str, stream: str) -> None:
    click.echo(
        f"\n6. the audit service keeps running (open mode, loopback only) until Ctrl-C:\n"
        f"   console: {service.url}/console/ (open mode: choose tenant {tenant!r})\n"
        f"   ffaudit query --service {service.url} --tenant {tenant}\n"
        f"   ffaudit verify --service {service.url} --tenant {tenant} --stream {stream}\n"
        f"   curl -s '{service.url}/v1/events?tenant={tenant}'   (API: {service.url}/openapi.json)"
    )
    try:
        while service.thread.is_alive():
            service.thread.join(timeout=0.5)
    except KeyboardInterrupt:
        click.echo("stopping the audit service")


async def _stored(db: str, tenant: str, stream: str) -> list[Any]:
    from audit.store.sql import SqlEventStore

    store = SqlEventStore(db)
    try:
        return [event async for event in store.scan(tenant, stream)]
    finally:
        await store.close()


def _table(stored: list[Any], keyring: Keyring, tenant: str, actor: str) -> None:
    from audit.integrity.pseudonym import PiiKind, Pseudonymizer

    pseudonyms = Pseudonymizer(keyring, tenant)
    mine = set(pseudonyms.candidates(PiiKind.USER, actor).values())
    system = set(pseudonyms.candidates(PiiKind.USER, ENGINE_SYSTEM_ACTOR).values())
    click.echo(
        f"   {'seq':>3}  {'time (UTC)':<15} {'who':<22} {'action':<17} {'outcome':<8} details"
    )
    for event in stored:
        rec = event.record
        who = rec.get("user.hash", "")
        if who in mine:
            who = f"{actor} (pseudonym)"
        elif who in system:
            who = "the engine (system)"
        else:
            who = who[:12] + "…" if who else "-"
        meta = rec.get("ffaudit.metadata", {})
        detail = ", ".join(
            f"{k}={meta[k]}"
            for k in ("name", "faces", "detector", "method", "needs_review", "output_resolution")
            if k in meta
        )
        click.echo(
            f"   {rec['event.sequence']:>3}  {rec['@timestamp'][11:26]:<15} {who:<22} "
            f"{rec['event.action']:<17} {rec['event.outcome']:<8} {detail}"
        )


def _verify(ndjson: Path, stored: list[Any], key: Verifier, head: dict[str, Any]) -> list[str]:
    from audit.integrity.canonical import canonicalize
    from audit.integrity.verify import ChainVerifier

    problems = []
    for name, lines in (
        ("engine file", ndjson.read_bytes().splitlines()),
        ("service store", [canonicalize(e.record) for e in stored]),
    ):
        verifier = ChainVerifier(key, strict=True)
        found = [f for n, line in enumerate(lines, 1) for f in verifier.feed(n, line)]
        found += verifier.finish()
        problems += [f"{name}: {f.kind.value} at line {f.line}: {f.detail}" for f in found]
    if any(e.verdict != "ok" for e in stored):
        problems.append("the service flagged records at ingest")
    if not head["closed"] or head["signed_through"] != len(stored):
        problems.append("the service's chain head does not cover every record")
    return problems
