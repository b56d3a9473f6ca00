"""Signed NDJSON.gz archives: what the SQL store's purged days become (audit.store.archive).

One gzip-compressed NDJSON file per tenant and day, every line the stored event as stored
(record, doc id, verdict, times), beside a manifest signed by the service key
(docs/record-spec.md §12.3). Each file is written to a temporary name, fsynced, renamed into
place and the directory fsynced, before anything is deleted. Restoring verifies first
(manifest signature, file SHA-256, every line) and then writes the records back
create-only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from audit.common.files import fsync_dir, write_atomic
from audit.errors import IntegrityError, NotFoundError
from audit.integrity import contexts
from audit.integrity.canonical import canonicalize
from audit.integrity.digest import file_hex
from audit.integrity.keys import Signer, Verifier
from audit.models import RetentionArchive
from audit.store.archive import ArchiveKind, DayArchive, RunCollector
from audit.store.protocol import EventStore, StoredEvent

ARCHIVE_FORMAT: Final = "ffaudit.retention-archive.v1"
_BATCH = 1000


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def archive_line(event: StoredEvent) -> bytes:
    line: dict[str, Any] = {
        "doc_id": event.doc_id,
        "tenant": event.tenant,
        "stream": event.stream,
        "sequence": event.sequence,
        "event_hash": event.event_hash,
        "timestamp": _iso(event.timestamp),
        "received_at": _iso(event.received_at),
        "verdict": event.verdict,
        "record": event.record,
    }
    if event.failure is not None:
        line["failure"] = event.failure
    return canonicalize(line) + b"\n"


def manifest_message(manifest: Any) -> bytes:
    return contexts.archive_message(manifest)


class NdjsonArchiver:
    """NDJSON.gz files with signed manifests under `directory/<tenant>/`: works on any
    store (it reads `scan_day` and restores through `write`)."""

    kind: Final = ArchiveKind.NDJSON_GZ

    def __init__(self, store: EventStore, directory: Path, signer: Signer) -> None:
        self.store = store
        self.directory = directory
        self.signer = signer

    async def archive(self, tenant: str, days: list[date], run_id: str) -> list[DayArchive]:
        return [await self._archive_day(tenant, day, run_id) for day in days]

    async def _archive_day(self, tenant: str, day: date, run_id: str) -> DayArchive:
        folder = self.directory / tenant
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True, mode=0o700)
        name = f"{day.isoformat()}.{run_id}.{self.kind.value}"
        path = folder / name
        part = path.with_name(name + ".part")
        collector = RunCollector()
        raw = await asyncio.to_thread(part.open, "wb")
        try:
            # mtime=0: the archive's bytes depend on its records only.
            gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
            batch: list[bytes] = []
            async for event in self.store.scan_day(tenant, day):
                collector.add(event)
                batch.append(archive_line(event))
                if len(batch) >= _BATCH:
                    await asyncio.to_thread(gz.write, b"".join(batch))
                    batch = []
            await asyncio.to_thread(_close_durably, gz, raw, b"".join(batch))
        except BaseException:
            raw.close()
            part.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(os.replace, part, path)
        digest = await asyncio.to_thread(file_hex, path)
        manifest = {
            "format": ARCHIVE_FORMAT,
            "created_at": _iso(datetime.now(UTC)),
            "tenant": tenant,
            "day": day.isoformat(),
            "file": name,
            "sha256": digest,
            "records": collector.records,
            "streams": [
                {
                    "stream": stream,
                    "records": count,
                    "ranges": [
                        {
                            "first_sequence": r.first,
                            "last_sequence": r.last,
                            "first_prev": r.first_prev,
                            "last_hash": r.last_hash,
                            "intact": r.intact,
                        }
                        for r in collector.runs
                        if r.stream == stream
                    ],
                }
                for stream, count in sorted(collector.per_stream.items())
            ],
            "service_key_fingerprint": self.signer.verifier.fingerprint,
        }
        signature = base64.b64encode(self.signer.sign(manifest_message(manifest)))
        await asyncio.to_thread(self._write_manifest, path, manifest, signature, folder)
        return DayArchive(
            day=day,
            records=collector.records,
            runs=collector.runs,
            per_stream=collector.per_stream,
            kind=self.kind,
            location=f"{tenant}/{name}",
            sha256=digest,
        )

    @staticmethod
    def _write_manifest(path: Path, manifest: Any, signature: bytes, folder: Path) -> None:
        write_atomic(path.with_name(path.name + ".manifest.json"), canonicalize(manifest) + b"\n")
        write_atomic(path.with_name(path.name + ".manifest.sig"), signature + b"\n")
        fsync_dir(folder)

    async def restore(self, archive: RetentionArchive) -> int:
        path = self.directory / archive.location
        manifest = await asyncio.to_thread(verify_archive, path, self.signer.verifier)
        if manifest["tenant"] != archive.tenant_id or manifest["sha256"] != archive.sha256:
            raise IntegrityError(f"archive {archive.id}: the manifest is not this archive's")
        written = 0
        seen = 0
        async for batch in _read_events(path, archive.tenant_id):
            seen += len(batch)
            written += (await self.store.write(batch)).written
        if seen != manifest["records"]:
            raise IntegrityError(
                f"archive {archive.id}: {seen} records where the manifest says "
                f"{manifest['records']} (records read so far were written back)"
            )
        return written


def _close_durably(gz: gzip.GzipFile, raw: IO[bytes], tail: bytes) -> None:
    gz.write(tail)
    gz.close()
    raw.flush()
    os.fsync(raw.fileno())
    raw.close()


def verify_archive(path: Path, key: Verifier) -> dict[str, Any]:
    """The archive's manifest, once its signature (service key) and the file's SHA-256
    check out; IntegrityError otherwise, NotFoundError when files are missing."""
    manifest_path = path.with_name(path.name + ".manifest.json")
    signature_path = path.with_name(path.name + ".manifest.sig")
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
        signature = base64.b64decode(signature_path.read_bytes().strip(), validate=True)
    except FileNotFoundError as exc:
        raise NotFoundError(f"archive file missing: {exc.filename}") from None
    except (orjson.JSONDecodeError, binascii.Error, ValueError) as exc:
        raise IntegrityError(f"{manifest_path.name}: unreadable manifest or signature") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise IntegrityError(f"{manifest_path.name}: not an ffaudit archive manifest")
    if manifest.get("service_key_fingerprint") != key.fingerprint or not key.verify(
        signature, manifest_message(manifest)
    ):
        raise IntegrityError(f"{manifest_path.name}: signature does not verify")
    if not path.is_file():
        raise NotFoundError(f"archive file missing: {path}")
    if file_hex(path) != manifest.get("sha256"):
        raise IntegrityError(f"{path.name}: SHA-256 differs from the signed manifest")
    return manifest


async def _read_events(path: Path, tenant: str) -> AsyncIterator[list[StoredEvent]]:
    handle = await asyncio.to_thread(gzip.open, path, "rb")
    try:
        number = 0
        while True:
            lines = await asyncio.to_thread(handle.readlines, 1 << 20)
            if not lines:
                return
            batch: list[StoredEvent] = []
            for line in lines:
                number += 1
                batch.append(_parse_line(line, number, tenant))
            yield batch
    finally:
        handle.close()


def _parse_line(line: bytes, number: int, tenant: str) -> StoredEvent:
    try:
        obj = orjson.loads(line)
        event = StoredEvent(
            doc_id=obj["doc_id"],
            tenant=obj["tenant"],
            stream=obj["stream"],
            sequence=obj["sequence"],
            event_hash=obj["event_hash"],
            timestamp=datetime.fromisoformat(obj["timestamp"]),
            record=obj["record"],
            verdict=obj["verdict"],
            failure=obj.get("failure"),
            received_at=datetime.fromisoformat(obj["received_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"archive line {number}: not an archived record ({exc})") from None
    if event.tenant != tenant or not isinstance(event.record, dict):
        raise IntegrityError(f"archive line {number}: not a record of tenant {tenant!r}")
    return event
