"""`ffaudit demo`: the whole product on one machine with embedded defaults, in one command.

Starts the audit service (SQLite, no servers), lets the engine anonymize insightface's
bundled sample image while its audit records travel over the forward protocol, then shows
who did what and proves the chain verifies — in the service's store and in the engine's
own NDJSON copy.
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import httpx

from audit.errors import UsageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceThread:
    """The real `ffaudit serve` app, in a background thread."""

    def __init__(self, workdir: Path, forward_shared_key: str | None = None) -> None:
        import uvicorn

        from audit.app import create_app
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
            create_app(settings), host="127.0.0.1", port=self.http_port, log_level="warning"
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
    try:
        import insightface

        from audit.integrity.keys import keygen
        from engine.auditing import build_audit_trail, build_runner
        from engine.jobs.runner import Caller
        from engine.settings import EngineSettings
    except ImportError as exc:
        raise UsageError(f"the demo needs the engine: pip install -e '.[engine]' ({exc})") from None

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    sample = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
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
        producer = httpx.post(
            f"{service.url}/v1/producers",
            params={"tenant": "demo"},
            json={"label": "engine-1", "streams": ["demo-engine"]},
        )
        producer.raise_for_status()
        engine = EngineSettings(
            work_dir=workdir / "engine",
            keys_dir=workdir / "engine" / "keys",
            spool_dir=workdir / "engine" / "spool",
            stream="demo-engine",
            tenant="demo",
            model_dir=None,
            forward_shared_key=service.settings.forward_shared_key,
            forward_username=producer.json()["name"],
            forward_password=producer.json()["password"],
        )
        # The demo registers the engine's key itself (step 2): made here, ensure_keys does not
        # ask the user to register it.
        keygen(engine.keys_dir)
        trail = build_audit_trail(
            engine,
            audit_file=workdir / "records.ndjson",
            audit_forward=f"127.0.0.1:{service.forward_port}",
        )
        httpx.post(
            f"{service.url}/v1/streams",
            json={
                "stream": engine.stream,
                "tenant": engine.tenant,
                "public_key_pem": trail.keys.signer.verifier.pem().decode(),
            },
        ).raise_for_status()
        say(
            f"2. engine stream {engine.stream!r} registered for tenant {engine.tenant!r} "
            f"(Ed25519 key {trail.keys.signer.verifier.fingerprint[:16]}…); the engine logs in "
            f"to the forward port as producer {engine.forward_username!r}"
        )

        trail.emitter.start()
        runner = build_runner(engine, trail)
        output = workdir / "t1-anonymized.jpg"
        spec = runner.prepare(job_type="anonymize", target=sample, output=output)
        record = runner.run(
            spec, Caller(actor=actor, session=uuid.uuid4().hex, client_ip="127.0.0.1")
        )
        delivered = trail.emitter.close(final=True)
        detector = runner.pipeline.models.get("detector")
        model = (
            f" (model sha256 {detector['sha256'][:12]}…, {detector['licence']})" if detector else ""
        )
        say(
            f"3. job {spec.job_id[:12]}…: {record.faces} faces hidden by {spec.detector}{model} "
            f"-> {output}"
            + (
                "\n   detector fallback: the output needs human review"
                if record.needs_review
                else ""
            )
        )
        if not delivered:
            raise UsageError("the audit service did not acknowledge every record")

        head = httpx.get(f"{service.url}/v1/streams/{engine.stream}").json()
        stored = asyncio.run(_stored(service.db, engine.tenant, engine.stream))
        say("\n4. who did what (from the audit service's store):")
        _table(stored, trail, engine.tenant, actor)
        problems = _verify(workdir / "records.ndjson", stored, trail, head)
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
            f"{engine.keys_dir}/signing.pub {workdir}/records.ndjson"
        )
        if keep:
            _keep_running(service, engine.tenant, engine.stream)
        else:
            say("   look around with the service still running: ffaudit demo --keep")
        return 0
    finally:
        service.stop()


def _keep_running(service: ServiceThread, tenant: str, stream: str) -> None:
    click.echo(
        f"\n6. the audit service keeps running (open mode, loopback only) until Ctrl-C:\n"
        f"   ffaudit query --service {service.url} --tenant {tenant}\n"
        f"   ffaudit verify --service {service.url} --tenant {tenant} --stream {stream}\n"
        f"   curl -s '{service.url}/v1/events?tenant={tenant}'   "
        f"(API: {service.url}/openapi.json; the console, once built, at {service.url}/console)"
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


def _table(stored: list[Any], trail: Any, tenant: str, actor: str) -> None:
    from audit.integrity.pseudonym import PiiKind, Pseudonymizer
    from engine.pipeline.engine import SYSTEM_ACTOR

    pseudonyms = Pseudonymizer(trail.keys.keyring, tenant)
    mine = set(pseudonyms.candidates(PiiKind.USER, actor).values())
    system = set(pseudonyms.candidates(PiiKind.USER, SYSTEM_ACTOR).values())
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


def _verify(ndjson: Path, stored: list[Any], trail: Any, head: dict[str, Any]) -> list[str]:
    from audit.integrity.canonical import canonicalize
    from audit.integrity.verify import ChainVerifier

    problems = []
    for name, lines in (
        ("engine file", ndjson.read_bytes().splitlines()),
        ("service store", [canonicalize(e.record) for e in stored]),
    ):
        verifier = ChainVerifier(trail.keys.signer.verifier, strict=True)
        found = [f for n, line in enumerate(lines, 1) for f in verifier.feed(n, line)]
        found += verifier.finish()
        problems += [f"{name}: {f.kind.value} at line {f.line}: {f.detail}" for f in found]
    if any(e.verdict != "ok" for e in stored):
        problems.append("the service flagged records at ingest")
    if not head["closed"] or head["signed_through"] != len(stored):
        problems.append("the service's chain head does not cover every record")
    return problems
