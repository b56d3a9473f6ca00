"""Optional face restoration after the swap (GFPGAN / CodeFormer class of models).

Such models take a square face crop (1x3xSxS, RGB, values in [-1, 1]) and return the
restored crop of the same size. inswapper works at 128x128, so its faces are soft; the
enhancer restores detail on the swapped region only, pasted back with a feathered edge so
no seam shows.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.errors import ModelError
from engine.pipeline.faces import Face
from engine.pipeline.media import Image

_MARGIN = 0.2


class Enhancer:
    def __init__(self, model_path: Path, providers: list[str]) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(str(model_path), providers=providers)
        self.providers: list[str] = list(self._session.get_providers())
        inputs = self._session.get_inputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4 or not isinstance(shape[2], int):
            raise ModelError(f"{model_path.name}: not a 1x3xSxS face restoration model")
        self._input = inputs[0].name
        self._size = int(shape[2])

    def enhance(self, image: Image, face: Face) -> Image:
        height, width = image.shape[:2]
        x1, y1, x2, y2 = face.bbox
        side = max(x2 - x1, y2 - y1) * (1 + 2 * _MARGIN)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        right, bottom = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
        if right - left < 8 or bottom - top < 8:
            return image
        crop = image[top:bottom, left:right]
        blob = cv2.resize(crop, (self._size, self._size), interpolation=cv2.INTER_LINEAR)
        blob = cv2.cvtColor(blob, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        output = self._session.run(None, {self._input: blob.transpose(2, 0, 1)[None]})[0][0]
        restored = ((np.clip(output.transpose(1, 2, 0), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        restored = cv2.cvtColor(restored, cv2.COLOR_RGB2BGR)
        restored = cv2.resize(
            restored, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR
        )
        # Feathered mask: full weight in the middle, fading to nothing at the crop's edge.
        mask = np.zeros((bottom - top, right - left), dtype=np.float32)
        inset = max(1, int(min(mask.shape) * 0.1))
        mask[inset:-inset, inset:-inset] = 1.0
        blur = max(3, (inset * 2) | 1)
        weight = np.asarray(cv2.GaussianBlur(mask, (blur, blur), 0), dtype=np.float32)[..., None]
        out = image.copy()
        out[top:bottom, left:right] = (weight * restored + (1 - weight) * crop).astype(np.uint8)
        return out
