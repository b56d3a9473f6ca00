"""`ffengine serve`: the sidecar HTTP API next to the calling application.

The caller's identity comes from a bearer token (JWT, HS256 with FFENGINE_JWT_SECRET; `sub`
is the actor) and its session from the `X-Session-Id` header; the client IP from the
connection. Uploads are private to the job, erased right after processing (and by a reaper
after FFENGINE_UPLOAD_TTL_S if the engine died mid-job), and every erasure is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

import jwt
from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from audit import __version__
from audit.integrity.events import EventAction, Outcome
from audit.integrity.seal import AuditEvent
from engine.errors import FFEngineError, InputError, NotFoundError, TooLargeError, UsageError
from engine.jobs.runner import Caller, JobRunner
from engine.jobs.schemas import JobRecord, JobSpec
from engine.pipeline.probe import output_suffix, probe
from engine.settings import EngineSettings

_CHUNK = 1 << 20
_bearer = HTTPBearer(auto_error=False)


class UnauthorizedError(FFEngineError):
    exit_code = 2
    http_status = 401


class JobAccepted(BaseModel):
    job_id: str
    state: str


class Engine:
    """What the API needs: the runner, the emitter's emit, one worker for jobs."""

    def __init__(
        self, settings: EngineSettings, runner: JobRunner, emit: Callable[[AuditEvent], None]
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.emit = emit
        self.owners: dict[str, str] = {}  # job id -> actor: a caller sees only its own jobs
        # One job at a time: the models share one device; queued jobs wait their turn.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ffengine-job")
        self.uploads = settings.work_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True, mode=0o700)


def create_app(engine: Engine) -> FastAPI:
    settings = engine.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap_uploads(engine))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            engine.pool.shutdown(wait=True)

    app = FastAPI(
        title="ffengine",
        version=__version__,
        lifespan=lifespan,
        summary="Face-swap engine sidecar with a tamper-evident audit trail",
    )

    app.state.engine = engine

    @app.exception_handler(FFEngineError)
    async def engine_error(_: Request, exc: FFEngineError) -> JSONResponse:
        return JSONResponse(
            {"error": {"type": type(exc).__name__, "message": exc.message}},
            status_code=exc.http_status,
        )

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses={401: {}, 409: {"description": "model refused"}, 413: {}, 422: {}},
    )
    async def submit(
        who: Who,
        target: Annotated[UploadFile, File(description="image or video to process")],
        job_type: Annotated[Literal["swap", "anonymize"], Form()] = "anonymize",
        source: Annotated[UploadFile | None, File(description="source face (swap)")] = None,
        blend: Annotated[float, Form(ge=0.0, le=1.0)] = 1.0,
        selector: Annotated[Literal["many", "one", "reference"], Form()] = "many",
        method: Annotated[Literal["blur", "mosaic"], Form()] = "blur",
    ) -> JobAccepted:
        """Queue a job. Uploads are erased as soon as the job has processed them."""
        folder = engine.uploads / f"u{time.time_ns()}"
        folder.mkdir(mode=0o700)
        limit = settings.max_upload_bytes
        try:
            target_path = await _save(target, folder / "target", limit)
            source_path = (
                await _save(source, folder / "source", limit) if source is not None else None
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        output = settings.work_dir / "results" / f"{folder.name}{_suffix(target_path)}"
        try:
            spec = engine.runner.prepare(
                job_type=job_type,
                target=target_path,
                source=source_path,
                output=output,
                blend=blend,
                selector=selector,
                method=method,
                uploaded=True,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        engine.runner.queue(spec)
        engine.owners[spec.job_id] = who.actor
        engine.pool.submit(_run, engine, spec, who, folder)
        return JobAccepted(job_id=spec.job_id, state="queued")

    @app.get("/v1/jobs/{job_id}", response_model=JobRecord, responses={401: {}, 404: {}})
    def status(job_id: str, who: Who) -> JobRecord:
        """A job's spec and state (only the caller's own jobs)."""
        return _own(engine, job_id, who)

    @app.get(
        "/v1/jobs/{job_id}/result",
        response_class=FileResponse,
        responses={401: {}, 404: {}, 409: {"description": "not completed"}},
    )
    def result(job_id: str, who: Who) -> FileResponse:
        """The output file of a completed job."""
        record = _own(engine, job_id, who)
        if record.state != "completed":
            raise _NotReady(f"job {job_id} is {record.state}")
        return FileResponse(record.spec.output)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_session_id: Annotated[str | None, Header(max_length=256)] = None,
) -> Caller:
    settings: EngineSettings = request.app.state.engine.settings
    if settings.jwt_secret is None:
        raise UsageError("FFENGINE_JWT_SECRET is not set: the API cannot identify callers")
    if credentials is None:
        raise UnauthorizedError("a bearer token is required")
    try:
        claims = jwt.decode(
            credentials.credentials,
            settings.jwt_secret,
            algorithms=["HS256"],
            options={"require": ["sub", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise UnauthorizedError(f"invalid token: {exc}") from None
    return Caller(
        actor=str(claims["sub"]),
        session=x_session_id,
        client_ip=request.client.host if request.client else None,
    )


Who = Annotated[Caller, Depends(caller)]


class _NotReady(FFEngineError):
    http_status = 409


def _own(engine: Engine, job_id: str, who: Caller) -> JobRecord:
    if engine.owners.get(job_id) != who.actor:
        raise NotFoundError(f"no job {job_id!r}")  # same answer for "not yours" and "none"
    return engine.runner.jobs.load(job_id)


def _run(engine: Engine, spec: JobSpec, who: Caller, folder: Path) -> None:
    try:
        engine.runner.run(spec, who)
    except FFEngineError:
        pass  # failed and audited; the record says why
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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


async def _reap_uploads(engine: Engine) -> None:
    """Uploads left behind by a crash are erased after the TTL, and that is audited."""
    while True:
        cutoff = time.time() - engine.settings.upload_ttl_s
        for folder in engine.uploads.iterdir():
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                engine.emit(
                    AuditEvent(
                        action=EventAction.INPUT_ERASED,
                        outcome=Outcome.SUCCESS,
                        actor="system:ffengine",
                        metadata={"reason": "ttl", "upload": folder.name},
                    )
                )
        await asyncio.sleep(min(30.0, engine.settings.upload_ttl_s / 2))
