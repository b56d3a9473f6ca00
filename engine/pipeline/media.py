"""Images and videos in and out (OpenCV). Outputs are written atomically: a temporary name in
the destination directory, fsync, then rename, so a crash never leaves half a file under the
final name."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from audit.common.files import fsync_dir, partial_files, write_atomic
from engine.errors import InputError, UsageError

Image = NDArray[np.uint8]
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
VIDEO_OUTPUT_SUFFIXES = frozenset(_FOURCC)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def can_write(path: Path) -> bool:
    """Whether an output under this name can be written (its suffix picks the encoder)."""
    if is_video(path):
        return path.suffix.lower() in VIDEO_OUTPUT_SUFFIXES
    return bool(path.suffix) and cv2.haveImageWriter(str(path))


def read_image(path: Path) -> Image:
    if not path.is_file():
        raise InputError(f"{path.name}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path.name}: not a readable image")
    return np.asarray(image, dtype=np.uint8)


def write_image(path: Path, image: Image) -> None:
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise UsageError(f"{path.name}: cannot encode an image with this suffix")
    write_atomic(path, encoded.tobytes())


@dataclass(frozen=True, slots=True)
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int  # as the container reports it (may be 0 or approximate)


def open_video(path: Path, max_frames: int | None = None) -> tuple[VideoInfo, Iterator[Image]]:
    """The video's parameters and its frames. Reading stops with InputError at a frame past
    the count the container declares (the limits were checked on that count) or past
    `max_frames` (FFENGINE_MAX_VIDEO_FRAMES): a stream must not decode more than it promised.
    Fewer frames than declared end the iteration quietly; the caller compares the counts."""
    if not path.is_file():
        raise InputError(f"{path.name}: no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"{path.name}: not a readable video")
    info = VideoInfo(
        fps=float(capture.get(cv2.CAP_PROP_FPS)) or 25.0,
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        frames=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
    )

    declared = info.width * info.height

    def frames() -> Iterator[Image]:
        try:
            for index in itertools.count():
                ok, frame = capture.read()
                if not ok:
                    return
                if 0 < info.frames <= index:
                    raise InputError(
                        f"the video holds more frames than the {info.frames} its container "
                        "declares: reading stopped"
                    )
                if max_frames is not None and index >= max_frames:
                    raise InputError(
                        f"the video holds more than {max_frames} frames, over the frame limit "
                        "(FFENGINE_MAX_VIDEO_FRAMES): reading stopped"
                    )
                # The limits were checked on the size the header declares; a stream whose
                # frames grow past it is not decoded any further.
                if frame.shape[0] * frame.shape[1] > declared:
                    raise InputError(
                        f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, larger than the "
                        f"{info.width}x{info.height} the video declares"
                    )
                yield np.asarray(frame, dtype=np.uint8)
        finally:
            capture.release()

    return info, frames()


def _video_part_name(path: Path) -> str:
    return f".{path.stem}.part{path.suffix.lower()}"


def partial_outputs(path: Path) -> list[Path]:
    """Temporary files that a writer of `path` left behind when the process died mid-write:
    VideoOutput's `.<stem>.part<suffix>` and write_atomic's. Only these names, and only
    regular files: anything else in the directory is not ours."""
    video = path.with_name(_video_part_name(path))
    try:
        own = [video] if video.is_file() and not video.is_symlink() else []
    except OSError:  # the directory is unreadable: nothing of ours to find
        own = []
    return own + partial_files(path)


class VideoOutput:
    """Writes frames at the input's size and frame rate; renamed into place on commit()."""

    def __init__(self, path: Path, info: VideoInfo) -> None:
        suffix = path.suffix.lower()
        if suffix not in _FOURCC:
            raise UsageError(f"{path.name}: unsupported video output suffix")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._tmp = path.with_name(_video_part_name(path))
        # OpenCV opens the file by name, frame by frame, so it cannot go through write_atomic
        # (which takes the whole content): the temporary file is made here, private from the
        # start like write_atomic's, and the encoder writes into it keeping that mode.
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a leftover of a crash may have had another mode
        finally:
            os.close(fd)
        fourcc = cv2.VideoWriter.fourcc(*_FOURCC[suffix])
        self._writer = cv2.VideoWriter(str(self._tmp), fourcc, info.fps, (info.width, info.height))
        if not self._writer.isOpened():
            raise UsageError(f"{path.name}: cannot open a video writer")
        self.frames = 0

    def write(self, frame: Image) -> None:
        self._writer.write(frame)
        self.frames += 1

    def commit(self) -> None:
        self._writer.release()
        with open(self._tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)  # the rename lives in the directory

    def abort(self) -> None:
        self._writer.release()
        self._tmp.unlink(missing_ok=True)
