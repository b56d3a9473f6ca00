"""inswapper_128 through insightface's model zoo, with a blend ratio on paste-back."""

from __future__ import annotations

from pathlib import Path

import cv2

from engine.errors import ModelError
from engine.pipeline.faces import Face
from engine.pipeline.media import Image


class Swapper:
    def __init__(self, model_path: Path, providers: list[str]) -> None:
        from insightface.model_zoo import get_model

        # A path, never a name: get_model would download a name it cannot find locally.
        model = get_model(str(model_path), providers=providers)
        if model is None or not hasattr(model, "get"):
            raise ModelError(f"{model_path.name} is not an inswapper model")
        self._model = model
        self.providers: list[str] = list(model.session.get_providers())

    def swap(self, image: Image, target: Face, source: Face, blend: float) -> Image:
        if target.native is None or source.native is None:
            raise ModelError("swapping needs faces from the insightface detector")
        swapped: Image = self._model.get(image, target.native, source.native, paste_back=True)
        if blend >= 1.0:
            return swapped
        # Outside the pasted face both images are identical, so a global blend only
        # changes the face region.
        return cv2.addWeighted(swapped, blend, image, 1.0 - blend, 0.0)  # type: ignore[return-value]
