"""The engine's audit trail: keys, a chain that continues across restarts, the emitter.

One engine is one stream (FFENGINE_STREAM), registered once with the audit service. Its
chain must continue after a restart, or the service would see a second sequence 1: a
fork. The head (sequence, hash) is therefore persisted *before* each batch of sealed
lines reaches the spool. A crash between the two loses only events that were still in
memory, and the service sees that loss as a gap — never as a fork.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from audit.common.files import write_atomic
from audit.integrity.chain import ChainHead, ChainWriter, CheckpointPolicy
from audit.integrity.keys import SIGNING_KEY, KeySet, keygen
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.ratelimit import SessionRateLimiter
from audit.integrity.seal import Sealer
from audit.integrity.subjects import VaultConnection, open_vault
from engine.errors import UsageError
from engine.settings import EngineSettings
from engine.transport.emitter import AuditEmitter
from engine.transport.forward import ForwardDelivery
from engine.transport.spool import Spool, SpoolAlarm

if TYPE_CHECKING:
    from engine.jobs.runner import JobRunner

log = logging.getLogger("engine.audit")
HEAD_FILE = "chain-head.json"


def ensure_keys(directory: Path) -> KeySet:
    """The engine's key set, created on first start (the public key is then registered
    with the audit service: `ffaudit streams register --pubkey DIR/signing.pub`)."""
    if not (directory / SIGNING_KEY).exists():
        keygen(directory)
        log.warning(
            "created a new signing key in %s; register %s/signing.pub with the audit service",
            directory,
            directory,
        )
    return KeySet.load(directory)


def load_head(path: Path, stream: str) -> ChainHead | None:
    if not path.is_file():
        return None
    doc = orjson.loads(path.read_bytes())
    if doc.get("stream") != stream:
        return None  # a new stream id starts a new chain
    if doc.get("closed") is True:
        # Nothing may follow a closing checkpoint: continuing would make every later
        # record an `after_close` failure (FFENGINE_CLOSE_ON_STOP closed it).
        raise UsageError(
            f"stream {stream!r} was closed by a clean stop at sequence {doc['sequence']}: set "
            "FFENGINE_STREAM to a new stream id and register it with the audit service"
        )
    return ChainHead(int(doc["sequence"]), str(doc["hash"]))


class HeadTrackingSpool(Spool):
    """A spool that records the chain head of every batch before storing the batch."""

    def __init__(self, head_file: Path, stream: str, directory: Path, **options: object) -> None:
        super().__init__(directory, **options)  # type: ignore[arg-type]
        self._head_file = head_file
        self._stream = stream

    def append(self, lines: Sequence[bytes]) -> None:
        if lines:
            last = orjson.loads(lines[-1])
            write_atomic(
                self._head_file,
                orjson.dumps(
                    {
                        "stream": self._stream,
                        "sequence": last["event.sequence"],
                        "hash": last["event.hash"],
                        "closed": last.get("ffaudit.checkpoint.closing") is True,
                    }
                ),
            )
        super().append(lines)


@dataclass(frozen=True, slots=True)
class AuditTrail:
    emitter: AuditEmitter
    keys: KeySet
    sealer: Sealer


def build_audit_trail(
    settings: EngineSettings,
    *,
    audit_file: Path | None = None,
    audit_forward: str | None = None,
) -> AuditTrail:
    # Validate the delivery first: a typo in an address must not leave keys or a spool behind.
    if audit_forward is not None:
        settings = settings.model_copy(update={"audit_forward": audit_forward})
    delivery = ForwardDelivery.from_settings(settings)
    vault = _subject_vault(settings)
    keys = ensure_keys(settings.keys_dir)
    settings.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    head_file = settings.spool_dir / HEAD_FILE
    writer = ChainWriter(
        settings.stream,
        settings.tenant,
        keys.signer,
        dataset="ffengine.audit",
        policy=CheckpointPolicy(settings.checkpoint_every, settings.checkpoint_interval_s),
        head=load_head(head_file, settings.stream),
    )
    sealer = Sealer(
        writer,
        Pseudonymizer(
            keys.keyring,
            settings.tenant,
            settings.subject_cache_size,
            vault=vault,
            vault_ttl_s=settings.subject_cache_ttl_s,
        ),
        SessionRateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
    )
    spool = HeadTrackingSpool(
        head_file,
        settings.stream,
        settings.spool_dir,
        max_bytes=settings.spool_max_bytes,
        fsync=settings.spool_fsync,
        on_alarm=_alarm,
    )
    emitter = AuditEmitter(
        sealer, spool, delivery=delivery, file_sink=audit_file or settings.audit_file
    )
    return AuditTrail(emitter, keys, sealer)


def _subject_vault(settings: EngineSettings) -> VaultConnection | None:
    """The audit service's subject vault, when configured: user ids and e-mail addresses
    are then sealed under per-subject keys that an erasure can destroy."""
    if settings.subject_vault_url is None:
        return None
    vault = open_vault(settings.subject_vault_url)
    try:
        vault.ping()  # a wrong URL or an unmigrated database stops the start, clearly
    except BaseException:
        vault.close()
        raise
    return vault


def _alarm(alarm: SpoolAlarm) -> None:
    log.error("audit spool %s: %s", "filling up" if alarm else "alarm", alarm)


def build_runner(settings: EngineSettings, trail: AuditTrail) -> JobRunner:
    """The job runner of an engine process, audited through `trail`; jobs a crash left
    unfinished are failed (and audited) first."""
    from engine.jobs.runner import JobRunner
    from engine.pipeline.engine import FacePipeline
    from engine.pipeline.probe import MediaLimits

    emit = trail.emitter.emit
    runner = JobRunner(
        FacePipeline(settings, emit),
        emit,
        settings.work_dir,
        audit_ready=lambda: trail.emitter.stats().accepting,
        limits=MediaLimits.from_settings(settings),
    )
    runner.recover()
    return runner
