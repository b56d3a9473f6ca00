"""`ffengine serve`: the sidecar HTTP API next to the calling application.

The caller's identity comes from a bearer token (JWT, HS256 with FFENGINE_JWT_SECRET; `sub`
is the actor, never empty and never in the engine's `system:` namespace) and its session
from the `X-Session-Id` header (else the token's `sid` or `jti`), bound to the first user
who presents it; the client IP from the connection.

Every request that touches the engine leaves a record: a refused job (`job.refused`, with
the reason class), a failed authentication (`auth.failed`, per client address at most a
burst then one per 10 s, the rest counted into the next), another user's session
(`access.denied`); uploads erased on refusal (`input.erased`, reason `refused`).

Files have an owner and a lifetime: uploads are private to the job and erased right after
processing (the reaper only ever touches folders of no live job); job ownership is kept on
disk as a keyed tag, so it survives a restart; results are deleted after
FFENGINE_RESULT_TTL_S or by their owner (`DELETE /v1/jobs/{id}`), both audited. The queue
is bounded (503 with Retry-After). A SIGTERM or SIGINT lets the running job finish (up to
FFENGINE_STOP_GRACE_S), fails the queued ones (audited), then the caller seals a signed
checkpoint and flushes the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import jwt
from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit import __version__
from audit.common.web import allowed_methods
from audit.integrity.events import EventAction, Outcome
from audit.integrity.seal import AuditEvent
from engine.errors import (
    BusyError,
    ConflictError,
    FFEngineError,
    ForbiddenError,
    InputError,
    NotFoundError,
    TooLargeError,
    UnauthorizedError,
    UsageError,
)
from engine.hashing import keyed_tag, sha256_file
from engine.identity import FailureLimiter, SessionBinder, session_of, subject_of
from engine.jobs.runner import Caller, JobRunner
from engine.jobs.schemas import JobRecord, JobSpec, JobView
from engine.pipeline.engine import SYSTEM_ACTOR
from engine.pipeline.probe import output_suffix, probe
from engine.settings import EngineSettings

_CHUNK = 1 << 20
_bearer = HTTPBearer(auto_error=False)
_JOBS = "/v1/jobs"
_TOO_LARGE = "ffengine_body_too_large"


class JobAccepted(BaseModel):
    job_id: str
    state: str


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class Engine:
    """What the API needs: the runner, the emitter's emit, one worker for jobs, and what
    ties callers to their sessions and jobs."""

    def __init__(
        self,
        settings: EngineSettings,
        runner: JobRunner,
        emit: Callable[[AuditEvent], None],
        on_stop: Callable[[], object] | None = None,
    ) -> None:
        if settings.jwt_secret is None:
            raise UsageError("FFENGINE_JWT_SECRET is not set: the API cannot identify callers")
        self.settings = settings
        self.runner = runner
        self.emit = emit
        self.on_stop = on_stop
        self.key = settings.jwt_secret
        self.sessions = SessionBinder(settings.work_dir / "sessions", self.key)
        self.auth_failures = FailureLimiter()
        # One job at a time: the models share one device; queued jobs wait their turn.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ffengine-job")
        self.uploads = settings.work_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.results = settings.work_dir / "results"
        self.results.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self.live: set[str] = set()  # upload folders of queued and running jobs
        self.stopping = False

    def owner_tag(self, actor: str) -> str:
        return keyed_tag(self.key, "owner", actor)

    def admit(self, folder: str) -> None:
        """Take a place in the bounded queue (the running job and max_queued_jobs behind it)."""
        with self._lock:
            if self.stopping:
                raise BusyError("the engine is stopping", retry_after_s=30)
            if len(self.live) > self.settings.max_queued_jobs:
                raise BusyError(
                    f"{len(self.live)} jobs are running or queued (FFENGINE_MAX_QUEUED_JOBS)",
                    retry_after_s=max(1, round(self.settings.stop_grace_s / 4)),
                )
            self.live.add(folder)

    def release(self, folder: str) -> None:
        with self._lock:
            self.live.discard(folder)

    def is_live(self, folder: str) -> bool:
        with self._lock:
            return folder in self.live

    def stop(self) -> None:
        """Drain: no new jobs, the running one may finish, queued ones are failed (audited)
        by the runner's recovery, which is what a restart after a crash does too."""
        with self._lock:
            self.stopping = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        worker = threading.Thread(target=self.pool.shutdown, kwargs={"wait": True}, daemon=True)
        worker.start()
        worker.join(self.settings.stop_grace_s)
        if not worker.is_alive():
            self.runner.recover()  # the queued jobs that never ran: failed, audited
        if self.on_stop is not None:
            self.on_stop()


def create_app(engine: Engine) -> FastAPI:
    settings = engine.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _remove_partial_results(engine)
        reaper = asyncio.create_task(_reap(engine))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            # Here, not after uvicorn.run returns: uvicorn re-raises SIGTERM/SIGINT once
            # it has shut down, which ends the process before any code after it runs.
            await asyncio.to_thread(engine.stop)

    app = FastAPI(
        title="ffengine",
        version=__version__,
        lifespan=lifespan,
        summary="Face-swap engine sidecar with a tamper-evident audit trail",
    )
    app.state.engine = engine
    # A job's two files and its form fields: what a request body may hold at most.
    app.add_middleware(_BodyLimit, limit=2 * settings.max_upload_bytes + (1 << 20))

    @app.exception_handler(FFEngineError)
    async def engine_error(request: Request, exc: FFEngineError) -> JSONResponse:
        _audit_refusal(engine, request, exc)
        headers = {}
        if isinstance(exc, BusyError):
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(
            {"error": {"type": type(exc).__name__, "message": exc.message}},
            status_code=exc.http_status,
            headers=headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The framework's own refusals (an unparseable multipart body, an unknown path or
        # method) in the API's error shape; a refused submission is audited like any other.
        too_large = getattr(request.state, _TOO_LARGE, None)
        if too_large is not None:
            return await engine_error(request, TooLargeError(too_large))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        if exc.status_code < 500:
            _audit_refusal(engine, request, InputError(str(exc.detail)), reason="malformed")
        return JSONResponse(
            {"error": {"type": "HTTPError", "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        error = InputError(problems or "invalid request")
        _audit_refusal(engine, request, error, reason="validation")
        return JSONResponse(
            {"error": {"type": "ValidationError", "message": error.message}},
            status_code=422,
        )

    refusals: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "no usable bearer token"},
        403: {"model": ErrorOut, "description": "another user's session"},
        400: {"model": ErrorOut, "description": "no session"},
        422: {"model": ErrorOut, "description": "invalid input"},
    }

    @app.post(
        _JOBS,
        status_code=202,
        response_model=JobAccepted,
        responses={
            **refusals,
            409: {"model": ErrorOut, "description": "model refused"},
            413: {"model": ErrorOut, "description": "upload over FFENGINE_MAX_UPLOAD_BYTES"},
            503: {"model": ErrorOut, "description": "queue full or audit trail unavailable"},
        },
    )
    async def submit(
        who: Who,
        target: Annotated[UploadFile, File(description="image or video to process")],
        job_type: Annotated[Literal["swap", "anonymize"], Form()] = "anonymize",
        source: Annotated[
            UploadFile | None, File(description="source face (swap jobs only)")
        ] = None,
        blend: Annotated[float, Form(ge=0.0, le=1.0)] = 1.0,
        selector: Annotated[Literal["many", "one", "reference"], Form()] = "many",
        method: Annotated[Literal["blur", "mosaic"], Form()] = "blur",
    ) -> JobAccepted:
        """Queue a job. Uploads are erased as soon as the job has processed them, or at
        once when the job is refused."""
        for upload in (target, source):
            if upload is not None:
                _check_filename(upload.filename)
        folder = engine.uploads / f"u{time.time_ns()}"
        engine.admit(folder.name)
        saved: list[tuple[str, Path]] = []
        try:
            folder.mkdir(mode=0o700)
            limit = settings.max_upload_bytes
            saved.append(("target", await _save(target, folder / "target", limit)))
            if source is not None:
                saved.append(("source", await _save(source, folder / "source", limit)))
            target_path = saved[0][1]
            output = engine.results / f"{folder.name}{_suffix(target_path)}"
            spec = engine.runner.prepare(
                job_type=job_type,
                target=target_path,
                source=saved[1][1] if source is not None else None,
                output=output,
                blend=blend,
                selector=selector,
                method=method,
                uploaded=True,
                caller=who,  # prepare writes job.refused itself, and marks the error
            )
            engine.runner.queue(spec)
            engine.runner.jobs.set_owner(spec.job_id, engine.owner_tag(who.actor))
            engine.pool.submit(_run, engine, spec, who, folder)
        except BaseException:
            _erase_refused(engine, who, saved)
            shutil.rmtree(folder, ignore_errors=True)
            engine.release(folder.name)
            raise
        return JobAccepted(job_id=spec.job_id, state="queued")

    @app.get(
        _JOBS + "/{job_id}",
        response_model=JobView,
        responses={401: refusals[401], 404: {"model": ErrorOut}},
    )
    def status(job_id: str, who: Who) -> JobView:
        """A job's parameters (input hashes, models, providers) and state: only the caller's
        own jobs."""
        return JobView.of(_own(engine, job_id, who))

    @app.get(
        _JOBS + "/{job_id}/result",
        response_class=FileResponse,
        responses={
            401: refusals[401],
            404: {"model": ErrorOut},
            409: {"model": ErrorOut, "description": "not completed, or the result was deleted"},
        },
    )
    def result(job_id: str, who: Who) -> FileResponse:
        """The output file of a completed job."""
        record = _own(engine, job_id, who)
        if record.state != "completed" or record.result_deleted_at is not None:
            gone = "its result was deleted" if record.result_deleted_at else record.state
            raise ConflictError(f"job {job_id} is {gone}")
        return FileResponse(record.spec.output)

    @app.delete(
        _JOBS + "/{job_id}",
        status_code=204,
        response_class=Response,
        responses={
            401: refusals[401],
            404: {"model": ErrorOut},
            409: {"model": ErrorOut, "description": "still queued or running"},
        },
    )
    def delete(job_id: str, who: Who) -> Response:
        """Delete a finished job: its result and its record (audited as result.deleted)."""
        record = _own(engine, job_id, who)
        if record.state in ("queued", "started"):
            raise ConflictError(f"job {job_id} is {record.state}")
        _delete_result(engine, record.spec, who, reason="owner")
        engine.runner.jobs.delete(job_id)
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


class _BodyLimit:
    """Refuses a body over `limit` while it streams in (413): Starlette would otherwise
    spool a whole multipart body to disk before the route could look at its size. A
    declared Content-Length over the limit is refused before a byte is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = TooLargeError(
            f"the request body is over {self.limit / (1 << 20):.1f} MiB "
            "(twice FFENGINE_MAX_UPLOAD_BYTES, plus the form)"
        )
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > self.limit:
                received = int(declared)
            else:
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
            if received > self.limit:
                # The form parser turns any error into a 400; the mark lets the app's
                # handler answer (and audit) the 413 it is.
                scope.setdefault("state", {})[_TOO_LARGE] = str(too_large)
                raise too_large
            return message

        await self.app(scope, limited, send)


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_session_id: Annotated[str | None, Header(max_length=256)] = None,
) -> Caller:
    engine: Engine = request.app.state.engine
    client_ip = request.client.host if request.client else None
    if credentials is None:
        request.state.auth_reason = "missing"
        raise UnauthorizedError("invalid token")
    try:
        claims = jwt.decode(
            credentials.credentials,
            engine.key,
            algorithms=["HS256"],
            options={"require": ["sub", "exp"]},
        )
    except jwt.PyJWTError as exc:
        # The reason goes to the audit record; the caller learns nothing it could tune a
        # forgery with.
        request.state.auth_reason = type(exc).__name__
        raise UnauthorizedError("invalid token") from None
    try:
        actor = subject_of(claims)
    except UnauthorizedError:
        request.state.auth_reason = "bad_subject"
        raise
    session = session_of(x_session_id, claims)
    who = Caller(actor=actor, session=session, client_ip=client_ip)
    request.state.caller = who
    engine.sessions.bind(session, actor)
    return who


Who = Annotated[Caller, Depends(caller)]


def _check_filename(name: str | None) -> None:
    if name is not None and any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError("a file name holds control characters")


def _audit_refusal(
    engine: Engine, request: Request, exc: FFEngineError, *, reason: str | None = None
) -> None:
    """The record of a refused request: every attempted use is provable."""
    if exc.audited:
        return
    client_ip = request.client.host if request.client else None
    who: Caller | None = getattr(request.state, "caller", None)
    if isinstance(exc, UnauthorizedError):
        suppressed = engine.auth_failures.admit(client_ip or "unknown")
        if suppressed is None:
            return
        engine.emit(
            AuditEvent(
                action=EventAction.AUTH_FAILED,
                outcome=Outcome.FAILURE,
                actor="anonymous",
                client_ip=client_ip,
                error_type=type(exc).__name__,
                error_message=exc.message,
                metadata={
                    "reason": getattr(request.state, "auth_reason", "invalid"),
                    "method": request.method,
                    "path": request.url.path,
                    "suppressed": suppressed,
                },
            )
        )
        return
    if isinstance(exc, ForbiddenError):
        action = EventAction.ACCESS_DENIED
    elif request.method == "POST" and request.url.path == _JOBS:
        action = EventAction.JOB_REFUSED
    else:
        return  # a 404 or 409 on a read of the caller's own jobs changes nothing
    engine.emit(
        AuditEvent(
            action=action,
            outcome=Outcome.FAILURE,
            actor=who.actor if who else "anonymous",
            session=who.session if who else None,
            client_ip=client_ip,
            error_type=type(exc).__name__,
            error_message=exc.message,
            metadata={
                "reason": reason or _reason(exc),
                "status": exc.http_status,
                "method": request.method,
                "path": request.url.path,
            },
        )
    )


def _reason(exc: FFEngineError) -> str:
    if isinstance(exc, TooLargeError):
        return "too_large"
    if isinstance(exc, BusyError):
        return "busy"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, UsageError):
        return "usage"
    return type(exc).__name__


def _erase_refused(engine: Engine, who: Caller, saved: list[tuple[str, Path]]) -> None:
    for role, path in saved:
        try:
            digest = sha256_file(path)
        except OSError:
            continue
        path.unlink(missing_ok=True)
        engine.emit(
            AuditEvent(
                action=EventAction.INPUT_ERASED,
                actor=who.actor,
                session=who.session,
                client_ip=who.client_ip,
                file_sha256=digest,
                metadata={"input_sha256": digest, "role": role, "reason": "refused"},
            )
        )


def _own(engine: Engine, job_id: str, who: Caller) -> JobRecord:
    if not job_id.isalnum() or engine.runner.jobs.owner(job_id) != engine.owner_tag(who.actor):
        raise NotFoundError(f"no job {job_id!r}")  # same answer for "not yours" and "none"
    return engine.runner.jobs.load(job_id)


def _run(engine: Engine, spec: JobSpec, who: Caller, folder: Path) -> None:
    try:
        engine.runner.run(spec, who)
    except FFEngineError:
        pass  # failed and audited; the record says why
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        engine.release(folder.name)


def _delete_result(engine: Engine, spec: JobSpec, who: Caller | None, *, reason: str) -> None:
    output = Path(spec.output)
    existed = output.exists()
    output.unlink(missing_ok=True)
    engine.emit(
        AuditEvent(
            action=EventAction.RESULT_DELETED,
            actor=who.actor if who else SYSTEM_ACTOR,
            session=who.session if who else None,
            client_ip=who.client_ip if who else None,
            job_id=spec.job_id,
            file_sha256=spec.target.sha256,
            metadata={"reason": reason, "existed": existed},
        )
    )


def _remove_partial_results(engine: Engine) -> None:
    """Half-written outputs of a crash (the writers' `.<name>.part…` temporaries)."""
    for leftover in engine.results.glob(".*.part*"):
        leftover.unlink(missing_ok=True)


async def _save(upload: UploadFile, path: Path, max_bytes: int) -> Path:
    """Saves an upload as `path` plus the suffix of what its bytes are: the client's file name
    says nothing reliable (browsers send `blob`), and the job and its output follow the suffix.
    The caller removes the folder when this raises."""
    too_large = TooLargeError(
        f"the upload is over the {max_bytes / (1 << 20):.1f} MiB limit (FFENGINE_MAX_UPLOAD_BYTES)"
    )
    # Starlette has spooled the part by now and knows its size: refused without a copy.
    if upload.size is not None and upload.size > max_bytes:
        raise too_large
    size = 0
    with path.open("wb") as handle:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                break
            handle.write(chunk)
    if size > max_bytes:
        path.unlink(missing_ok=True)
        raise too_large
    if size == 0:
        raise InputError("an uploaded file is empty")
    named = path.with_suffix(probe(path).suffix)
    path.rename(named)
    return named


def _suffix(saved: Path) -> str:
    """The result's suffix: the format of the saved (probed and so named) target."""
    return output_suffix(saved.suffix)


async def _reap(engine: Engine) -> None:
    while True:
        await asyncio.to_thread(_reap_once, engine)
        await asyncio.sleep(min(30.0, engine.settings.upload_ttl_s / 2))


def _reap_once(engine: Engine, now: float | None = None) -> None:
    """Uploads of no live job (left by a crash) after the upload TTL, and results after the
    result TTL: erased, and that audited. A queued or running job's inputs are never touched."""
    now = time.time() if now is None else now
    for folder in engine.uploads.iterdir():
        if engine.is_live(folder.name):
            continue
        if folder.stat().st_mtime < now - engine.settings.upload_ttl_s:
            shutil.rmtree(folder, ignore_errors=True)
            engine.emit(
                AuditEvent(
                    action=EventAction.INPUT_ERASED,
                    outcome=Outcome.SUCCESS,
                    actor=SYSTEM_ACTOR,
                    metadata={"reason": "ttl", "upload": folder.name},
                )
            )
    expired = now - engine.settings.result_ttl_s
    engine.sessions.prune(unused_since=expired)
    for record in engine.runner.jobs.all():
        if (
            record.state in ("completed", "failed")
            and record.result_deleted_at is None
            and record.updated_at.timestamp() < expired
        ):
            _delete_result(engine, record.spec, None, reason="ttl")
            record.result_deleted_at = datetime.now(UTC)
            engine.runner.jobs.save(record)
