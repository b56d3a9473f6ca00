"""Running one job, audited end to end.

Events (through the integrity core: pseudonymised, rate-limited per session, chained,
signed): job.submitted, job.started, face.detected, face.swapped | face.anonymized,
frame.failed (each failed frame, with its error), job.completed | job.failed, input.erased;
job.refused when prepare() turns a job down (missing input, no model pack, over a limit).
Successful video frames are not logged one by one — only counted in job.completed
(selective auditing, as the brief promised for real-time and video work).

Temporary files live in a private (0700) directory erased when the job ends, failure
included; uploaded inputs are erased right after processing and the erasure is recorded.

Error texts in records and job records are normalised (`_normalise`): the exception's class and
a one-line reason without file-system paths, which are PII (input names) or noise (library
source paths in OpenCV and onnxruntime messages).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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
    ModelError,
    TooLargeError,
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
    partial_outputs,
    read_image,
    write_image,
)
from engine.pipeline.probe import MediaInfo, MediaLimits, check_limits, probe

Emit = Callable[[AuditEvent], None]
log = logging.getLogger("engine.jobs")


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
    frames_declared: int | None = None  # videos: what the container declares
    warnings: list[str] = field(default_factory=list)


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
            # A crash mid-write leaves the writer's temporary file next to where the output
            # would have gone; nothing will ever complete it.
            removed = 0
            for partial in partial_outputs(Path(record.spec.output)):
                partial.unlink(missing_ok=True)
                removed += 1
            caller = Caller(actor=SYSTEM_ACTOR)
            self._event(
                record.spec,
                caller,
                EventAction.JOB_FAILED,
                Outcome.FAILURE,
                error_type=record.error_type,
                error_message=record.error,
                metadata={"partial_outputs_removed": removed},
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
        caller: Caller | None = None,
    ) -> JobSpec:
        """The spec of a job that may run, or a refusal: every refusal (except the audit
        trail's own, which could not be recorded) is audited as job.refused under the job id
        the spec would have had, and the error is marked `audited` and given `job_id`
        (`refused_job_id`). `caller`: who asked; None: the engine itself."""
        job_id = uuid.uuid4().hex
        try:
            return self._prepare(
                job_id,
                job_type=job_type,
                target=target,
                output=output,
                source=source,
                blend=blend,
                selector=selector,
                method=method,
                uploaded=uploaded,
            )
        except AuditUnavailableError:
            raise  # job.refused is critical: the trail that refused the job would refuse it too
        except FFEngineError as exc:
            labels = _labels(target=target, source=source, output=output)
            error_type, error_message = _normalise(exc, labels)
            who = caller if caller is not None else Caller(actor=SYSTEM_ACTOR)
            try:
                self._emit(
                    AuditEvent(
                        action=EventAction.JOB_REFUSED,
                        outcome=Outcome.FAILURE,
                        actor=who.actor,
                        client_ip=who.client_ip,
                        session=who.session,
                        target=str(target),
                        job_id=job_id,
                        error_type=error_type,
                        error_message=error_message,
                        metadata={"job_type": job_type, "reason": _refusal_reason(exc)},
                    )
                )
            except AuditUnavailableError:
                raise exc from None  # the refusal stands; why it could not be recorded is logged
            # The API records refusals it sees unless they are marked; the CLI names the job.
            exc.audited, exc.job_id = True, job_id
            raise

    def _prepare(
        self,
        job_id: str,
        *,
        job_type: JobType,
        target: Path,
        output: Path,
        source: Path | None,
        blend: float,
        selector: str,
        method: str,
        uploaded: bool,
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
            job_id=job_id,
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
            record.state = "failed"
            record.error_type, record.error = _normalise(exc, _spec_labels(spec))
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
        completed: dict[str, Any] = {
            "output_sha256": outcome.output_sha256,
            "output_resolution": f"{outcome.width}x{outcome.height}",
            "frames": outcome.frames,
            "frames_failed": outcome.frames_failed,
            "faces": outcome.faces,
            "duration_ms": _ms(started),
            "detector": spec.detector,
            "needs_review": record.needs_review,
        }
        if outcome.frames_declared is not None:
            completed["frames_declared"] = outcome.frames_declared
            # JobRecord has no field for it: the trail is where a short result is flagged.
            completed["truncated"] = 0 < outcome.frames < outcome.frames_declared
        if outcome.warnings:
            completed["warnings"] = outcome.warnings
            for warning in outcome.warnings:
                log.warning("job %s: %s", spec.job_id, warning)
        try:
            self._event(spec, caller, EventAction.JOB_COMPLETED, metadata=completed)
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
        info, frames = open_video(Path(spec.target.path), self.limits.max_video_frames)
        source = self._source(spec, caller)
        writer = VideoOutput(Path(spec.output), info)
        outcome = _Outcome(width=info.width, height=info.height)
        if info.frames > 0:
            outcome.frames_declared = info.frames
        try:
            for index, image in enumerate(frames):
                out, faces, failure = self._frame(spec, caller, image, source, frame=index)
                outcome.frames += 1
                outcome.faces += faces
                if failure is not None:
                    outcome.frames_failed += 1
                    error_type, error_message = _normalise(failure, _spec_labels(spec))
                    self._event(
                        spec,
                        caller,
                        EventAction.FRAME_FAILED,
                        Outcome.FAILURE,
                        error_type=error_type,
                        error_message=error_message,
                        metadata={"frame": index},
                    )
                writer.write(out)  # a failed frame passes through unchanged
            if outcome.frames == 0:
                raise InputError("the video has no readable frames")
            if outcome.frames_declared is not None and outcome.frames < outcome.frames_declared:
                # A cut-off file (an interrupted upload or copy) decodes up to the cut: the
                # result is shorter than the input claims, which its reviewer must know.
                outcome.warnings.append(
                    f"truncated: read {outcome.frames} of {outcome.frames_declared} declared frames"
                )
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
    try:
        check_limits(info, limits)  # before hashing: a refused file costs no more than its header
    except InputError as exc:
        setattr(exc, "limit", True)  # noqa: B010  (job.refused says reason "limit", not "input")
        raise
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


_OPENCV = re.compile(
    # OpenCV(4.14.0) /io/opencv/modules/imgproc/src/resize.cpp:4014: error: (-215:Assertion
    # failed) !ssize.empty() in function 'resize'  ->  Assertion failed: !ssize.empty() ...
    r"OpenCV\([^)]*\)\s.*?:\d+:\s*error:\s*\(-?\d+:([^)]*)\)\s*"
)
# Anything with a path separator: absolute, relative, home-relative, Windows; with a trailing
# :line[:column] (library source locations).
_PATH = re.compile(r"(?:[A-Za-z]:)?[\w.@%+~-]*(?:[/\\][\w.@%+~-]*)+(?::\d+)*")
_MESSAGE_MAX = 200


def refused_job_id(exc: BaseException) -> str | None:
    """The job id under which prepare() audited this refusal (job.refused), if it did."""
    return exc.job_id if isinstance(exc, FFEngineError) else None


def _labels(*, target: Path, source: Path | None, output: Path) -> list[tuple[str, str]]:
    """(text, label) pairs: each path as given and resolved, and its bare file name."""
    pairs: list[tuple[str, str]] = []
    for label, path in (("target", target), ("source", source), ("output", output)):
        if path is None:
            continue
        pairs += [(str(path), f"<{label}>"), (str(path.resolve()), f"<{label}>")]
    names = [
        (p.name, f"<{label}>")
        for label, p in (("target", target), ("source", source), ("output", output))
        if p is not None and p.name
    ]
    # Whole paths first, longest first, so that a name never splits a path it is part of.
    return sorted(set(pairs), key=lambda pair: -len(pair[0])) + names


def _spec_labels(spec: JobSpec) -> list[tuple[str, str]]:
    return _labels(
        target=Path(spec.target.path),
        source=Path(spec.source.path) if spec.source else None,
        output=Path(spec.output),
    )


def _normalise(exc: BaseException, labels: list[tuple[str, str]]) -> tuple[str, str]:
    """(error.type, error.message) for a record: the class, and one line of reason with no
    file-system path in it (the job's own paths and names become <target>, <source> and
    <output>, any other path <path>), OpenCV's location prefix dropped, at most 200
    characters. The full error is for a debugger, not for an audit trail kept for years."""
    message = exc.message if isinstance(exc, FFEngineError) else str(exc)
    for text, label in labels:
        if "/" in text or "\\" in text:
            message = message.replace(text, label)
        elif text.lower() not in {"target", "source", "output"}:  # not PII, and a common word
            message = re.sub(rf"(?<![\w.-]){re.escape(text)}(?![\w-])", label, message)
    message = _OPENCV.sub(lambda m: f"{m.group(1).strip()}: ", message)
    line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    line = _PATH.sub(lambda m: "<path>" if re.search(r"\w", m.group()) else m.group(), line)
    line = " ".join(line.split()) or type(exc).__name__
    if len(line) > _MESSAGE_MAX:
        line = line[: _MESSAGE_MAX - 1].rstrip() + "…"
    return _error_type(exc), line


def _error_type(exc: BaseException) -> str:
    """The class name; a third-party library's is prefixed with its package (cv2's class is
    called `error`, which alone says nothing)."""
    kind = type(exc)
    package = kind.__module__.split(".")[0]
    if package in {"builtins", "engine", "audit"}:
        return kind.__name__
    return f"{package}.{kind.__name__}"


def _refusal_reason(exc: FFEngineError) -> str:
    """The class of a refusal, for job.refused's metadata.reason."""
    if isinstance(exc, ModelError):
        return "model"
    if isinstance(exc, TooLargeError) or getattr(exc, "limit", False):
        return "limit"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, UsageError):
        return "usage"
    return type(exc).__name__


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
