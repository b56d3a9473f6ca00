"""Settings of the witness deployable (one class, `FFWITNESS_` environment prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The largest body worth reading: an `old` line, 63 proof lines (tlog-witness allows no more)
# and a checkpoint carrying the 16 signatures signed-note asks verifiers to accept, each up
# to an ML-DSA-44 signature (about 3.3 kB in base64) — some 60 kB in all.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class WitnessSettings(BaseSettings):
    """Every setting of `ffaudit witness serve`; `FFWITNESS_<NAME>` overrides."""

    model_config = SettingsConfigDict(env_prefix="FFWITNESS_", env_file=None, extra="ignore")

    name: str | None = Field(
        default=None,
        description="the witness's key name, a schema-less URL (e.g. witness.example/w1): "
        "required to serve",
    )
    key_file: Path = Field(
        default=Path("var/witness/witness.key"),
        description="the witness's Ed25519 private key, PKCS#8 PEM (`ffaudit witness keygen`)",
    )
    logs_file: Path = Field(
        default=Path("var/witness/logs.policy"),
        description="the logs it witnesses: `log <vkey> [url]` lines (C2SP tlog-policy)",
    )
    database_url: str = Field(
        default="sqlite:///var/ffwitness.db",
        description="what it has cosigned per log (SQLAlchemy URL; the witness_logs table)",
    )
    host: str = Field(default="127.0.0.1", description="HTTP bind address")
    port: int = Field(default=8090, ge=0, le=65535, description="HTTP port")
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=4096,
        le=1024 * 1024,
        description="largest add-checkpoint body (bigger: 413)",
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="a request's body must arrive whole within this"
    )
    max_connections: int = Field(
        default=256, ge=1, description="concurrent HTTP connections (more are answered 503)"
    )
