"""Input limits before decoding (issue 14): probing headers, refusing bombs, upload size, and
the output format following the input's bytes rather than its name."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi import UploadFile
from fastapi.testclient import TestClient
from PIL import ImageFile

from audit.integrity.seal import AuditEvent
from engine.api import Engine, _save, create_app
from engine.errors import InputError, TooLargeError, UsageError
from engine.jobs.runner import JobRunner
from engine.pipeline import media
from engine.pipeline.engine import FacePipeline
from engine.pipeline.probe import MediaInfo, MediaLimits, check_limits, probe
from engine.settings import EngineSettings
from tests.engine.test_api import SECRET, headers, wait_done

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit RGB) with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png_zero_bomb(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of zeros: 32768x32768 is 128 KiB, and 3 GiB once decoded to BGR
    (the issue's file). A header with no data would not do for memory: libpng gives up on the
    first missing row, before most of the image is touched."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    per_block = max(1, (4 * MiB) // len(row))
    compressor = zlib.compressobj(9)
    parts, left = [], height
    while left > 0:
        rows = min(per_block, left)
        parts.append(compressor.compress(row * rows))
        left -= rows
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def encoded(suffix: str, width: int = 12, height: int = 10) -> bytes:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (30, 120, 200)
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def make_video(path: Path, frames: int = 7, fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any decode of pixel data, by OpenCV (the engine) or Pillow (the probe), fails the test."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(cv2, "imread", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# -- probe --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fmt"),
    [
        (".png", "png"),
        (".jpg", "jpeg"),
        (".webp", "webp"),
        (".bmp", "bmp"),
        (".tiff", "tiff"),
        (".gif", "gif"),
    ],
)
@pytest.mark.parametrize("name", ["blob", "photo.txt", "clip.mp4"])
@pytest.mark.usefixtures("no_decoding")
def test_images_are_known_by_their_bytes(tmp_path: Path, suffix: str, fmt: str, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(encoded(suffix, 12, 10))
    info = probe(path)
    assert info == MediaInfo(kind="image", format=fmt, width=12, height=10)
    assert info.suffix == (".jpg" if fmt == "jpeg" else suffix)


def test_every_accepted_image_format_is_one_opencv_decodes(tmp_path: Path) -> None:
    for suffix in (".png", ".jpg", ".webp", ".bmp", ".tiff", ".gif"):
        path = tmp_path / f"x{suffix}"
        path.write_bytes(encoded(suffix))
        assert cv2.haveImageReader(str(path)), suffix
        assert media.read_image(path).shape == (10, 12, 3)


def test_a_video_is_known_by_its_container_and_read_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    make_video(path)
    renamed = path.rename(tmp_path / "blob")
    info = probe(renamed)
    assert info == MediaInfo(
        kind="video", format="avi", width=64, height=48, frames=7, fps=10.0, duration_s=0.7
    )
    assert (info.suffix, info.output_suffix) == (".avi", ".avi")


def test_what_is_not_a_supported_image_or_video_is_an_input_error(tmp_path: Path) -> None:
    cases = {
        "text": b"not an image",
        "empty": b"",
        "truncated.png": encoded(".png")[:20],
        "truncated.jpg": b"\xff\xd8\xff" + b"junk" * 8,
        # OpenCV decodes PNM too, but no header of it is read here: it must not get through.
        "image.ppm": b"P6\n30000 30000\n255\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            probe(path)
    with pytest.raises(InputError, match="no such file"):
        probe(tmp_path / "missing.png")


@pytest.mark.usefixtures("no_decoding")
def test_a_header_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bomb(32768, 32768))
    info = probe(path)
    assert (info.width, info.height) == (32768, 32768)
    with pytest.raises(
        InputError,
        match=r"image is 32768x32768 \(1073\.7 MP\), over the 50\.3 MP limit "
        r"\(FFENGINE_MAX_PIXELS\)",
    ):
        check_limits(info, MediaLimits())


def test_video_limits(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    make_video(path, frames=7, fps=10.0)
    info = probe(path)
    check_limits(info, MediaLimits())
    with pytest.raises(InputError, match=r"video frame is 64x48 .*FFENGINE_MAX_PIXELS"):
        check_limits(info, MediaLimits(max_pixels=64 * 48 - 1))
    with pytest.raises(InputError, match=r"7 frames, over the 6 frame limit"):
        check_limits(info, MediaLimits(max_video_frames=6))
    with pytest.raises(InputError, match=r"lasts 0\.7 s, over the 0\.5 s limit"):
        check_limits(info, MediaLimits(max_video_seconds=0.5))


def test_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MediaLimits.from_settings(EngineSettings()) == MediaLimits()  # one set of defaults
    monkeypatch.setenv("FFENGINE_MAX_PIXELS", "1000")
    monkeypatch.setenv("FFENGINE_MAX_VIDEO_FRAMES", "10")
    monkeypatch.setenv("FFENGINE_MAX_VIDEO_SECONDS", "2.5")
    monkeypatch.setenv("FFENGINE_MAX_UPLOAD_BYTES", "4096")
    settings = EngineSettings()
    assert MediaLimits.from_settings(settings) == MediaLimits(1000, 10, 2.5)
    assert settings.max_upload_bytes == 4096


# -- JobRunner.prepare: the one way into a job, for the CLI and the API ----------------------


@pytest.fixture
def events() -> list[AuditEvent]:
    return []


@pytest.fixture
def runner(tmp_path: Path, events: list[AuditEvent]) -> JobRunner:
    settings = EngineSettings(work_dir=tmp_path / "work")
    return JobRunner(
        FacePipeline(settings, events.append),
        events.append,
        settings.work_dir,
        limits=MediaLimits.from_settings(settings),
    )


@pytest.mark.usefixtures("no_decoding")
def test_prepare_refuses_a_bomb_before_anything_decodes_it(
    runner: JobRunner, tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_bomb(32768, 32768))
    with pytest.raises(InputError, match="32768x32768"):
        runner.prepare(job_type="anonymize", target=bomb, output=tmp_path / "o.png")
    face = tmp_path / "face.png"
    face.write_bytes(encoded(".png"))
    with pytest.raises(InputError, match="32768x32768"):  # a swap's source face too
        runner.prepare(job_type="anonymize", target=face, source=bomb, output=tmp_path / "o.png")
    assert list(runner.jobs.directory.iterdir()) == []


def test_prepare_checks_what_the_files_are(
    runner: JobRunner, sample_image_path: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "photo"  # a JPEG with no suffix: an image job, by its bytes
    photo.write_bytes(sample_image_path.read_bytes())
    spec = runner.prepare(job_type="anonymize", target=photo, output=tmp_path / "o.jpg")
    assert spec.target.size == photo.stat().st_size
    video = tmp_path / "clip.avi"
    make_video(video)
    clip = tmp_path / "clip.bin"  # a video named as something else: run() goes by the name
    clip.write_bytes(video.read_bytes())
    with pytest.raises(InputError, match=r"holds a video \(avi\) .*name it \*\.avi"):
        runner.prepare(job_type="anonymize", target=clip, output=tmp_path / "o.avi")
    with pytest.raises(InputError, match="source face must be an image"):
        runner.prepare(job_type="anonymize", target=photo, source=video, output=tmp_path / "o.png")
    # An output no encoder can write is refused now, not after the job ran.
    with pytest.raises(UsageError, match="no encoder"):
        runner.prepare(job_type="anonymize", target=photo, output=tmp_path / "o")
    with pytest.raises(UsageError, match="no encoder"):
        runner.prepare(job_type="anonymize", target=video, output=tmp_path / "o.webm")


def test_a_video_growing_past_its_declared_size_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.avi"
    make_video(path)
    real = cv2.VideoCapture

    class Declares32x24:
        """The same stream, as if its header had declared 32x24 frames."""

        def __init__(self, name: str) -> None:
            self._capture = real(name)
            self.isOpened, self.read, self.release = (
                self._capture.isOpened,
                self._capture.read,
                self._capture.release,
            )

        def get(self, prop: int) -> float:
            sizes = {cv2.CAP_PROP_FRAME_WIDTH: 32.0, cv2.CAP_PROP_FRAME_HEIGHT: 24.0}
            return sizes.get(prop, self._capture.get(prop))

    monkeypatch.setattr(cv2, "VideoCapture", Declares32x24)
    _, frames = media.open_video(path)
    with pytest.raises(InputError, match="frame 0 is 64x48, larger than the 32x24"):
        next(frames)


# -- the peak memory of a refused bomb, measured -----------------------------------------

_MEASURE = """
import json, sys
from pathlib import Path
from types import SimpleNamespace

from engine.errors import InputError
from engine.jobs.runner import JobRunner
from engine.pipeline.media import read_image

mode, target, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
# prepare() needs no models for an anonymize job: a stand-in pipeline keeps the baseline quiet.
pipeline = SimpleNamespace(detector=SimpleNamespace(name="stub"), models={}, providers=[])
runner = JobRunner(pipeline, lambda event: None, work)
outcome = "baseline"
if mode == "job":  # prepare(), then what run() does first with an accepted image
    try:
        spec = runner.prepare(job_type="anonymize", target=target, output=work / "out.png")
        outcome = "decoded %dx%d" % read_image(Path(spec.target.path)).shape[1::-1]
    except InputError as exc:
        outcome = exc.message
elif mode == "decode":  # what a job did with the file before the limits
    outcome = "decoded %dx%d" % read_image(target).shape[1::-1]
# VmHWM is this process's own peak; ru_maxrss would carry over the peak of the (large) pytest
# process it was forked from, as Linux keeps it across fork and exec.
status = Path("/proc/self/status").read_text()
hwm_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
print(json.dumps({"outcome": outcome, "rss_mib": hwm_kib / 1024}))
"""


def _peak(mode: str, target: Path, work: Path) -> tuple[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, mode, str(target), str(work)],
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return str(result["outcome"]), float(result["rss_mib"])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_a_refused_bomb_costs_no_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_zero_bomb(32768, 32768))  # 3 GiB as BGR
    assert bomb.stat().st_size < 200 * 1024
    _, baseline = _peak("baseline", bomb, tmp_path / "w0")
    outcome, refused = _peak("job", bomb, tmp_path / "w1")
    assert "32768x32768" in outcome
    assert refused < 600, f"peak RSS {refused:.0f} MiB"
    assert refused - baseline < 100, f"baseline {baseline:.0f} MiB, refused {refused:.0f} MiB"
    # The measurement can see a decode: a smaller bomb (8192x8192, 192 MiB as BGR), decoded.
    small = tmp_path / "small-bomb.png"
    small.write_bytes(png_zero_bomb(8192, 8192))
    outcome, decoded = _peak("decode", small, tmp_path / "w2")
    assert outcome == "decoded 8192x8192"
    assert decoded - baseline > 150, f"baseline {baseline:.0f} MiB, decoded {decoded:.0f} MiB"


# -- the sidecar over HTTP ---------------------------------------------------------------


@pytest.fixture
def small_client(tmp_path: Path, events: list[AuditEvent]) -> Iterator[TestClient]:
    settings = EngineSettings(
        work_dir=tmp_path / "work", jwt_secret=SECRET, max_upload_bytes=256 * 1024
    )
    runner = JobRunner(
        FacePipeline(settings, events.append),
        events.append,
        settings.work_dir,
        limits=MediaLimits.from_settings(settings),
    )
    with TestClient(create_app(Engine(settings, runner, events.append))) as client:
        yield client


def _left_behind(tmp_path: Path) -> list[Path]:
    work = tmp_path / "work"
    return [*(work / "uploads").iterdir(), *(work / "results").glob("*")]


def test_an_oversized_upload_is_413_and_leaves_nothing(
    small_client: TestClient, tmp_path: Path
) -> None:
    big = encoded(".png") + b"\0" * (300 * 1024)
    response = small_client.post(
        "/v1/jobs", headers=headers(), files={"target": ("a.png", big, "image/png")}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "TooLargeError"
    assert "FFENGINE_MAX_UPLOAD_BYTES" in response.json()["error"]["message"]
    assert _left_behind(tmp_path) == []


def test_an_upload_of_unknown_size_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "target"
    upload = UploadFile(io.BytesIO(b"x" * (3 * MiB)))  # no size: counted while copied
    with pytest.raises(TooLargeError):
        asyncio.run(_save(upload, path, 2 * MiB))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field", ["target", "source"])
def test_a_bomb_or_garbage_upload_is_422_and_leaves_nothing(
    small_client: TestClient, tmp_path: Path, field: str
) -> None:
    files = {"target": ("t.png", encoded(".png"), "image/png")}
    for data in (png_header_bomb(32768, 32768), b"not an image at all"):
        files[field] = ("x.png", data, "image/png")
        response = small_client.post("/v1/jobs", headers=headers(), files=files)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "InputError"
        assert _left_behind(tmp_path) == []


def test_a_jpeg_uploaded_as_blob_gives_a_jpeg(
    small_client: TestClient, sample_image_path: Path
) -> None:
    with sample_image_path.open("rb") as image:
        response = small_client.post(
            "/v1/jobs",
            headers=headers(),
            files={"target": ("blob", image, "application/octet-stream")},
            data={"job_type": "anonymize"},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    body = wait_done(small_client, job_id)
    assert body["state"] == "completed", body
    result = small_client.get(f"/v1/jobs/{job_id}/result", headers=headers())
    assert result.status_code == 200
    assert result.content[:3] == b"\xff\xd8\xff"
    assert result.headers["content-type"] == "image/jpeg"


def test_the_output_format_is_the_inputs_not_its_names(small_client: TestClient) -> None:
    png = encoded(".png", 64, 48)
    response = small_client.post(
        "/v1/jobs", headers=headers(), files={"target": ("photo.jpg", png, "image/jpeg")}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert wait_done(small_client, job_id)["state"] == "completed"
    result = small_client.get(f"/v1/jobs/{job_id}/result", headers=headers())
    assert result.content[:8] == b"\x89PNG\r\n\x1a\n"
