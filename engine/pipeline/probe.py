"""What an input is, read from its header alone, and whether the engine may decode it.

A decoder allocates what the header declares: a 136 KiB PNG declaring 12000x12000 pixels
costs 432 MiB per decoded copy, and OpenCV's own ceiling is 2^30 pixels (3 GiB). So the
format, size and length of every input are read here without decoding a pixel, and checked
against FFENGINE_MAX_PIXELS & co. before the job decodes anything (JobRunner.prepare).

The format comes from the file's first bytes, never from its name: the sidecar names uploads
after what they are, and the output takes the same format. Only formats that both OpenCV
decodes and a header parser here reads are accepted: anything else OpenCV would still try to
decode (PNM, JPEG 2000, Radiance HDR, ...) without any limit, so it is refused instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from engine.errors import InputError
from engine.settings import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_VIDEO_FRAMES,
    DEFAULT_MAX_VIDEO_SECONDS,
)

if TYPE_CHECKING:
    from engine.settings import EngineSettings

Kind = Literal["image", "video"]

# Pillow's plugin classes parse the header in their constructor and decode only on load(),
# which nothing here calls. They are used directly rather than through Image.open(): that
# refuses anything over 2x Image.MAX_IMAGE_PIXELS before the size can be read (the refusal
# could not say how large the image is), and the engine's own limit applies instead.
_IMAGE_PARSERS: dict[str, type[ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "gif": GifImagePlugin.GifImageFile,
}
SUFFIXES = {
    "png": ".png",
    "jpeg": ".jpg",
    "webp": ".webp",
    "bmp": ".bmp",
    "tiff": ".tiff",
    "gif": ".gif",
    "avi": ".avi",
    "mp4": ".mp4",
    "mov": ".mov",
    "m4v": ".m4v",
    "mkv": ".mkv",
    "webm": ".webm",
}
# The result is one still image: a GIF's 256 colours would degrade it, PNG keeps it lossless.
# WebM has no writer here (VP8/VP9); MP4 (mp4v) is the most widely playable one there is.
_OUTPUT_INSTEAD = {".gif": ".png", ".webm": ".mp4"}
_HEADER_BYTES = 64
# ISO base media files that hold still images (HEIF, AVIF), not videos.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})


@dataclass(frozen=True, slots=True)
class MediaInfo:
    kind: Kind
    format: str  # a key of SUFFIXES
    width: int
    height: int
    frames: int = 1  # videos: as the container declares it
    fps: float | None = None
    duration_s: float | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def suffix(self) -> str:
        """The canonical file suffix of this format (the engine dispatches on suffixes)."""
        return SUFFIXES[self.format]

    @property
    def output_suffix(self) -> str:
        return output_suffix(self.suffix)


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """What one input may declare (FFENGINE_MAX_PIXELS, _MAX_VIDEO_FRAMES, _MAX_VIDEO_SECONDS)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> MediaLimits:
        return cls(
            max_pixels=settings.max_pixels,
            max_video_frames=settings.max_video_frames,
            max_video_seconds=settings.max_video_seconds,
        )


def output_suffix(suffix: str) -> str:
    """The suffix of a result for an input with this canonical suffix: the same format where
    the engine can write it."""
    return _OUTPUT_INSTEAD.get(suffix, suffix)


def probe(path: Path) -> MediaInfo:
    """The format, size and (videos) length of `path`, from its header: no pixel is decoded."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEADER_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path.name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path.name}: cannot be read ({exc.strerror})") from None
    image = _image_format(head)
    if image is not None:
        return _probe_image(path, image)
    video = _video_format(head)
    if video is not None:
        return _probe_video(path, video)
    raise InputError(
        f"{path.name}: not a supported image or video (images: {', '.join(_IMAGE_PARSERS)}; "
        "videos: avi, mp4, mov, m4v, mkv, webm)"
    )


def check_limits(info: MediaInfo, limits: MediaLimits) -> None:
    """Refuses an input whose header declares more than the limits allow."""
    what = "image" if info.kind == "image" else "video frame"
    if info.pixels > limits.max_pixels:
        raise InputError(
            f"{what} is {info.width}x{info.height} ({_mp(info.pixels)} MP), over the "
            f"{_mp(limits.max_pixels)} MP limit (FFENGINE_MAX_PIXELS)"
        )
    if info.kind == "image":
        return
    if info.frames > limits.max_video_frames:
        raise InputError(
            f"video has {info.frames} frames, over the {limits.max_video_frames} frame limit "
            "(FFENGINE_MAX_VIDEO_FRAMES)"
        )
    if info.duration_s is not None and info.duration_s > limits.max_video_seconds:
        raise InputError(
            f"video lasts {info.duration_s:.1f} s, over the {limits.max_video_seconds:g} s "
            "limit (FFENGINE_MAX_VIDEO_SECONDS)"
        )


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}"


def _image_format(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _video_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        if brand == b"qt  ":
            return "mov"
        return "m4v" if brand.startswith(b"M4V") else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide"):  # QuickTime files older than `ftyp`
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: the DocType says which of the two
        return "webm" if b"\x42\x82\x84webm" in head else "mkv"
    return None


def _probe_image(path: Path, fmt: str) -> MediaInfo:
    try:
        with path.open("rb") as handle:
            width, height = _IMAGE_PARSERS[fmt](handle).size
    except Image.DecompressionBombError:
        # Only WebP's parser checks Pillow's limit itself (its decoder allocates the canvas
        # when created): refused here without a size, that limit is over 170 MP anyway.
        raise InputError(
            f"{path.name}: a {fmt} image declaring more than "
            f"{_mp(2 * (Image.MAX_IMAGE_PIXELS or 0))} MP"
        ) from None
    except Exception as exc:  # Pillow raises SyntaxError, OSError, struct.error, ...
        raise InputError(f"{path.name}: not a readable {fmt} image ({exc})") from None
    if width <= 0 or height <= 0:
        raise InputError(f"{path.name}: a {fmt} image without a size")
    return MediaInfo(kind="image", format=fmt, width=width, height=height)


def _probe_video(path: Path, fmt: str) -> MediaInfo:
    # FFmpeg explicitly: CAP_ANY would let the image-sequence backend open (decode) files.
    # Opening reads the container's header and stream parameters; frames are decoded only by
    # read(), which is never called here.
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise InputError(f"{path.name}: not a readable {fmt} video")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    if width <= 0 or height <= 0:
        raise InputError(f"{path.name}: a {fmt} video without a frame size")
    if frames <= 0:
        # Without a declared length the frame and duration limits could not be checked.
        raise InputError(f"{path.name}: a {fmt} video that does not declare its length")
    rate = fps if math.isfinite(fps) and fps > 0 else None
    return MediaInfo(
        kind="video",
        format=fmt,
        width=width,
        height=height,
        frames=frames,
        fps=rate,
        duration_s=frames / rate if rate else None,
    )
