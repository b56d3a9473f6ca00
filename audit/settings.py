"""Settings of the audit deployable (one class, `FFAUDIT_` environment prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuditSettings(BaseSettings):
    """Every setting of `ffaudit serve` and the integrity tools; `FFAUDIT_<NAME>` overrides."""

    model_config = SettingsConfigDict(env_prefix="FFAUDIT_", env_file=None, extra="ignore")

    # -- storage --------------------------------------------------------------------------
    # SQLite is the embedded default so the main job runs with no server at all.
    database_url: str = Field(
        default="sqlite:///var/ffaudit.db", description="control database (SQLAlchemy URL)"
    )
    elasticsearch_url: str | None = Field(
        default=None,
        description="event store: a URL, or several separated by commas (nodes of one "
        "cluster: a node that cannot be reached is skipped); unset: the embedded SQL store",
    )
    elasticsearch_index_prefix: str = Field(default="ffaudit-events")
    store_database_url: str | None = Field(
        default=None, description="embedded SQL event store; unset: the control database"
    )

    # -- HTTP API -------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    console_enabled: bool = Field(
        default=True, description="serve the console (dashboards/) under /console on this port"
    )
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_records_per_request: int = Field(default=10_000, ge=1)
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, description="a request's body must arrive whole within this"
    )
    http_max_connections: int = Field(
        default=1000, ge=1, description="concurrent HTTP connections (more are answered 503)"
    )
    # Longer than the clients and proxies in front hold an idle connection (httpx 5 s, AWS
    # ALB and nginx upstreams 60 s): when both sides give up at the same moment, a client
    # sends into a connection the server is closing and gets no answer (4 of 120 requests at
    # equal 1 s timeouts). Idle connections still count against http_max_connections.
    http_keep_alive_s: float = Field(
        default=75.0, ge=1, description="idle keep-alive timeout (longer than any proxy's)"
    )

    # -- Fluentd forward protocol ingest ---------------------------------------------------
    forward_enabled: bool = True
    forward_host: str = "127.0.0.1"
    forward_port: int = Field(default=24224, ge=0, le=65535)
    forward_shared_key: str | None = Field(
        default=None,
        description="enables the HELO/PING/PONG handshake; producers then authenticate with "
        "their own username and password (`ffaudit producers add`)",
    )
    forward_allow_unauthenticated: bool = Field(
        default=False,
        description="serve the forward port off loopback without the handshake (any peer "
        "could then write any registered stream): for a network you control entirely",
    )
    forward_hostname: str = Field(default="ffaudit", description="server name in PONG")
    forward_tls_cert: Path | None = None
    forward_tls_key: Path | None = None
    forward_max_frame_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    forward_max_events_per_message: int = Field(default=10_000, ge=1)
    forward_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="a connection may wait this long between frames"
    )
    forward_frame_timeout_s: float = Field(
        default=30.0, gt=0, description="a frame, once begun, must be complete within this"
    )
    forward_pipeline_depth: int = Field(
        default=4,
        ge=1,
        le=64,
        description="messages of one connection in the handler at once (1: one at a time); "
        "messages held count against forward_max_buffered_bytes",
    )
    forward_max_connections: int = Field(default=1024, ge=1)
    forward_max_connections_per_peer: int = Field(default=64, ge=1, description="per IP")
    forward_max_buffered_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="memory for frames over all connections: incomplete frames' bytes, and "
        "decoded messages until acknowledged (charged 4 x frame bytes + 512 B per record); "
        "past it no connection decodes another frame until memory is released",
    )

    # -- quarantine: input that cannot be chained (kept encrypted, as evidence) -------------
    quarantine_max_records_per_min: int = Field(
        default=600, ge=1, description="per producer (or host without one), per replica"
    )
    quarantine_max_bytes_per_min: int = Field(default=4 * 1024 * 1024, ge=1024)
    quarantine_retention_days: float = Field(default=30.0, gt=0)

    # -- authentication (JWT bearer tokens) -------------------------------------------------
    jwt_hs256_secret: str | None = Field(
        default=None, description="development only: HS256 shared secret"
    )
    jwt_public_key_file: Path | None = Field(
        default=None, description="PEM public key (RS256 or EdDSA) of the identity provider"
    )
    jwks_file: Path | None = Field(default=None, description="JWKS document (RS256/EdDSA keys)")
    jwt_issuer: str = Field(default="ffaudit-dev", description="required `iss`")
    jwt_audience: str = Field(default="ffaudit", description="required `aud`")
    admin_mfa_methods: list[str] = Field(
        default_factory=lambda: ["otp", "mfa", "hwk", "swk", "fido"],
        description="`amr` values that count as a second factor for admin",
    )

    # -- the service's own stream (the log of the logs) and signed exports ------------------
    service_keys_dir: Path = Field(
        default=Path("var/service-keys"), description="the service's Ed25519 + pseudonym keys"
    )
    service_stream: str = Field(default="ffaudit-service")
    replica_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9-]{1,40}$",
        description="this replica's part of its log-of-the-logs stream names (default: the "
        "host name); replicas that share one would write one chain and fork it",
    )
    keyrings_dir: Path = Field(
        default=Path("var/keyrings"),
        description="tenants' pseudonym keyrings (queries by raw id; the subject role)",
    )
    max_page_size: int = Field(default=500, ge=1, le=10_000)
    exports_dir: Path = Field(default=Path("var/exports"))
    max_export_records: int = Field(default=100_000, ge=1)

    # -- verification at ingest ------------------------------------------------------------
    reorder_window: int = Field(
        default=1024, ge=1, description="records a stream may arrive out of order"
    )
    gap_timeout_s: float = Field(
        default=60.0, gt=0, description="a gap still open after this long is flagged"
    )
    reverify_enabled: bool = Field(
        default=True, description="re-verify stored chains on a schedule (store_tampered alerts)"
    )
    reverify_tick_s: float = Field(
        default=300.0, gt=0, description="how often records after each stream's mark are checked"
    )
    reverify_full_interval_s: float = Field(
        default=86_400.0, gt=0, description="how often each stream is re-verified whole"
    )
    reverify_lease_s: float = Field(default=900.0, gt=0, description="the re-verifier's lease")
    verify_jobs: int = Field(
        default=0,
        ge=0,
        le=256,
        description="worker processes that re-verify one large stored stream (POST /v1/verify, "
        "the re-verifier); 0: the cores, at most 8; 1: in the service's own process",
    )
    arbitration_max_records: int = Field(
        default=200_000,
        ge=1,
        description="stored records after a stream's last verified checkpoint that ingest "
        "reads to settle competing histories (beyond: left to verification)",
    )

    # -- producers (seal) ------------------------------------------------------------------
    checkpoint_every: int = Field(default=1000, ge=2, description="records per checkpoint")
    checkpoint_interval_s: float | None = Field(
        default=60.0, gt=0, description="seconds between signed checkpoints (event time)"
    )
    rate_limit_per_s: float = Field(default=10.0, gt=0, description="records/s per session")
    rate_limit_burst: int = Field(default=10, ge=1, description="token bucket capacity")
    rate_limit_max_sessions: int = Field(default=100_000, ge=1)

    # -- retention, legal holds, archives (issue 6: audit/retention) --------------------------
    retention_default_days: int = Field(
        default=180, ge=1, le=36_500, description="kept this long when no policy says otherwise"
    )
    retention_min_days: int = Field(
        default=180, ge=1, le=36_500, description="the floor no retention policy may go below"
    )
    retention_interval_s: float = Field(
        default=86_400.0, ge=0, description="scheduled retention runs (daily rolling); 0: off"
    )
    retention_lease_s: float = Field(
        default=900.0, ge=10, description="a retention run's lease, renewed while it works"
    )
    retention_archive_dir: Path = Field(
        default=Path("var/archives"), description="SQL store: NDJSON.gz archives and manifests"
    )
    retention_snapshot_repository: str = Field(
        default="ffaudit-retention", description="Elasticsearch: the `fs` snapshot repository"
    )
    retention_snapshot_location: str = Field(
        default="ffaudit-retention",
        description="its location: relative to Elasticsearch's path.repo, or a path under it",
    )

    # -- GDPR erasure: the subject vault (issue 6: audit/subjects) -----------------------------
    # Engines that seal with a vault (FFENGINE_SUBJECT_VAULT_URL) must point at this database.
    subject_vault_url: str | None = Field(
        default=None,
        description="per-subject pseudonym keys (SQLAlchemy URL); unset: the control database",
    )

    # -- alerts (issue 6: audit/alerts) ---------------------------------------------------------
    alert_evaluation_enabled: bool = Field(
        default=True, description="run the scheduled alert rules (one replica at a time)"
    )
    alert_tick_s: float = Field(default=10.0, gt=0, description="how often windows are checked")
    alert_delay_s: float = Field(
        default=30.0, ge=0, description="a window is evaluated this long after it ends"
    )
    alert_lease_s: float = Field(default=120.0, gt=0, description="the scheduler lease's lifetime")
    alert_max_catchup_windows: int = Field(
        default=1440, ge=1, description="windows per rule caught up after downtime"
    )
    alert_suppression_s: float = Field(
        default=3600.0, ge=0, description="a repeat this long after the last one re-opens"
    )
    alert_max_groups_per_window: int = Field(
        default=100, ge=1, description="alerts one rule window may raise (the largest groups)"
    )
    alert_max_rules_per_tenant: int = Field(default=100, ge=1)
    alert_ip_burst_threshold: int = Field(default=10, ge=0, description="requests per client IP...")
    alert_ip_burst_window_s: int = Field(default=60, ge=5, description="...in this window")
    alert_ip_burst_step_s: int = Field(default=15, ge=5, description="windows end this often")
    alert_ip_request_actions: list[str] = Field(
        default_factory=lambda: ["job.submitted", "auth.failed", "access.denied"],
        description="the actions that count as a client's request",
    )
    alert_failed_job_ratio: float = Field(
        default=0.5, ge=0, le=1, description="job.failed / finished jobs above this alerts"
    )
    alert_failed_job_min_jobs: int = Field(default=10, ge=1, description="finished jobs needed")
    alert_failed_job_window_s: int = Field(default=900, ge=5)
    alert_rate_limit_window_s: int = Field(default=300, ge=5, description="drop summaries window")
    alert_admin_export_window_s: int = Field(default=60, ge=5, description="admin export window")

    # -- transparency logs (issue 17: audit/tlog) ----------------------------------------------
    tlog_enabled: bool = Field(
        default=True, description="append accepted records to each stream's Merkle tree"
    )
    tlog_name: str = Field(
        default="ffaudit",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-_:]{0,100}$",
        description="first part of every log's origin: <name>/<tenant>/<stream>",
    )
    tlog_checkpoint_every: int = Field(
        default=256, ge=1, description="sign a checkpoint once this many leaves are unsigned..."
    )
    tlog_checkpoint_interval_s: float = Field(
        default=1.0, gt=0, description="...or once the oldest unsigned leaf is this old"
    )
    tlog_checkpointer_enabled: bool = Field(
        default=True, description="run the checkpoint signer/witness loop in this replica"
    )
    tlog_policy_file: Path | None = Field(
        default=None,
        description="C2SP tlog-policy naming the witnesses (with URLs) and the quorum the "
        "service collects cosignatures for; unset: checkpoints are published uncosigned",
    )
    tlog_witness_timeout_s: float = Field(default=5.0, gt=0, description="per witness request")

    # -- webhook delivery (issue 6: audit/webhooks) ---------------------------------------------
    webhook_delivery_enabled: bool = Field(
        default=True, description="run the delivery loop in this replica"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="per HTTP attempt")
    webhook_allow_http: bool = Field(
        default=False, description="development only: plain-http webhook destinations"
    )
    webhook_allowed_destinations: list[str] = Field(
        default_factory=list,
        description="host names, IPs or networks webhooks may reach besides public addresses "
        "(internal receivers)",
    )
    webhook_backoff_base_s: float = Field(
        default=5.0, gt=0, description="retry n waits a random time in [0, base * 2^(n-1)]"
    )
    webhook_backoff_cap_s: float = Field(default=3600.0, gt=0, description="longest retry wait")
    webhook_max_attempts: int = Field(default=12, ge=1, description="then the delivery fails")
    webhook_poll_interval_s: float = Field(default=2.0, gt=0, description="due-delivery scan")
    webhook_concurrency: int = Field(default=16, ge=1, description="attempts in flight")
    webhook_lease_s: float = Field(
        default=60.0, gt=0, description="a claimed attempt's lease (at least the timeout + 5 s)"
    )

    # -- the process ---------------------------------------------------------------------------
    memory_trim_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="hand memory freed after a burst back to the system (glibc malloc_trim) "
        "this often; 0: off",
    )
    gc_gen0_threshold: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,  # gc.set_threshold takes a C int; past this a young generation is huge
        description="allocations between young-generation collections; objects alive at "
        "startup are frozen out of collections (audit.common.memory); 0: Python's defaults",
    )

    @property
    def event_store_database_url(self) -> str:
        return self.store_database_url or self.database_url
