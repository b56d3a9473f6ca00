"""serve, streams and db: running the audit service and administering its registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audit.cli.client import echo_json
from audit.common.memory import tune_collector
from audit.db.session import make_engine, session_factory, upgrade
from audit.errors import UsageError
from audit.settings import AuditSettings
from audit.streams.schemas import StreamRegistration
from audit.streams.service import StreamService


def _settings_help() -> str:
    lines = ["\b", "Settings (environment variables):"]
    for name, field in AuditSettings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        about = f" - {field.description}" if field.description else ""
        lines.append(f"  FFAUDIT_{name.upper()} [{default}]{about}")
    return "\n".join(lines)


def uvicorn_options(settings: AuditSettings) -> dict[str, Any]:
    """What `ffaudit serve` hands uvicorn besides the app and its address (tests serve the
    app with the same options)."""
    return {
        "access_log": False,
        "limit_concurrency": settings.http_max_connections,
        "timeout_keep_alive": int(settings.http_keep_alive_s),
    }


@click.command(epilog=_settings_help())
@click.option("--host", default=None, help="HTTP bind address [FFAUDIT_HTTP_HOST].")
@click.option("--port", type=int, default=None, help="HTTP port [FFAUDIT_HTTP_PORT].")
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Apply database migrations before serving.",
)
def serve(host: str | None, port: int | None, migrate: bool) -> None:
    """Run the audit service: HTTP API and Fluentd forward-protocol ingest in one process."""
    import uvicorn

    from audit.app import create_app

    settings = AuditSettings()
    bind = host or settings.http_host
    from audit.auth.tokens import TokenVerifier

    if not TokenVerifier(settings).configured and bind not in ("127.0.0.1", "::1", "localhost"):
        raise UsageError(
            "no token verification key is configured (FFAUDIT_JWKS_FILE, "
            "FFAUDIT_JWT_PUBLIC_KEY_FILE or FFAUDIT_JWT_HS256_SECRET): open mode is for "
            "loopback only"
        )
    loopback = ("127.0.0.1", "::1", "localhost")
    if (
        settings.forward_enabled
        and settings.forward_host not in loopback
        and settings.forward_shared_key is None
        and not settings.forward_allow_unauthenticated
    ):
        raise UsageError(
            f"the forward port would listen on {settings.forward_host} without producer "
            "authentication: any peer could write any registered stream. Set "
            "FFAUDIT_FORWARD_SHARED_KEY (producers then log in: ffaudit producers add), or "
            "FFAUDIT_FORWARD_ALLOW_UNAUTHENTICATED=true on a network you control entirely"
        )
    if migrate:
        upgrade(settings.database_url)
        if settings.elasticsearch_url is None and settings.store_database_url:
            upgrade(settings.store_database_url)
    app = create_app(settings)
    if settings.gc_gen0_threshold > 0:
        tune_collector(settings.gc_gen0_threshold)  # after the imports and the app exist
    uvicorn.run(
        app,
        host=bind,
        port=port if port is not None else settings.http_port,
        log_level="info",
        **uvicorn_options(settings),
    )


@click.group()
def db() -> None:
    """The control database."""


@db.command("rotate-secrets")
def db_rotate_secrets() -> None:
    """Put a new key first in <service_keys_dir>/secrets.keys and re-encrypt every stored
    secret under it: producer passwords, webhook signing secrets (running services pick the
    new key up by themselves)."""
    from audit.db.session import make_engine, session_factory
    from audit.producers.service import ProducerService
    from audit.secretbox import SecretBox, rotate_keys
    from audit.webhooks.service import WebhookService

    settings = AuditSettings()
    rotate_keys(settings.service_keys_dir)
    sessions = session_factory(make_engine(settings.database_url))
    box = SecretBox.load(settings.service_keys_dir)
    producers = ProducerService(sessions, box).reencrypt()
    webhooks = WebhookService(sessions, box).reencrypt()
    click.echo(
        f"re-encrypted {producers} producer password(s) and {webhooks} webhook secret(s) "
        "under the new key"
    )


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations (to FFAUDIT_DATABASE_URL and the SQL event store's URL)."""
    settings = AuditSettings()
    upgrade(settings.database_url)
    if settings.store_database_url:
        upgrade(settings.store_database_url)
    if settings.elasticsearch_url:
        # Indices written before the query fields existed get them (idempotent).
        import asyncio

        from audit.store.elastic import ElasticEventStore

        async def backfill() -> None:
            store = ElasticEventStore(
                settings.elasticsearch_url or "", prefix=settings.elasticsearch_index_prefix
            )
            try:
                await store.backfill()
            finally:
                await store.close()

        asyncio.run(backfill())
    click.echo("database and event store are at the latest revision", err=True)


@click.group()
def streams() -> None:
    """Producer streams: registration and chain heads."""


def _service() -> StreamService:
    settings = AuditSettings()
    upgrade(settings.database_url)
    return StreamService(session_factory(make_engine(settings.database_url)))


@streams.command("register")
@click.option("--stream", required=True)
@click.option("--tenant", required=True)
@click.option(
    "--pubkey",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The stream's signing.pub (Ed25519 PEM).",
)
def streams_register(stream: str, tenant: str, pubkey: Path) -> None:
    """Register STREAM for TENANT with its public key (idempotent)."""
    from pydantic import ValidationError

    from audit.errors import InvalidInputError, UsageError

    try:
        pem = pubkey.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {pubkey}: {exc.strerror}") from None
    try:
        registration = StreamRegistration(stream=stream, tenant=tenant, public_key_pem=pem)
    except ValidationError as exc:
        raise InvalidInputError("; ".join(str(e["msg"]) for e in exc.errors())) from None
    read = _service().register(registration)
    echo_json(read.model_dump(mode="json"))


@click.group()
def keyrings() -> None:
    """Tenants' pseudonym keyrings (queries by raw id need the tenant's keyring)."""


@keyrings.command("import")
@click.option("--tenant", required=True)
@click.argument("keyring", type=click.Path(dir_okay=False, path_type=Path))
def keyrings_import(tenant: str, keyring: Path) -> None:
    """Add a producer's pii.key to TENANT's keyring (stored 0600 under FFAUDIT_KEYRINGS_DIR).
    Import every engine's key: a query by raw id matches under the keys imported, only."""
    from audit.query.keyrings import TenantKeyrings

    try:
        data = keyring.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {keyring}: {exc.strerror}") from None
    keyrings = TenantKeyrings(AuditSettings().keyrings_dir)
    before = set(keyrings.keys(tenant))
    imported = keyrings.import_keyring(tenant, data)
    new = [k.key_id for k in imported.active if k.key_id not in before]
    click.echo(
        f"tenant {tenant}: {len(new)} key(s) added ({', '.join(new) or 'none: all already held'}); "
        f"{len(imported.active)} active pseudonym key(s) in all",
        err=True,
    )


@keyrings.command("list")
@click.option("--tenant", required=True)
def keyrings_list(tenant: str) -> None:
    """The ids of TENANT's active pseudonym keys: what a query by raw id covers."""
    from audit.query.keyrings import TenantKeyrings

    echo_json(
        {"tenant": tenant, "keys": list(TenantKeyrings(AuditSettings().keyrings_dir).keys(tenant))}
    )


@streams.command("show")
@click.argument("stream")
@click.option("--tenant", default=None, help="the stream's tenant (names are per tenant)")
def streams_show(stream: str, tenant: str | None) -> None:
    """A stream's registration and accepted chain head."""
    read = _service().read(stream, tenant)
    echo_json(read.model_dump(mode="json"))
