"""Detected faces, detectors, and which faces a job acts on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from engine.errors import UsageError
from engine.pipeline.media import Image

Vector = NDArray[np.float32]


@dataclass(slots=True)
class Face:
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    embedding: Vector | None = None  # L2-normed ArcFace embedding, when a model made one
    native: Any = field(default=None, repr=False)  # insightface's Face, for the swapper
    # Five points in insightface's order (left eye, right eye, nose, mouth left, mouth right),
    # shape (5, 2): what norm_crop aligns on.
    landmarks: NDArray[np.float32] | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class Detector(Protocol):
    name: str
    needs_review: bool  # its misses are known: a person must check the output

    def detect(self, image: Image) -> list[Face]: ...


class HaarDetector:
    """OpenCV's bundled Haar cascade: the last resort, when neither a model pack nor the
    bundled CenterFace weights are installed.

    It misses faces (it finds 3 of the 6 in insightface's t1.jpg, and boxes a hand), so every
    result made with it is marked for human review and the detector is named in the records.
    """

    name = "opencv-haar-frontalface"
    needs_review = True

    def __init__(self) -> None:
        data = getattr(cv2, "data", None)
        if data is None:
            raise UsageError("this OpenCV build ships no Haar cascades (opencv-python < 5 does)")
        path = Path(data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise UsageError(f"cannot load the Haar cascade at {path}")

    def detect(self, image: Image) -> list[Face]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30)
        )
        return [
            Face((float(x), float(y), float(x + w), float(y + h)), score=1.0)
            for x, y, w, h in (found if len(found) else [])
        ]


Selector = Literal["many", "one", "reference"]


def select_faces(
    faces: list[Face],
    selector: Selector,
    reference: Vector | None = None,
    max_distance: float = 1.0,
) -> list[tuple[int, Face]]:
    """The faces a job acts on, with their index in detection order.

    many: all; one: the largest; reference: those whose embedding is within max_distance
    (cosine distance) of the reference identity.
    """
    indexed = list(enumerate(faces))
    if selector == "many":
        return indexed
    if selector == "one":
        return [max(indexed, key=lambda item: item[1].area)] if indexed else []
    if reference is None:
        raise UsageError("selector 'reference' needs a reference face")
    chosen = []
    for index, face in indexed:
        if (
            face.embedding is not None
            and cosine_distance(face.embedding, reference) <= max_distance
        ):
            chosen.append((index, face))
    return chosen


def cosine_distance(a: Vector, b: Vector) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
    return 1.0 - float(np.dot(a, b)) / denominator
