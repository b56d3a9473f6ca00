"""Blur or pixelate every detected face: the privacy job."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from engine.pipeline.faces import Face
from engine.pipeline.media import Image

Method = Literal["blur", "mosaic"]
_MARGIN = 0.15  # detectors box the face tightly; hair and ears identify people too
_WORK_SIDE = 64  # blur at this size and scale back: the same look at any face size, cheaply
_SIGMA = 1 / 6  # of the region's side: strong enough that no face detector finds it again


def anonymize(image: Image, faces: list[Face], method: Method = "blur") -> Image:
    out = image.copy()
    height, width = out.shape[:2]
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        mx, my = (x2 - x1) * _MARGIN, (y2 - y1) * _MARGIN
        left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
        right, bottom = min(width, int(x2 + mx)), min(height, int(y2 + my))
        if right - left < 2 or bottom - top < 2:
            continue
        region = out[top:bottom, left:right]
        if method == "mosaic":
            cells = 8
            small = cv2.resize(region, (cells, cells), interpolation=cv2.INTER_AREA)
            region[:] = cv2.resize(
                small, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST
            )
        else:
            region[:] = _blur(region)
    return out


def _blur(region: Image) -> Image:
    """A Gaussian blur whose sigma is a sixth of the region's side. A kernel proportional to
    the face but with OpenCV's default sigma (a ninth of it) left faces that CenterFace still
    found at 0.87; at a sixth none is found. Done on a 64 px copy: a 1000 px face would
    otherwise need a 1000-tap kernel."""
    height, width = region.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(height, width))
    small = cv2.resize(
        region,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )
    small = cv2.GaussianBlur(small, (0, 0), max(small.shape[:2]) * _SIGMA)
    return np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR), np.uint8)
