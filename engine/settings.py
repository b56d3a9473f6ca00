"""Settings of the engine sidecar (one class, `FFENGINE_` environment prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Limits on what one input may cost, checked from its header before anything decodes it
# (engine/pipeline/probe.py). Named here so that a JobRunner built without settings (tests,
# benchmarks) gets the same defaults as the sidecar.
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# 8192x6144: every 48-50 MP phone and camera sensor mode, and 8K UHD (7680x4320) frames. One
# decoded copy is 144 MiB (BGR); a job holds a few (input, output, detector tiles).
DEFAULT_MAX_PIXELS = 8192 * 6144
DEFAULT_MAX_VIDEO_FRAMES = 18_000  # 10 minutes at 30 fps
DEFAULT_MAX_VIDEO_SECONDS = 600.0


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FFENGINE_", env_file=None, extra="ignore")

    # -- models and inference -------------------------------------------------------------
    model_dir: Path | None = Field(default=None, description="local model pack (manifest.json)")
    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="onnxruntime execution providers, in order of preference",
    )
    det_size: int = Field(default=640, ge=32, description="SCRFD input size (square)")
    detect_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="CenterFace: minimum face score"
    )
    detect_max_side: int = Field(
        default=1920,
        ge=256,
        description="CenterFace: images up to this side run at native resolution; larger ones "
        "as native tiles of this side plus one pass scaled down to it",
    )

    # -- jobs -----------------------------------------------------------------------------
    work_dir: Path = Field(default=Path("var/engine"), description="jobs, temp frames, uploads")
    upload_ttl_s: float = Field(default=300.0, gt=0, description="uploads erased after this")

    # -- input limits (checked on headers, before decoding) --------------------------------
    max_upload_bytes: int = Field(
        default=DEFAULT_MAX_UPLOAD_BYTES,
        ge=1,
        description="largest file one upload may carry (HTTP 413 over it)",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="largest image or video frame, in pixels (width x height), as its header "
        "declares it: the decoder's memory grows with it, not with the file's size",
    )
    max_video_frames: int = Field(
        default=DEFAULT_MAX_VIDEO_FRAMES, ge=1, description="most frames in one video"
    )
    max_video_seconds: float = Field(
        default=DEFAULT_MAX_VIDEO_SECONDS, gt=0, description="longest video, in seconds"
    )

    # -- audit trail ----------------------------------------------------------------------
    stream: str = Field(default="ffengine", description="audit stream id of this engine")
    tenant: str = Field(default="default")
    keys_dir: Path = Field(default=Path("var/engine/keys"), description="signing.key, pii.key")
    audit_file: Path | None = Field(default=None, description="NDJSON file sink")
    audit_forward: str | None = Field(default=None, description="HOST:PORT of the service")
    forward_tls: bool = False
    forward_tls_ca: Path | None = None
    forward_shared_key: str | None = None
    forward_username: str | None = None
    forward_password: str | None = None
    spool_dir: Path = Field(default=Path("var/engine/spool"))
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    checkpoint_every: int = Field(default=1000, ge=2)
    checkpoint_interval_s: float = Field(default=30.0, gt=0)
    rate_limit_per_s: float = Field(default=10.0, gt=0)
    rate_limit_burst: int = Field(default=10, ge=1)

    # -- GDPR erasure: the subject vault (audit.subjects) -------------------------------------
    subject_vault_url: str | None = Field(
        default=None,
        description="per-subject pseudonym keys, so that a subject can be erased: the audit "
        "service's vault (SQLAlchemy URL, typically its control database); unset: keyring "
        "pseudonyms only",
    )
    subject_cache_ttl_s: float = Field(
        default=60.0, gt=0, description="an erasure reaches this engine within this many seconds"
    )
    subject_cache_size: int = Field(default=65536, ge=1, description="subjects cached")

    # -- HTTP sidecar ----------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8090, ge=0, le=65535)
    jwt_secret: str | None = Field(default=None, description="HS256 secret for bearer tokens")
    max_queued_jobs: int = Field(
        default=8, ge=0, description="jobs waiting behind the running one; more get 503"
    )
    result_ttl_s: float = Field(
        default=86400.0, gt=0, description="results are deleted (and that audited) after this"
    )
    stop_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="on SIGTERM/SIGINT, how long the running job may take to finish before "
        "the engine stops anyway (it is then failed, audited, at the next start)",
    )
    close_on_stop: bool = Field(
        default=False,
        description="seal the stream's closing checkpoint on a clean stop (`ffaudit verify "
        "--strict` then passes on the trail, and this stream id cannot be used again); "
        "default: a plain signed checkpoint, and the next start continues the chain",
    )
