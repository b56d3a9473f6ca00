"""Job records on disk: one JSON file per job, replaced atomically at each state change."""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError, NotFoundError
from engine.files import write_atomic
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

    def unfinished(self) -> list[JobRecord]:
        records = (
            JobRecord.model_validate_json(p.read_bytes())
            for p in sorted(self.directory.glob("*.json"))
        )
        return [r for r in records if r.state in ("queued", "started")]

    def _path(self, job_id: str) -> Path:
        if not job_id.isalnum():
            raise InputError("job ids are alphanumeric")
        return self.directory / f"{job_id}.json"
