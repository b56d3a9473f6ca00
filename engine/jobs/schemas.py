from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobType = Literal["swap", "anonymize"]
JobState = Literal["queued", "started", "completed", "failed"]


class InputRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    size: int
    uploaded: bool = False  # uploads are erased after processing; caller files are not


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: str
    sha256: str
    licence: str


class JobSpec(BaseModel):
    """Everything that affects a job's result. Persisted before the job starts."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    job_type: JobType
    target: InputRef
    source: InputRef | None = None
    output: str
    blend: float = Field(default=1.0, ge=0.0, le=1.0)
    selector: Literal["many", "one", "reference"] = "many"
    method: Literal["blur", "mosaic"] = "blur"
    detector: str
    models: list[ModelRef] = Field(default_factory=list)
    providers: list[str]
    engine_version: str
    created_at: datetime


class JobRecord(BaseModel):
    """The spec plus where the job is (on disk; the API shows a JobView of it)."""

    spec: JobSpec
    state: JobState
    updated_at: datetime
    output_sha256: str | None = None
    frames: int | None = None
    frames_failed: int | None = None
    faces: int | None = None
    needs_review: bool = False
    error_type: str | None = None
    error: str | None = None
    result_deleted_at: datetime | None = None  # by its owner, or expired


class JobView(BaseModel):
    """What `GET /v1/jobs/{id}` shows its owner: the job without the server's paths."""

    job_id: str
    job_type: JobType
    state: JobState
    created_at: datetime
    updated_at: datetime
    input_sha256: str
    source_sha256: str | None
    output_sha256: str | None
    blend: float
    selector: str
    method: str
    detector: str
    models: list[ModelRef]
    providers: list[str]
    engine_version: str
    frames: int | None
    frames_failed: int | None
    faces: int | None
    needs_review: bool
    error_type: str | None
    error: str | None
    result_available: bool

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        spec = record.spec
        return cls(
            job_id=spec.job_id,
            job_type=spec.job_type,
            state=record.state,
            created_at=spec.created_at,
            updated_at=record.updated_at,
            input_sha256=spec.target.sha256,
            source_sha256=spec.source.sha256 if spec.source else None,
            output_sha256=record.output_sha256,
            blend=spec.blend,
            selector=spec.selector,
            method=spec.method,
            detector=spec.detector,
            models=spec.models,
            providers=spec.providers,
            engine_version=spec.engine_version,
            frames=record.frames,
            frames_failed=record.frames_failed,
            faces=record.faces,
            needs_review=record.needs_review,
            error_type=record.error_type,
            error=record.error,
            result_available=record.state == "completed" and record.result_deleted_at is None,
        )
