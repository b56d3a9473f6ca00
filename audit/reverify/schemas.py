from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class MarkOut(BaseModel):
    stream: str
    verified_through: int = Field(description="last sequence the re-verifier found intact")
    checked_at: datetime | None = Field(description="the last pass (incremental or full)")
    full_at: datetime | None = Field(description="the last pass over the whole chain")
    ok: bool = Field(description="false: the store no longer holds what ingest accepted")


class MarksOut(BaseModel):
    streams: list[MarkOut]
