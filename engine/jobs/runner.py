"""Running one job, audited end to end.

Events (through the integrity core: pseudonymised, rate-limited per session, chained,
signed): job.submitted, job.started, face.detected, face.swapped | face.anonymized,
frame.failed (each failed frame, with its error), job.completed | job.failed, input.erased.
Successful video frames are not logged one by one — only counted in job.completed
(selective auditing, as the brief promised for real-time and video work).

Temporary files live in a private (0700) directory erased when the job ends, failure
included; uploaded inputs are erased right after processing and the erasure is recorded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit import __version__
from audit.integrity.events import EventAction, Outcome
from audit.integrity.seal import AuditEvent
from engine.errors import (
    AuditUnavailableError,
    FFEngineError,
    InputError,
    JobFailedError,
    UsageError,
)
from engine.hashing import sha256_file
from engine.jobs.schemas import InputRef, JobRecord, JobSpec, JobType, ModelRef
from engine.jobs.store import JobStore
from engine.pipeline.anonymize import anonymize
from engine.pipeline.engine import SYSTEM_ACTOR, FacePipeline, NoFaceError
from engine.pipeline.faces import Face, cosine_distance, select_faces
from engine.pipeline.identity import fingerprint
from engine.pipeline.media import (
    Image,
    VideoOutput,
    can_write,
    is_video,
    open_video,
    read_image,
    write_image,
)
from engine.pipeline.probe import MediaInfo, MediaLimits, check_limits, probe

Emit = Callable[[AuditEvent], None]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: the actor id, their session and where they came from (raw; pseudonymised
    by the sealer before anything is written)."""

    actor: str
    session: str | None = None
    client_ip: str | None = None


@dataclass(slots=True)
class _Outcome:
    output_sha256: str | None = None
    width: int = 0
    height: int = 0
    frames: int = 0
    frames_failed: int = 0
    faces: int = 0


class JobRunner:
    def __init__(
        self,
        pipeline: FacePipeline,
        emit: Emit,
        work_dir: Path,
        audit_ready: Callable[[], bool] | None = None,
        *,
        limits: MediaLimits | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._emit = emit
        self._audit_ready = audit_ready
        self.limits = limits if limits is not None else MediaLimits()
        self.jobs = JobStore(work_dir / "jobs")
        self._tmp_root = work_dir / "tmp"
        self._tmp_root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def recover(self) -> list[str]:
        """After a crash: jobs left queued or started are failed (and audited as such), and
        their temporary files erased. Returns the ids of the interrupted jobs."""
        interrupted = []
        for record in self.jobs.unfinished():
            record.state, record.error_type = "failed", "Interrupted"
            record.error = "the engine stopped during the job"
            self._save(record)
            caller = Caller(actor=SYSTEM_ACTOR)
            self._event(
                record.spec,
                caller,
                EventAction.JOB_FAILED,
                Outcome.FAILURE,
                error_type=record.error_type,
                error_message=record.error,
            )
            self._erase_uploads(record.spec, caller)
            interrupted.append(record.spec.job_id)
        for leftover in self._tmp_root.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        return interrupted

    # -- submission -----------------------------------------------------------------------

    def prepare(
        self,
        *,
        job_type: JobType,
        target: Path,
        output: Path,
        source: Path | None = None,
        blend: float = 1.0,
        selector: str = "many",
        method: str = "blur",
        uploaded: bool = False,
    ) -> JobSpec:
        self.ensure_audited()
        if job_type == "swap":
            if source is None:
                raise UsageError("a swap job needs --source")
            self.pipeline.swapper()  # refuses clearly (and audited) without a model pack
            self.pipeline.enhancer()  # verified now, so the spec lists it
        if not 0.0 <= blend <= 1.0:
            raise UsageError("blend must be between 0.0 and 1.0")
        if output.resolve() in {target.resolve(), *(s.resolve() for s in [source] if s)}:
            raise UsageError("the output must not overwrite an input")
        # Every input is probed and checked against the limits here, before run() decodes
        # anything: the CLI and the API both come through prepare().
        target_ref, target_info = _input(target, uploaded, self.limits)
        source_ref = None
        if source is not None:
            source_ref, source_info = _input(source, uploaded, self.limits)
            if source_info.kind != "image":
                raise InputError(f"{source.name}: the source face must be an image")
        if (target_info.kind == "video") != is_video(output):
            raise UsageError("image in, image out; video in, video out")
        if (target_info.kind == "video") != is_video(target):
            # run() picks the image or video path by the name: it must say what the file is.
            raise InputError(
                f"{target.name}: holds a {target_info.kind} ({target_info.format}) but its name "
                f"says otherwise (name it *{target_info.suffix})"
            )
        if not can_write(output):
            raise UsageError(f"{output.name}: no encoder for this output suffix")
        return JobSpec(
            job_id=uuid.uuid4().hex,
            job_type=job_type,
            target=target_ref,
            source=source_ref,
            output=str(output),
            blend=blend,
            selector=selector,
            method=method,
            detector=self.pipeline.detector.name,
            models=[
                ModelRef(name=m["name"], role=role, sha256=m["sha256"], licence=m["licence"])
                for role, m in self.pipeline.models.items()
            ],
            providers=self.pipeline.providers,
            engine_version=__version__,
            created_at=datetime.now(UTC),
        )

    # -- running --------------------------------------------------------------------------

    def ensure_audited(self) -> None:
        """No job runs unless every one of its records can be kept: with the spool full,
        non-critical records would be dropped, so the job is refused up front."""
        if self._audit_ready is not None and not self._audit_ready():
            raise AuditUnavailableError(
                "the audit trail is not accepting records (spool full, service unreachable): "
                "refusing to run a job that could not be fully audited"
            )

    def queue(self, spec: JobSpec) -> JobRecord:
        """Persist the spec before anything runs: the job exists from now on."""
        record = JobRecord(
            spec=spec,
            state="queued",
            updated_at=datetime.now(UTC),
            needs_review=self.pipeline.detector.needs_review,
        )
        self.jobs.save(record)
        return record

    def run(self, spec: JobSpec, caller: Caller) -> JobRecord:
        self.ensure_audited()
        record = self.queue(spec)
        self._event(spec, caller, EventAction.JOB_SUBMITTED, metadata=_describe(spec))
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(dir=self._tmp_root, prefix=f"{spec.job_id}-"))
        os.chmod(tmp, 0o700)
        try:
            record.state = "started"
            self._save(record)
            self._event(spec, caller, EventAction.JOB_STARTED)
            target = Path(spec.target.path)
            if is_video(target):
                outcome = self._video(spec, caller, tmp)
            else:
                outcome = self._image(spec, caller)
        except Exception as exc:  # every failure is audited before it propagates
            error = exc if isinstance(exc, FFEngineError) else None
            record.state, record.error_type = "failed", type(exc).__name__
            record.error = _scrub(str(exc) if error is None else error.message, spec)
            self._save(record)
            self._event(
                spec,
                caller,
                EventAction.JOB_FAILED,
                Outcome.FAILURE,
                error_type=record.error_type,
                error_message=record.error,
                metadata={"duration_ms": _ms(started)},
            )
            raise JobFailedError(f"job {spec.job_id} failed: {record.error}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._erase_uploads(spec, caller)
        record.state = "completed"
        record.output_sha256 = outcome.output_sha256
        record.frames, record.frames_failed, record.faces = (
            outcome.frames,
            outcome.frames_failed,
            outcome.faces,
        )
        try:
            self._event(
                spec,
                caller,
                EventAction.JOB_COMPLETED,
                metadata={
                    "output_sha256": outcome.output_sha256,
                    "output_resolution": f"{outcome.width}x{outcome.height}",
                    "frames": outcome.frames,
                    "frames_failed": outcome.frames_failed,
                    "faces": outcome.faces,
                    "duration_ms": _ms(started),
                    "detector": spec.detector,
                    "needs_review": record.needs_review,
                },
            )
        except AuditUnavailableError as exc:
            # The trail filled up while the job ran: a result whose completion is not on the
            # record would be an unaudited use, so it is removed (job.failed cannot be
            # recorded either; the job record says why).
            Path(spec.output).unlink(missing_ok=True)
            record.state, record.error_type = "failed", type(exc).__name__
            record.error, record.output_sha256 = exc.message, None
            self._save(record)
            raise
        self._save(record)
        return record

    def _image(self, spec: JobSpec, caller: Caller) -> _Outcome:
        image = read_image(Path(spec.target.path))
        source = self._source(spec, caller)
        out, faces, failure = self._frame(spec, caller, image, source, frame=None)
        if failure is not None:
            raise failure
        output = Path(spec.output)
        write_image(output, out)
        height, width = out.shape[:2]
        return _Outcome(sha256_file(output), width, height, 1, 0, faces)

    def _video(self, spec: JobSpec, caller: Caller, tmp: Path) -> _Outcome:
        info, frames = open_video(Path(spec.target.path))
        source = self._source(spec, caller)
        writer = VideoOutput(Path(spec.output), info)
        outcome = _Outcome(width=info.width, height=info.height)
        try:
            for index, image in enumerate(frames):
                out, faces, failure = self._frame(spec, caller, image, source, frame=index)
                outcome.frames += 1
                outcome.faces += faces
                if failure is not None:
                    outcome.frames_failed += 1
                    self._event(
                        spec,
                        caller,
                        EventAction.FRAME_FAILED,
                        Outcome.FAILURE,
                        error_type=type(failure).__name__,
                        error_message=_scrub(str(failure), spec),
                        metadata={"frame": index},
                    )
                writer.write(out)  # a failed frame passes through unchanged
            if outcome.frames == 0:
                raise InputError("the video has no readable frames")
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        outcome.output_sha256 = sha256_file(Path(spec.output))
        return outcome

    def _source(self, spec: JobSpec, caller: Caller) -> Face | None:
        if spec.job_type != "swap" or spec.source is None:
            return None
        image = read_image(Path(spec.source.path))
        face, cached = self.pipeline.embed_source(image, spec.source.sha256)
        assert face.embedding is not None
        spec_metadata = {"identity_fingerprint": fingerprint(face.embedding), "cached": cached}
        self._event(
            spec,
            caller,
            EventAction.FACE_DETECTED,
            metadata={"role": "source", "faces": 1, **spec_metadata},
        )
        return face

    def _frame(
        self,
        spec: JobSpec,
        caller: Caller,
        image: Image,
        source: Face | None,
        frame: int | None,
    ) -> tuple[Image, int, Exception | None]:
        """One image or frame. Images audit every step; video frames only failures."""
        started = time.perf_counter()
        try:
            faces = self.pipeline.detector.detect(image)
        except Exception as exc:  # a frame's failure must not end a video job
            if frame is None:
                raise
            return image, 0, exc
        if frame is None:
            self._event(
                spec,
                caller,
                EventAction.FACE_DETECTED,
                metadata={
                    "role": "target",
                    "faces": len(faces),
                    "detector": spec.detector,
                    "needs_review": self.pipeline.detector.needs_review,
                    "execution_time_ms": _ms(started),
                },
            )
        if spec.job_type == "anonymize":
            out = anonymize(image, faces, spec.method)
            if frame is None:
                self._event(
                    spec,
                    caller,
                    EventAction.FACE_ANONYMIZED,
                    metadata={
                        "faces": len(faces),
                        "method": spec.method,
                        "execution_time_ms": _ms(started),
                    },
                )
            return out, len(faces), None
        assert source is not None
        assert source.embedding is not None
        chosen = select_faces(faces, spec.selector, source.embedding)
        if not chosen:
            return image, len(faces), NoFaceError("no target face found")
        out = image
        swapper = self.pipeline.swapper()
        enhancer = self.pipeline.enhancer()
        for index, face in chosen:
            out = swapper.swap(out, face, source, spec.blend)
            if enhancer is not None:
                out = enhancer.enhance(out, face)
            if frame is None:
                similarity = (
                    None
                    if face.embedding is None
                    else round(1.0 - cosine_distance(face.embedding, source.embedding), 4)
                )
                height, width = out.shape[:2]
                self._event(
                    spec,
                    caller,
                    EventAction.FACE_SWAPPED,
                    metadata={
                        "source_face_index": 0,
                        "target_face_index": index,
                        "blend_ratio": spec.blend,
                        "similarity": similarity,
                        "execution_time_ms": _ms(started),
                        "output_resolution": f"{width}x{height}",
                        "identity_fingerprint": fingerprint(source.embedding),
                        "enhanced": enhancer is not None,
                    },
                )
        return out, len(faces), None

    # -- erasure and events ----------------------------------------------------------------

    def _erase_uploads(self, spec: JobSpec, caller: Caller) -> None:
        for ref in (spec.target, spec.source):
            if ref is None or not ref.uploaded:
                continue
            path = Path(ref.path)
            existed = path.exists()
            path.unlink(missing_ok=True)
            self._event(
                spec,
                caller,
                EventAction.INPUT_ERASED,
                metadata={
                    "input_sha256": ref.sha256,
                    "existed": existed,
                    "reason": "processed",
                },
            )

    def _save(self, record: JobRecord) -> None:
        record.updated_at = datetime.now(UTC)
        self.jobs.save(record)

    def _event(
        self,
        spec: JobSpec,
        caller: Caller,
        action: EventAction,
        outcome: Outcome = Outcome.SUCCESS,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._emit(
            AuditEvent(
                action=action,
                outcome=outcome,
                actor=caller.actor,
                client_ip=caller.client_ip,
                session=caller.session,
                target=spec.target.path,
                job_id=spec.job_id,
                file_sha256=spec.target.sha256,
                error_type=error_type,
                error_message=error_message,
                metadata=metadata or {},
            )
        )


def _input(path: Path, uploaded: bool, limits: MediaLimits) -> tuple[InputRef, MediaInfo]:
    if not path.is_file():
        raise InputError(f"{path.name}: no such file")
    info = probe(path)
    check_limits(info, limits)  # before hashing: a refused file costs no more than its header
    ref = InputRef(
        path=str(path), sha256=sha256_file(path), size=path.stat().st_size, uploaded=uploaded
    )
    return ref, info


def _describe(spec: JobSpec) -> dict[str, Any]:
    """job.submitted carries every argument that affects the result."""
    return {
        "job_type": spec.job_type,
        "input_sha256": spec.target.sha256,
        "source_sha256": spec.source.sha256 if spec.source else None,
        "blend_ratio": spec.blend,
        "selector": spec.selector,
        "method": spec.method,
        "detector": spec.detector,
        "models": [m.model_dump() for m in spec.models],
        "providers": spec.providers,
        "engine_version": spec.engine_version,
    }


def _scrub(message: str, spec: JobSpec) -> str:
    """Paths are PII: the sealer knows the target's, the engine replaces the others too."""
    for label, ref in (("source", spec.source), ("target", spec.target)):
        if ref is not None:
            message = message.replace(ref.path, f"<{label}>")
            message = message.replace(Path(ref.path).name, f"<{label}>")
    return message.replace(spec.output, "<output>")


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
