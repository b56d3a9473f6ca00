"""Job records on disk: one JSON file per job, replaced atomically at each state change,
beside it the keyed tag of its owner, so that ownership survives a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from audit.common.files import write_atomic
from engine.errors import InputError, NotFoundError
from engine.jobs.schemas import JobRecord


class JobStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, record: JobRecord) -> None:
        write_atomic(self._path(record.spec.job_id), record.model_dump_json(indent=2).encode())

    def load(self, job_id: str) -> JobRecord:
        path = self._path(job_id)
        if not path.is_file():
            raise NotFoundError(f"no job {job_id!r}")
        return JobRecord.model_validate_json(path.read_bytes())

    def all(self) -> Iterator[JobRecord]:
        for path in sorted(self.directory.glob("*.json")):
            try:
                yield JobRecord.model_validate_json(path.read_bytes())
            except (OSError, ValueError):
                continue  # deleted meanwhile, or half of a crash: recover() decides

    def unfinished(self) -> list[JobRecord]:
        return [r for r in self.all() if r.state in ("queued", "started")]

    def set_owner(self, job_id: str, tag: str) -> None:
        write_atomic(self._path(job_id, ".owner"), tag.encode("ascii"), mode=0o600)

    def owner(self, job_id: str) -> str | None:
        try:
            return self._path(job_id, ".owner").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None

    def delete(self, job_id: str) -> None:
        """The record first: a crash in between leaves an owner tag, never an ownerless job."""
        self._path(job_id).unlink(missing_ok=True)
        self._path(job_id, ".owner").unlink(missing_ok=True)

    def _path(self, job_id: str, suffix: str = ".json") -> Path:
        if not job_id.isalnum():
            raise InputError("job ids are alphanumeric")
        return self.directory / f"{job_id}{suffix}"
