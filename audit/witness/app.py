"""The witness deployable (`ffaudit witness serve`): one FastAPI app serving C2SP
tlog-witness's add-checkpoint, built from `WitnessSettings`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit import __version__
from audit.common.web import allowed_methods
from audit.db.session import make_engine, session_factory
from audit.errors import FFAuditError
from audit.httplimits import BodyLimits
from audit.witness.routes import router
from audit.witness.schemas import SIZE_CONTENT_TYPE, SizeConflictError, encode_size
from audit.witness.service import WitnessService, load_cosigner, load_logs
from audit.witness.settings import WitnessSettings


def create_app(settings: WitnessSettings | None = None) -> FastAPI:
    """The witness app. Its key and logs file are read here, so that a bad one stops the
    command before it serves; the database is opened by the lifespan (its schema must be
    migrated: `ffaudit witness serve` does, unless --no-migrate)."""
    settings = settings or WitnessSettings()
    cosigner = load_cosigner(settings.name, settings.key_file)
    logs = load_logs(settings.logs_file)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, WitnessService]]:
        engine = make_engine(settings.database_url)
        try:
            # Lifespan state (ASGI): every request carries it as `request.state.witness`,
            # which audit.witness.routes reads; nothing is kept on app.state.
            yield {"witness": WitnessService(session_factory(engine), cosigner, logs)}
        finally:
            engine.dispose()

    app = FastAPI(
        title="ffaudit witness",
        version=__version__,
        summary=f"C2SP tlog-witness {cosigner.verifier.vkey()}",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimits, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.include_router(router)

    @app.exception_handler(FFAuditError)
    async def witness_error(_request: Request, exc: FFAuditError) -> Response:
        if isinstance(exc, SizeConflictError):
            # Set as a header, not a media type: Starlette would append a charset, and the
            # protocol names the type exactly.
            return Response(
                encode_size(exc.size), status_code=409, headers={"content-type": SIZE_CONTENT_TYPE}
            )
        body = {"error": {"type": type(exc).__name__, "message": exc.message}}
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The framework's own refusals (unknown path, wrong method) in the same shape.
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(
            {"error": {"type": "HTTPError", "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=headers or None,
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    return app
