"""Tiny ONNX stand-ins for the buffalo_l detector/recogniser and inswapper_128.

They carry the real models' signatures, so insightface's own code (model_zoo routing, SCRFD
decoding, ArcFace alignment, INSwapper paste-back) loads and runs them unchanged, but they
are a few hundred kilobytes and need no download. Outputs are fixed or cheap functions of
the input: they exercise plumbing, not face recognition.

Coordinates. `make_scrfd` plants boxes in the detector's input frame (`input_size`, default
640x640). insightface's SCRFD letterboxes an image into that frame: it scales by
`det_scale = new_height / image_height` (the image keeps its aspect ratio, padded right or
below) and divides decoded boxes by `det_scale`. So an image box is the planted box divided
by `det_scale` (`detector_to_image`). For t1.jpg (1280x886) at 640x640: new size 640x443,
det_scale = 443/886 = 0.5, image box = planted box * 2. `T1_FACES` plants the six faces of
t1.jpg at their approximate real positions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cryptography.hazmat.primitives import hashes
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

Box = tuple[float, float, float, float]

# opset 17 / IR 8: well inside what onnxruntime 1.31 accepts, and what insightface's own
# exports use or newer.
OPSET = 17
IR_VERSION = 8
STRIDES = (8, 16, 32)
ANCHORS = 2  # SCRFD with 9 outputs: 2 anchors per cell
FACE_SCORE = 0.95
BACKGROUND_SCORE = 0.01

# Six faces of insightface's t1.jpg, in the 640x640 detector frame (image pixels / 2).
T1_FACES: tuple[Box, ...] = (
    (32.0, 135.0, 80.0, 195.0),
    (135.0, 70.0, 182.0, 132.0),
    (230.0, 135.0, 280.0, 200.0),
    (372.0, 162.0, 428.0, 228.0),
    (452.0, 25.0, 505.0, 95.0),
    (562.0, 135.0, 612.0, 200.0),
)

# insightface's ArcFace alignment template (face_align.arcface_dst) as fractions of a
# 112x112 crop: eyes, nose, mouth corners. Landmarks placed like this align sensibly.
_KPS_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
) / np.float32(112.0)

PACK_FILES = {
    "detector": "det_10g.onnx",
    "recognition": "w600k_r50.onnx",
    # In a subdirectory: FaceAnalysis loads every top-level *.onnx of the pack directory and
    # INSwapper has no `taskname`, so a top-level swapper would break FaceAnalysis on it.
    "swapper": "swapper/inswapper_128.onnx",
}


def detector_to_image(box: Box, image_shape: tuple[int, ...], input_size: tuple[int, int]) -> Box:
    """Map a planted detector-frame box to image pixels, as insightface's SCRFD does."""
    height, width = image_shape[0], image_shape[1]
    det_w, det_h = input_size
    # Like SCRFD: fill the frame's height if the image is relatively taller, else its width.
    new_height = det_h if height / width > det_h / det_w else int(det_w * (height / width))
    scale = new_height / height
    x1, y1, x2, y2 = box
    return (x1 / scale, y1 / scale, x2 / scale, y2 / scale)


def face_landmarks(box: Box) -> NDArray[np.float32]:
    """The five landmarks planted inside `box` (detector frame), shape (5, 2)."""
    x1, y1, x2, y2 = box
    scale = np.array([x2 - x1, y2 - y1], dtype=np.float32)
    return np.array([x1, y1], dtype=np.float32) + _KPS_TEMPLATE * scale


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ffengine-tests",
    )


def _plant(
    faces: Sequence[Box], input_size: tuple[int, int]
) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]], list[NDArray[np.float32]]]:
    width, height = input_size
    scores, bboxes, kpss = [], [], []
    for stride in STRIDES:
        count = (height // stride) * (width // stride) * ANCHORS
        scores.append(np.full((count, 1), BACKGROUND_SCORE, dtype=np.float32))
        bboxes.append(np.ones((count, 4), dtype=np.float32))
        kpss.append(np.zeros((count, 10), dtype=np.float32))
    taken: set[tuple[int, int]] = set()
    for box in faces:
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise ValueError(f"face {box} is not inside the {width}x{height} detector frame")
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for level, stride in enumerate(STRIDES):
            cols = width // stride
            col = min(round(cx / stride), cols - 1)
            row = min(round(cy / stride), height // stride - 1)
            free = [
                a for a in range(ANCHORS) if (level, (row * cols + col) * ANCHORS + a) not in taken
            ]
            if free:
                index = (row * cols + col) * ANCHORS + free[0]
                break
        else:
            raise ValueError(f"face {box} has no free anchor left: faces too close together")
        taken.add((level, index))
        # SCRFD decodes distances (left, top, right, bottom) and landmark offsets from the
        # anchor centre, in units of the stride.
        ax, ay = float(col * stride), float(row * stride)
        scores[level][index, 0] = FACE_SCORE
        bboxes[level][index] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / stride
        kpss[level][index] = ((face_landmarks(box) - [ax, ay]) / stride).reshape(-1)
    return scores, bboxes, kpss


def make_scrfd(path: Path, faces: Sequence[Box], input_size: tuple[int, int] = (640, 640)) -> Path:
    """SCRFD-style detector (9 unbatched outputs, kps variant) that always finds `faces`.

    The input is fixed at 1x3xHxW so SCRFD never builds per-resolution sessions; outputs are
    constants plus 0 * mean(input), so the graph still consumes its input.
    """
    width, height = input_size
    scores, bboxes, kpss = _plant(faces, input_size)
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("Mul", ["pooled", "zero"], ["nudge"], name="nudge"),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")]
    outputs = []
    for kind, arrays in (("score", scores), ("bbox", bboxes), ("kps", kpss)):
        for stride, array in zip(STRIDES, arrays, strict=True):
            name = f"{kind}_{stride}"
            initializers.append(numpy_helper.from_array(array, f"{name}_const"))
            nodes.append(helper.make_node("Add", [f"{name}_const", "nudge"], [name], name=name))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, array.shape))
    graph = helper.make_graph(
        nodes,
        "scrfd_stub",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, height, width])],
        outputs,
        initializer=initializers,
    )
    return _save(_model(graph), path)


def make_arcface(path: Path, seed: int = 112) -> Path:
    """ArcFace-style recogniser: Nx3x112x112 -> Nx512, a fixed projection of 8x8 pooling."""
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((3 * 14 * 14, 512)).astype(np.float32)
    # Node names avoid "Sub"/"Mul" prefixes: ArcFaceONNX reads those as an mxnet export and
    # would then skip its (x - 127.5) / 127.5 normalisation.
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "projection"], ["683"], name="project"),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_stub",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(projection, "projection")],
    )
    return _save(_model(graph), path)


def make_inswapper(path: Path, seed: int = 128) -> Path:
    """INSwapper-style swapper: target 1x3x128x128 + source 1x512 -> 1x3x128x128.

    The result is 25% target, 75% a saturated colour derived from the source latent, so a
    swap changes pixels well beyond INSwapper's paste-back threshold. The 512x512 `emap`
    is the last initializer, where INSwapper reads it.
    """
    rng = np.random.default_rng(seed)
    emap = (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
    to_colour = rng.standard_normal((512, 3)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(to_colour, "to_colour"),
        numpy_helper.from_array(np.array(8.0, dtype=np.float32), "gain"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], dtype=np.int64), "colour_shape"),
        numpy_helper.from_array(np.array(0.25, dtype=np.float32), "keep"),
        numpy_helper.from_array(np.array(0.75, dtype=np.float32), "paint"),
        numpy_helper.from_array(emap, "emap"),
    ]
    nodes = [
        helper.make_node("MatMul", ["source", "emap"], ["mixed"]),
        helper.make_node("MatMul", ["mixed", "to_colour"], ["logits"]),
        helper.make_node("Mul", ["logits", "gain"], ["sharp"]),
        helper.make_node("Sigmoid", ["sharp"], ["colour"]),
        helper.make_node("Reshape", ["colour", "colour_shape"], ["colour_map"]),
        helper.make_node("Mul", ["target", "keep"], ["kept"]),
        helper.make_node("Mul", ["colour_map", "paint"], ["painted"]),
        helper.make_node("Add", ["kept", "painted"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "inswapper_stub",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=initializers,
    )
    return _save(_model(graph), path)


def sha256_hex(path: Path) -> str:
    digest = hashes.Hash(hashes.SHA256())
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.finalize().hex()


def _tensor(name: str, shape: Sequence[int | str | None]) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": "float32"}


def make_model_pack(
    directory: Path,
    faces: Sequence[Box] = T1_FACES,
    input_size: tuple[int, int] = (640, 640),
) -> Path:
    """A complete pack (detector, recogniser, swapper) with its manifest.json; returns it.

    The manifest is written here independently of engine.models so that tests check the
    engine's signature reading against a hand-written expectation.
    """
    directory.mkdir(parents=True, exist_ok=True)
    width, height = input_size
    det = make_scrfd(directory / PACK_FILES["detector"], faces, input_size)
    rec = make_arcface(directory / PACK_FILES["recognition"])
    swap = make_inswapper(directory / PACK_FILES["swapper"])
    det_outputs = [
        _tensor(f"{kind}_{stride}", [(height // stride) * (width // stride) * ANCHORS, size])
        for kind, size in (("score", 1), ("bbox", 4), ("kps", 10))
        for stride in STRIDES
    ]
    entries = [
        ("det_10g", "detector", det, [_tensor("input.1", [1, 3, height, width])], det_outputs),
        (
            "w600k_r50",
            "recognition",
            rec,
            [_tensor("input.1", ["N", 3, 112, 112])],
            [_tensor("683", ["N", 512])],
        ),
        (
            "inswapper_128",
            "swapper",
            swap,
            [_tensor("target", [1, 3, 128, 128]), _tensor("source", [1, 512])],
            [_tensor("output", [1, 3, 128, 128])],
        ),
    ]
    manifest = {
        "format": "ffengine.model-pack.v1",
        "models": [
            {
                "name": name,
                "version": "test-1",
                "role": role,
                "file": path.relative_to(directory).as_posix(),
                "sha256": sha256_hex(path),
                "licence": "non-commercial",
                "inputs": inputs,
                "outputs": outputs,
            }
            for name, role, path, inputs, outputs in entries
        ],
    }
    (directory / "manifest.json").write_text(
        json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
    )
    return directory


_PACKS: dict[tuple[tuple[Box, ...], tuple[int, int]], Path] = {}


def cached_model_pack(
    root: Path, faces: Sequence[Box] = T1_FACES, input_size: tuple[int, int] = (640, 640)
) -> Path:
    """One pack per (faces, input size) per process, written under the first caller's root.

    Callers share the returned directory: copy it before tampering with anything in it.
    """
    key = (tuple(faces), input_size)
    pack = _PACKS.get(key)
    if pack is None or not (pack / "manifest.json").is_file():
        pack = make_model_pack(root / f"pack-{len(_PACKS)}", faces, input_size)
        _PACKS[key] = pack
    return pack
