"""The audit service: one asyncio process serving the HTTP API and forward-protocol ingest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit import __version__
from audit.alerts.routes import router as alerts_router
from audit.alerts.scheduler import AlertScheduler
from audit.alerts.service import AlertService
from audit.auth.tokens import Principal, TokenVerifier
from audit.common.memory import malloc_trim, trim_periodically
from audit.common.web import allowed_methods
from audit.db.session import make_engine, session_factory
from audit.deps import AppServices
from audit.deps import services as services_of
from audit.errors import (
    FFAuditError,
    ForbiddenError,
    StoreUnavailableError,
    TooManyRequestsError,
)
from audit.exports.routes import router as exports_router
from audit.httplimits import BodyLimits
from audit.ingest.forward import (
    ForwardEntry,
    ForwardRejected,
    ForwardServer,
    Peer,
    build_ssl_context,
)
from audit.ingest.routes import router as ingest_router
from audit.ingest.service import IngestService
from audit.integrity.events import EventAction, Outcome
from audit.metrics import Metrics
from audit.producers.routes import router as producers_router
from audit.producers.schemas import ProducerIdentity
from audit.producers.service import ProducerService
from audit.query.keyrings import TenantKeyrings
from audit.query.routes import router as query_router
from audit.query.service import QueryService
from audit.retention.routes import router as retention_router
from audit.retention.service import RetentionService
from audit.reverify.routes import router as reverify_router
from audit.reverify.service import Reverifier
from audit.secretbox import SecretBox
from audit.servicelog import ServiceLog
from audit.services import Services
from audit.settings import AuditSettings
from audit.store import make_event_store
from audit.store.protocol import EventStore
from audit.streams.routes import router as streams_router
from audit.streams.service import StreamService
from audit.subjects.routes import router as subjects_router
from audit.subjects.service import SubjectService
from audit.subjects.vault import SqlSubjectVault
from audit.tlog.checkpointer import Checkpointer, load_witnessing
from audit.tlog.routes import router as tlog_router
from audit.tlog.service import TlogService
from audit.webhooks.delivery import WebhookDeliverer
from audit.webhooks.routes import router as webhooks_router
from audit.webhooks.service import WebhookService
from dashboards.auth import load_key as load_console_key
from dashboards.pages import PREFIX as CONSOLE_PREFIX
from dashboards.router import error_page as console_error_page
from dashboards.router import http_error as console_http_error
from dashboards.router import mount as mount_console

log = logging.getLogger("audit.app")
_GAP_SWEEP_S = 5.0
_QUARANTINE_PURGE_S = 3600.0


async def _log_refusal(request: Request, exc: FFAuditError) -> None:
    """A denied (403) or conflicting (409) request of an authenticated caller is a record in
    its tenant's log of the logs: who tried what, and why it was refused."""
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):
        return  # unauthenticated (401 first) or open mode: no tenant to file it under
    route = request.scope.get("route")
    with contextlib.suppress(FFAuditError):  # the answer matters more than this record
        await services_of(request).servicelog.record(
            who,
            who.tenant,
            EventAction.ACCESS_DENIED,
            outcome=Outcome.FAILURE,
            metadata={
                "method": request.method,
                "route": getattr(route, "path", None) or "unmatched",
                "status": exc.http_status,
                "error": type(exc).__name__,
            },
            client_ip=request.client.host if request.client else None,
        )


def _console_page(request: Request) -> bool:
    """A console page answers errors as HTML pages; the API, as JSON."""
    return request.url.path == CONSOLE_PREFIX or request.url.path.startswith(CONSOLE_PREFIX + "/")


def _document_deployment_limits(app: FastAPI, settings: AuditSettings) -> None:
    """Limits this deployment's settings choose go into its OpenAPI document, so that the
    contract says exactly what the code enforces (the retention floor, today)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            days = schema["components"]["schemas"]["PolicyUpdate"]["properties"]["days"]
            days["minimum"] = max(days.get("minimum", 1), settings.retention_min_days)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: AuditSettings | None = None) -> FastAPI:
    settings = settings or AuditSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        sessions = session_factory(engine)
        store = make_event_store(settings)
        # The subject vault: per-subject keys shared with the engines that seal with it.
        vault = (
            SqlSubjectVault.from_url(settings.subject_vault_url)
            if settings.subject_vault_url
            else SqlSubjectVault(sessions)
        )
        services = _build_services(settings, sessions, store, vault)
        app.state.services = services  # the one attribute of app.state (audit.deps reads it)
        if not services.tokens.configured:
            log.warning(
                "no token verification key configured: OPEN MODE, every caller is "
                "trusted (development on loopback only)"
            )
        # Background loops of the service (gap sweep; retention, alert evaluation and
        # webhook delivery add theirs here); cancelled in order at shutdown.
        loops: list[asyncio.Task[None]] = []
        try:
            if services.forward is not None:
                await services.forward.start()
                log.info("forward protocol on %s:%d", settings.forward_host, services.forward.port)
            loops.append(asyncio.create_task(_sweep_gaps(services.ingest)))
            if settings.retention_interval_s > 0:
                loops.append(asyncio.create_task(services.retention.runner.loop()))
            if settings.alert_evaluation_enabled:
                loops.append(asyncio.create_task(services.alert_scheduler.run()))
            if settings.reverify_enabled:
                loops.append(asyncio.create_task(services.reverifier.run()))
            if services.checkpointer is not None:
                loops.append(asyncio.create_task(services.checkpointer.run()))
            trim = malloc_trim() if settings.memory_trim_interval_s > 0 else None
            if trim is not None:
                loops.append(
                    asyncio.create_task(trim_periodically(settings.memory_trim_interval_s, trim))
                )
            sealed = await asyncio.to_thread(services.webhooks.seal_legacy_secrets)
            if sealed:
                log.warning("encrypted %d webhook secret(s) that were stored in clear", sealed)
            if services.webhook_delivery is not None:
                loops.append(asyncio.create_task(services.webhook_delivery.run_forever()))
            yield
        finally:
            for task in reversed(loops):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if services.forward is not None:
                await services.forward.stop()
            await services.servicelog.close()
            await store.close()
            vault.close()
            engine.dispose()

    app = FastAPI(
        responses=_ERROR_RESPONSES,
        title="ffaudit",
        version=__version__,
        summary="Tamper-evident audit trail for face-swap engines",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_request_bytes,
        timeout_s=settings.http_body_timeout_s,
    )
    app.include_router(ingest_router)
    app.include_router(streams_router)
    app.include_router(query_router)
    app.include_router(exports_router)
    app.include_router(retention_router)
    app.include_router(alerts_router)
    app.include_router(subjects_router)
    app.include_router(webhooks_router)
    app.include_router(producers_router)
    app.include_router(reverify_router)
    app.include_router(tlog_router)
    if settings.console_enabled:
        mount_console(app)
    _document_deployment_limits(app, settings)

    @app.exception_handler(FFAuditError)
    async def ffaudit_error(request: Request, exc: FFAuditError) -> Response:
        if exc.http_status in (403, 409):
            await _log_refusal(request, exc)
        if _console_page(request):
            return console_error_page(request, exc, services_of(request))
        body: dict[str, object] = {"type": type(exc).__name__, "message": exc.message}
        if exc.index is not None:
            body["index"] = exc.index
        headers = {"Retry-After": "5"} if isinstance(exc, StoreUnavailableError) else None
        return JSONResponse({"error": body}, status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The framework's own refusals (unparseable body, unknown path) in our error shape.
        if _console_page(request):
            return console_http_error(request, exc.status_code, str(exc.detail))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(
            {"error": {"type": "HTTPError", "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        if _console_page(request):
            return console_http_error(request, 422, problems)
        return JSONResponse(
            {"error": {"type": "InvalidInputError", "message": problems}}, status_code=422
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})
    async def readyz(services: AppServices) -> JSONResponse:
        """The control database and the event store are reachable."""
        checks = {
            "database": await asyncio.to_thread(_database_ok, services.sessions),
            "store": await services.store.ping(),
        }
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": checks}, status_code=status)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics(services: AppServices) -> PlainTextResponse:
        """Prometheus metrics."""
        data = generate_latest(services.metrics.registry)
        return PlainTextResponse(data, media_type=CONTENT_TYPE_LATEST)

    return app


def _build_services(
    settings: AuditSettings,
    sessions: sessionmaker[Session],
    store: EventStore,
    vault: SqlSubjectVault,
) -> Services:
    """The service's objects, each built once; nothing is started here (the lifespan
    starts the forward server and the background loops)."""
    metrics = Metrics()
    ingest = IngestService(settings, sessions, store, metrics)
    streams = StreamService(sessions)
    servicelog = ServiceLog(settings, sessions, ingest)
    keyrings = TenantKeyrings(settings.keyrings_dir, vault=vault)
    retention = RetentionService(settings, sessions, store, servicelog, keyrings)
    queries = QueryService(
        store, keyrings, streams, purged=retention.purged, verify_jobs=settings.verify_jobs
    )
    secrets = SecretBox.load(settings.service_keys_dir)
    producers = ProducerService(sessions, secrets)
    tlog = TlogService(settings, sessions, servicelog.keys.signer.key)
    return Services(
        settings=settings,
        sessions=sessions,
        store=store,
        metrics=metrics,
        tokens=TokenVerifier(settings),
        ingest=ingest,
        streams=streams,
        servicelog=servicelog,
        retention=retention,
        queries=queries,
        subjects=SubjectService(vault, keyrings, store, servicelog),
        producers=producers,
        forward=_forward_server(settings, ingest, producers) if settings.forward_enabled else None,
        alerts=AlertService(settings, sessions, servicelog),
        alert_scheduler=AlertScheduler(settings, sessions, store),
        reverifier=Reverifier(settings, sessions, queries),
        webhooks=WebhookService(sessions, secrets),
        webhook_delivery=(
            WebhookDeliverer(settings, sessions) if settings.webhook_delivery_enabled else None
        ),
        tlog=tlog,
        checkpointer=(
            Checkpointer(settings, sessions, tlog, load_witnessing(settings))
            if settings.tlog_checkpointer_enabled
            else None
        ),
        console_key=load_console_key(settings.service_keys_dir),
    )


def _forward_server(
    settings: AuditSettings, ingest: IngestService, producers: ProducerService
) -> ForwardServer:
    """The forward-protocol server (not started), storing what it receives through `ingest`
    and checking producers' credentials and revocations with `producers`."""

    async def credentials(username: str) -> tuple[str, ProducerIdentity] | None:
        return await asyncio.to_thread(producers.credential, username)

    async def on_forward(tag: str, entries: list[ForwardEntry], peer: Peer) -> None:
        # Returning means stored: the forward server acks only then.
        if peer.producer is not None:
            # Most messages find the answer cached: a worker thread only when it is not.
            active = producers.known_active(peer.producer.id)
            if active is None:
                active = await asyncio.to_thread(producers.active, peer.producer.id)
            if not active:
                raise ForwardRejected("producer revoked")
        try:
            await ingest.ingest(
                [e.record for e in entries],
                source="forward",
                peer=peer.address,
                producer=peer.producer,
            )
        except (ForbiddenError, TooManyRequestsError) as exc:
            raise ForwardRejected(exc.message) from None

    return ForwardServer(
        on_forward,
        settings,
        ssl_context=build_ssl_context(settings),
        credentials=credentials if settings.forward_shared_key else None,
    )


class _ErrorDetail(BaseModel):
    type: str
    message: str
    index: int | None = None  # the offending record, for batch input


class ErrorBody(BaseModel):
    error: _ErrorDetail


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "malformed request (e.g. a body that is not JSON)"),
        (401, "no valid bearer token"),
        (403, "the token's role or tenant does not allow this"),
        (404, "not found (or not the caller's tenant's)"),
        (409, "conflicts with stored state"),
        (413, "too large"),
        (422, "invalid input; `index` names the offending record"),
        (503, "temporarily unavailable (event store down, contention): retry"),
    )
}


def _database_ok(sessions: sessionmaker[Session]) -> bool:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason is logged
        log.exception("readiness: database check failed")
        return False
    return True


async def _sweep_gaps(ingest: IngestService) -> None:
    """The gap sweep, and once an hour the quarantine's expiry."""
    next_purge = 0.0
    while True:
        await asyncio.sleep(_GAP_SWEEP_S)
        try:
            await ingest.sweep_gaps()
        except Exception:  # keep sweeping; the failure is visible in the log
            log.exception("gap sweep failed")
        now = asyncio.get_running_loop().time()
        if now >= next_purge:
            next_purge = now + _QUARANTINE_PURGE_S
            try:
                purged = await asyncio.to_thread(ingest.purge_quarantine)
            except Exception:
                log.exception("quarantine purge failed")
            else:
                if purged:
                    log.info("purged %d expired quarantined record(s)", purged)
