"""Faults around the real `ffengine run` process and the real audit service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from audit.cli.demo import ServiceThread
from audit.store.sql import SqlEventStore
from engine.auditing import ensure_keys
from engine.pipeline.media import read_image
from tests.conftest import register_stream

STREAM, TENANT = "engine-1", "acme"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceThread]:
    running = ServiceThread(tmp_path / "service-data")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def engine_env(tmp_path: Path) -> dict[str, str]:
    base = tmp_path / "engine"
    return {
        **os.environ,
        "FFENGINE_WORK_DIR": str(base / "work"),
        "FFENGINE_KEYS_DIR": str(base / "keys"),
        "FFENGINE_SPOOL_DIR": str(base / "spool"),
        "FFENGINE_STREAM": STREAM,
        "FFENGINE_TENANT": TENANT,
    }


def register(service: ServiceThread, tmp_path: Path) -> None:
    keys = ensure_keys(tmp_path / "engine" / "keys")
    register_stream(service.url, STREAM, TENANT, keys.signer.verifier.pem().decode())


def ffengine(*args: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def stored(service: ServiceThread) -> list[Any]:
    async def scan() -> list[Any]:
        store = SqlEventStore(service.db)
        try:
            return [e async for e in store.scan(TENANT, STREAM)]
        finally:
            await store.close()

    return asyncio.run(scan())


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def long_video(path: Path, sample: Path, frames: int = 400) -> Path:
    image = cv2.resize(read_image(sample), (640, 443))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (640, 443))
    for i in range(frames):
        writer.write(np.roll(image, i, axis=1))
    writer.release()
    return path


@pytest.mark.slow
def test_kill9_mid_job_then_restart_continues_the_chain(
    service: ServiceThread, tmp_path: Path, sample_image_path: Path
) -> None:
    register(service, tmp_path)
    env = engine_env(tmp_path)
    video = long_video(tmp_path / "long.avi", sample_image_path)
    forward = f"127.0.0.1:{service.forward_port}"
    first = ffengine(
        "--target",
        str(video),
        "--output",
        str(tmp_path / "out.avi"),
        "--audit-forward",
        forward,
        "--actor",
        "alice",
        env=env,
    )
    # Kill it once the job has started and its first records reached the service.
    wait_for(lambda: any(e.record["event.action"] == "job.started" for e in stored(service)))
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "out.avi").exists()  # no half-written output under its name

    second = ffengine(
        "--target",
        str(sample_image_path),
        "--output",
        str(tmp_path / "out.png"),
        "--audit-forward",
        forward,
        "--actor",
        "bob",
        env=env,
    )
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()
    events = stored(service)
    actions = [e.record["event.action"] for e in events]
    # One chain: the restarted engine continued the stream (no second sequence 1, no fork),
    # and on restart the interrupted job was failed and audited.
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {e.verdict for e in events} == {"ok"}, [(e.sequence, e.failure) for e in events]
    assert actions.count("job.submitted") == 2
    assert actions.count("job.failed") == 1
    failed = next(e for e in events if e.record["event.action"] == "job.failed")
    assert failed.record["error.type"] == "Interrupted"
    assert actions[-1] == "audit.checkpoint"
    assert not list((tmp_path / "engine" / "work" / "tmp").iterdir())


@pytest.mark.slow
def test_service_down_during_a_job_then_records_ship_later(
    tmp_path: Path, sample_image_path: Path
) -> None:
    env = engine_env(tmp_path)
    dead = "127.0.0.1:9"  # discard port: nothing answers
    run = ffengine(
        "--target",
        str(sample_image_path),
        "--output",
        str(tmp_path / "a.png"),
        "--audit-forward",
        dead,
        env=env,
    )
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0  # the job itself does not depend on the service being up
    assert b"spooled" in err
    service = ServiceThread(tmp_path / "service-data")
    service.start()
    try:
        register(service, tmp_path)
        again = ffengine(
            "--target",
            str(sample_image_path),
            "--output",
            str(tmp_path / "b.png"),
            "--audit-forward",
            f"127.0.0.1:{service.forward_port}",
            env=env,
        )
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err.decode()
        events = stored(service)
    finally:
        service.stop()
    # The first run's records, spooled while the service was down, arrived first, in order.
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.record["event.action"] for e in events].count("job.completed") == 2
    assert {e.verdict for e in events} == {"ok"}


def fill_spool_with_sealed_records(env: dict[str, str]) -> int:
    """Fill the engine's spool the way an engine cut off from the service does: its own
    sealed records of its own stream, never acknowledged (no delivery). Unlike junk frames,
    which the ship thread discards as it starts, nothing here frees space by itself."""
    from audit.integrity.events import EventAction
    from audit.integrity.seal import AuditEvent
    from engine.auditing import build_audit_trail
    from engine.settings import EngineSettings

    settings = EngineSettings(
        work_dir=Path(env["FFENGINE_WORK_DIR"]),
        keys_dir=Path(env["FFENGINE_KEYS_DIR"]),
        spool_dir=Path(env["FFENGINE_SPOOL_DIR"]),
        stream=env["FFENGINE_STREAM"],
        tenant=env["FFENGINE_TENANT"],
        spool_max_bytes=int(env["FFENGINE_SPOOL_MAX_BYTES"]),
        model_dir=None,
    )
    trail = build_audit_trail(settings)
    trail.emitter.start()
    emitted = 0
    while trail.emitter.stats().accepting:
        trail.emitter.emit(
            AuditEvent(
                # Non-critical: the emitter stops accepting these at its headroom, before
                # the spool is so full that a flush could not complete.
                action=EventAction.FACE_DETECTED,
                actor="filler@example.com",
                job_id=f"filler-{emitted}",
                metadata={"padding": "x" * 400},
            )
        )
        emitted += 1
        if emitted % 100 == 0:
            assert trail.emitter.flush(30)
    trail.emitter.close(final=False)
    trail.emitter._spool.close()  # the emitter leaves its spool open: it is the caller's
    return emitted


def test_full_spool_refuses_the_job_rather_than_run_it_unaudited(
    tmp_path: Path, sample_image_path: Path
) -> None:
    env = {**engine_env(tmp_path), "FFENGINE_SPOOL_MAX_BYTES": str(1024 * 1024)}
    assert fill_spool_with_sealed_records(env) > 100
    # Nothing acknowledges (nothing listens on port 9): the spool stays full.
    run = ffengine(
        "--target",
        str(sample_image_path),
        "--output",
        str(tmp_path / "a.png"),
        "--audit-forward",
        "127.0.0.1:9",
        env=env,
    )
    _, err = run.communicate(timeout=120)
    assert run.returncode == 5, err.decode()  # AuditUnavailableError
    assert b"audit" in err.lower()
    assert not (tmp_path / "a.png").exists()


def test_bad_forward_address_is_refused_before_anything_is_created(
    tmp_path: Path, sample_image_path: Path
) -> None:
    env = engine_env(tmp_path)
    run = ffengine(
        "--target",
        str(sample_image_path),
        "--output",
        str(tmp_path / "a.png"),
        "--audit-forward",
        "no-port-here",
        env=env,
    )
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2
    assert b"forward address must be HOST:PORT" in err
    assert not (tmp_path / "engine").exists()  # no keys, no spool, no job records
    assert not (tmp_path / "a.png").exists()
