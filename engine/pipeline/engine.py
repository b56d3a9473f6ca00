"""The face pipeline of one engine process: verified models, chosen providers, detectors.

Models come only from the local model directory and are verified (SHA-256, ONNX signature,
licence) before any inference session exists; every load or refusal is an audit event.
Without a model pack, anonymize jobs use OpenCV's Haar cascade (marked for review) and
swap jobs are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from audit.integrity.events import EventAction, Outcome
from audit.integrity.seal import AuditEvent
from engine.errors import FFEngineError, ModelError
from engine.pipeline.enhance import Enhancer
from engine.pipeline.faces import Detector, Face, HaarDetector
from engine.pipeline.identity import IdentityCache
from engine.pipeline.media import Image
from engine.pipeline.swap import Swapper
from engine.settings import EngineSettings

Emit = Callable[[AuditEvent], None]
SYSTEM_ACTOR = "system:ffengine"


def choose_providers(preferred: list[str]) -> list[str]:
    """The configured execution providers that this onnxruntime build really has, in order;
    CPU always last as the fallback."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    chosen = [p for p in preferred if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


class InsightFaceDetector:
    """SCRFD detection and ArcFace embeddings through insightface's FaceAnalysis."""

    needs_review = False

    def __init__(
        self, pack_dir: Path, verified: set[Path], providers: list[str], det_size: int, root: Path
    ) -> None:
        from insightface.app import FaceAnalysis

        # FaceAnalysis loads every top-level .onnx of the directory: each must be one the
        # manifest covers and that was just verified, or an unchecked model would run.
        unverified = sorted(p.name for p in pack_dir.glob("*.onnx") if p.resolve() not in verified)
        if unverified:
            raise ModelError(
                f"the model directory holds ONNX files outside the verified manifest: "
                f"{', '.join(unverified)}"
            )
        # `name` an existing directory: insightface uses it as is and downloads nothing.
        self._app = FaceAnalysis(
            name=str(pack_dir),
            root=str(root),
            allowed_modules=["detection", "recognition"],
            providers=providers,
        )
        ctx = 0 if "CUDAExecutionProvider" in providers else -1
        self._app.prepare(ctx_id=ctx, det_size=(det_size, det_size))
        self.name = "insightface:" + "+".join(sorted(self._app.models))

    def detect(self, image: Image) -> list[Face]:
        faces = []
        for native in self._app.get(image):
            x1, y1, x2, y2 = (float(v) for v in native.bbox[:4])
            embedding = getattr(native, "normed_embedding", None)
            faces.append(
                Face(
                    (x1, y1, x2, y2),
                    float(native.det_score),
                    None if embedding is None else np.asarray(embedding, dtype=np.float32),
                    native,
                )
            )
        return faces


class FacePipeline:
    def __init__(self, settings: EngineSettings, emit: Emit) -> None:
        self.settings = settings
        self.providers = choose_providers(settings.providers)
        self.identities = IdentityCache()
        self.models: dict[str, dict[str, Any]] = {}  # role -> {name, sha256, licence}
        self._emit = emit
        self._swapper: Swapper | None = None
        self._enhancer: Enhancer | None = None
        self._enhancer_checked = False
        self._pack = None
        if settings.model_dir is not None:
            from engine.models.manifest import ModelPack

            self._pack = ModelPack.load(settings.model_dir)
            detector = self._verified("detector")
            assert detector is not None  # required=True raises instead of returning None
            verified = {detector.resolve()}
            recognition = self._verified("recognition", required=False)
            if recognition is not None:
                verified.add(recognition.resolve())
            self.detector: Detector = InsightFaceDetector(
                settings.model_dir,
                verified,
                self.providers,
                settings.det_size,
                settings.work_dir / "insightface",
            )
        else:
            self.detector = HaarDetector()

    def swapper(self) -> Swapper:
        if self._pack is None:
            raise ModelError(
                "swap jobs need a model pack (FFENGINE_MODEL_DIR / --model-dir); "
                "none is installed, and models are never downloaded"
            )
        if self._swapper is None:
            path = self._verified("swapper")
            assert path is not None
            self._swapper = Swapper(path, self.providers)
        return self._swapper

    def enhancer(self) -> Enhancer | None:
        """The face restoration step, when the pack configures one (role "enhancer")."""
        if self._pack is None:
            return None
        if not self._enhancer_checked:
            self._enhancer_checked = True
            path = self._verified("enhancer", required=False)
            if path is not None:
                self._enhancer = Enhancer(path, self.providers)
        return self._enhancer

    def _verified(self, role: str, *, required: bool = True) -> Path | None:
        assert self._pack is not None
        try:
            model = self._pack.verify(role)
        except ModelError as exc:
            if not required and "no model" in exc.message:
                return None
            self._emit(
                AuditEvent(
                    action=EventAction.MODEL_REJECTED,
                    outcome=Outcome.FAILURE,
                    actor=SYSTEM_ACTOR,
                    error_type="ModelError",
                    error_message=exc.message,
                    metadata={"role": role},
                )
            )
            raise
        info = {
            "name": model.spec.name,
            "version": model.spec.version,
            "sha256": model.spec.sha256,
            "licence": model.licence_status,
        }
        self.models[role] = info
        self._emit(
            AuditEvent(
                action=EventAction.MODEL_LOADED,
                outcome=Outcome.SUCCESS,
                actor=SYSTEM_ACTOR,
                metadata={"role": role, "providers": self.providers, **info},
            )
        )
        path: Path = model.path
        return path

    def embed_source(self, image: Image, source_sha256: str) -> tuple[Face, bool]:
        """The source identity's face (largest), from the cache when seen before."""
        cached = self.identities.get(source_sha256, 0)
        if cached is not None:
            return cached, True
        faces = self.detector.detect(image)
        if not faces:
            raise NoFaceError("no face found in the source image")
        face = max(faces, key=lambda f: f.area)
        if face.embedding is None:
            raise ModelError("the model pack has no recognition model to embed the source")
        self.identities.put(source_sha256, 0, face)
        return face, False


class NoFaceError(FFEngineError):
    exit_code = 4
    http_status = 422
