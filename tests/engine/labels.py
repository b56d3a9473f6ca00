"""Hand-labelled faces (tests/engine/data/faces.json) and how detections are scored on them."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

Box = tuple[float, float, float, float]
LABELS = Path(__file__).parent / "data" / "faces.json"
MARGIN = 0.15  # engine.pipeline.anonymize pads each box by this much before blurring


@dataclass(frozen=True)
class Labelled:
    name: str
    path: Path
    faces: tuple[Box, ...]

    def scaled(self, factor: float) -> tuple[Box, ...]:
        return tuple((a * factor, b * factor, c * factor, d * factor) for a, b, c, d in self.faces)


def labelled_images() -> dict[str, Labelled]:
    """The labelled images that this machine has: Python packages always (the engine extra
    installs them), npm samples only where FFAUDIT_NPM_SAMPLES points at them."""
    doc = json.loads(LABELS.read_text(encoding="utf-8"))
    npm = os.environ.get("FFAUDIT_NPM_SAMPLES")
    images = {}
    for item in doc["images"]:
        if item["package"].startswith("npm:"):
            if npm and (Path(npm) / item["path"]).is_file():
                path = Path(npm) / item["path"]
                images[path.name] = Labelled(path.name, path, _boxes(item["faces"]))
            continue
        spec = importlib.util.find_spec(item["package"])
        assert spec is not None, item["package"]
        assert spec.origin is not None, item["package"]
        path = Path(spec.origin).parent / item["path"]
        images[path.name] = Labelled(path.name, path, _boxes(item["faces"]))
    return images


def _boxes(faces: list[list[int]]) -> tuple[Box, ...]:
    return tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in faces)


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def match(found: list[Box], labels: tuple[Box, ...], threshold: float = 0.5) -> dict[int, int]:
    """Label index -> detection index, greedily by IoU, each used once, IoU >= threshold."""
    pairs = sorted(
        ((iou(f, lab), li, fi) for fi, f in enumerate(found) for li, lab in enumerate(labels)),
        reverse=True,
    )
    matched: dict[int, int] = {}
    used: set[int] = set()
    for score, li, fi in pairs:
        if score < threshold or li in matched or fi in used:
            continue
        matched[li] = fi
        used.add(fi)
    return matched


def covered(label: Box, box: Box, margin: float = MARGIN) -> float:
    """The share of the labelled face that the anonymize job's padded region covers."""
    mx, my = (box[2] - box[0]) * margin, (box[3] - box[1]) * margin
    region = (box[0] - mx, box[1] - my, box[2] + mx, box[3] + my)
    width = min(label[2], region[2]) - max(label[0], region[0])
    height = min(label[3], region[3]) - max(label[1], region[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / ((label[2] - label[0]) * (label[3] - label[1]))


def score(found: list[Box], labels: tuple[Box, ...]) -> tuple[int, int]:
    """(faces hidden, false boxes): a face is hidden when one padded box covers >= 80% of it;
    a box is false when it overlaps no labelled face (IoU < 0.1 with every one)."""
    hidden = sum(any(covered(lab, f) >= 0.8 for f in found) for lab in labels)
    false = sum(all(iou(f, lab) < 0.1 for lab in labels) for f in found)
    return hidden, false
