"""Blur or pixelate every detected face: the privacy job."""

from __future__ import annotations

from typing import Literal

import cv2

from engine.pipeline.faces import Face
from engine.pipeline.media import Image

Method = Literal["blur", "mosaic"]
_MARGIN = 0.15  # detectors box the face tightly; hair and ears identify people too


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
            # Kernel proportional to the face: a fixed kernel leaves big faces recognisable.
            k = max(3, (max(right - left, bottom - top) // 3) | 1)
            region[:] = cv2.GaussianBlur(region, (k, k), 0)
    return out
