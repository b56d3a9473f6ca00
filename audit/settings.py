"""Settings of the audit deployable (one class, `FFAUDIT_` environment prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FFAUDIT_", env_file=None, extra="ignore")

    # SQLite is the embedded default so the main job runs with no server at all.
    database_url: str = "sqlite:///var/ffaudit.db"

    checkpoint_every: int = Field(default=1000, ge=2, description="records per signed checkpoint")
    checkpoint_interval_s: float | None = Field(
        default=60.0, gt=0, description="seconds between signed checkpoints (event time)"
    )
    rate_limit_per_s: float = Field(default=10.0, gt=0, description="records/s per session")
    rate_limit_burst: int = Field(default=10, ge=1, description="token bucket capacity")
    rate_limit_max_sessions: int = Field(default=100_000, ge=1)
