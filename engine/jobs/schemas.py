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
    """The spec plus where the job is: what `GET /v1/jobs/{id}` shows."""

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
