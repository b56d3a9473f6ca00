"""The face pipeline of one engine process: verified models, chosen providers, detectors.

Models come only from the local model directory, or from a registry package that ships them
(CenterFace), and are verified (SHA-256, ONNX signature, licence) before any inference session
exists; every load or refusal is an audit event naming the providers really used. Without a
pack's SCRFD, faces come from CenterFace; OpenCV's Haar cascade (marked for review) is the last
resort when those weights are not installed. Swap jobs need a pack.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from audit.integrity.events import EventAction, Outcome
from audit.integrity.seal import AuditEvent
from engine.errors import FFEngineError, ModelError
from engine.models.manifest import ModelPack, VerifiedModel
from engine.pipeline import centerface
from engine.pipeline.enhance import Enhancer
from engine.pipeline.faces import Detector, Face, HaarDetector
from engine.pipeline.identity import IdentityCache
from engine.pipeline.media import Image
from engine.pipeline.providers import check_gpu_install, choose_providers
from engine.pipeline.swap import Swapper
from engine.settings import EngineSettings

Emit = Callable[[AuditEvent], None]
SYSTEM_ACTOR = "system:ffengine"
T = TypeVar("T")


def _session_providers(*sessions: Any) -> list[str]:
    """The providers onnxruntime sessions really run on, in order, without repeats."""
    found: list[str] = []
    for session in sessions:
        for provider in session.get_providers():
            if provider not in found:
                found.append(provider)
    return found


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
        self.providers = _session_providers(*(m.session for m in self._app.models.values()))

    def detect(self, image: Image) -> list[Face]:
        faces = []
        for native in self._app.get(image):
            x1, y1, x2, y2 = (float(v) for v in native.bbox[:4])
            embedding = getattr(native, "normed_embedding", None)
            kps = getattr(native, "kps", None)
            faces.append(
                Face(
                    (x1, y1, x2, y2),
                    float(native.det_score),
                    None if embedding is None else np.asarray(embedding, dtype=np.float32),
                    native,
                    None if kps is None else np.asarray(kps, dtype=np.float32),
                )
            )
        return faces


class EmbeddingDetector:
    """Another detector's faces (CenterFace's boxes and five landmarks) embedded by a pack's
    ArcFace model, as insightface Face objects: a pack without SCRFD can still swap."""

    needs_review = False

    def __init__(self, detector: Detector, recognition: Path, providers: list[str]) -> None:
        from insightface.model_zoo import get_model

        # A path, never a name: get_model would download a name it cannot find locally.
        model = get_model(str(recognition), providers=providers)
        if model is None or getattr(model, "taskname", None) != "recognition":
            raise ModelError(f"{recognition.name} is not an ArcFace recognition model")
        model.prepare(ctx_id=-1)
        self._detector = detector
        self._model = model
        self.name = f"{detector.name}+arcface"
        self.providers = _session_providers(model.session)
        for provider in getattr(detector, "providers", []):
            if provider not in self.providers:
                self.providers.append(provider)

    def detect(self, image: Image) -> list[Face]:
        from insightface.app.common import Face as NativeFace

        faces = []
        for face in self._detector.detect(image):
            if face.landmarks is None:
                continue  # nothing to align on: cannot be embedded (and cannot be swapped)
            native = NativeFace(
                bbox=np.asarray(face.bbox, np.float32), kps=face.landmarks, det_score=face.score
            )
            self._model.get(image, native)
            embedding = np.asarray(native.normed_embedding, dtype=np.float32)
            faces.append(Face(face.bbox, face.score, embedding, native, face.landmarks))
        return faces


class FacePipeline:
    def __init__(self, settings: EngineSettings, emit: Emit) -> None:
        self.settings = settings
        self.gpu_problems = check_gpu_install(settings.providers)
        self._requested = choose_providers(settings.providers)
        self.identities = IdentityCache()
        self.models: dict[str, dict[str, Any]] = {}  # role -> {name, sha256, licence}
        self._emit = emit
        self._swapper: Swapper | None = None
        self._enhancer: Enhancer | None = None
        self._enhancer_checked = False
        self._pack: ModelPack | None = None
        if settings.model_dir is not None:
            self._pack = ModelPack.load(settings.model_dir)
        self.detector: Detector = self._detector()

    @property
    def providers(self) -> list[str]:
        """The execution providers the loaded models really run on ([] with Haar alone)."""
        return list(getattr(self.detector, "providers", []))

    def _detector(self) -> Detector:
        """SCRFD from the pack; else CenterFace (with the pack's ArcFace, when it has one);
        else, only when the bundled weights are not installed at all, the Haar cascade."""
        pack = self._pack
        if pack is not None and any(m.role == "detector" for m in pack.models):
            detector = self._verified(pack, "detector")
            assert detector is not None  # required=True raises instead of returning None
            verified = {detector.path.resolve()}
            recognition = self._verified(pack, "recognition", required=False)
            if recognition is not None:
                verified.add(recognition.path.resolve())
            assert self.settings.model_dir is not None
            scrfd = InsightFaceDetector(
                self.settings.model_dir,
                verified,
                self._requested,
                self.settings.det_size,
                self.settings.work_dir / "insightface",
            )
            self._loaded("detector", detector, scrfd.providers)
            if recognition is not None:
                self._loaded("recognition", recognition, scrfd.providers)
            return scrfd
        builtin = centerface.builtin_pack()
        if builtin is None:
            return HaarDetector()
        model = self._verified(builtin, "detector")
        assert model is not None
        model = centerface.with_package_licence(model)
        found: Detector = centerface.CenterFaceDetector(
            model.path,
            self._requested,
            threshold=self.settings.detect_threshold,
            max_side=self.settings.detect_max_side,
        )
        self._loaded("detector", model, list(getattr(found, "providers", [])))
        recognition = self._verified(pack, "recognition", required=False) if pack else None
        if recognition is not None:
            found = EmbeddingDetector(found, recognition.path, self._requested)
            self._loaded("recognition", recognition, list(getattr(found, "providers", [])))
        return found

    def swapper(self) -> Swapper:
        if self._pack is None:
            raise ModelError(
                "swap jobs need a model pack (FFENGINE_MODEL_DIR / --model-dir); "
                "none is installed, and models are never downloaded"
            )
        if self._swapper is None:
            self._swapper = self._load(self._pack, "swapper", Swapper)
        return self._swapper

    def enhancer(self) -> Enhancer | None:
        """The face restoration step, when the pack configures one (role "enhancer")."""
        if self._pack is None:
            return None
        if not self._enhancer_checked:
            self._enhancer_checked = True
            if any(m.role == "enhancer" for m in self._pack.models):
                self._enhancer = self._load(self._pack, "enhancer", Enhancer)
        return self._enhancer

    def _load(self, pack: ModelPack, role: str, make: Callable[[Path, list[str]], T]) -> T:
        model = self._verified(pack, role)
        assert model is not None
        made = make(model.path, self._requested)
        self._loaded(role, model, list(getattr(made, "providers", [])))
        return made

    def _verified(
        self, pack: ModelPack, role: str, *, required: bool = True
    ) -> VerifiedModel | None:
        if not required and not any(m.role == role for m in pack.models):
            return None
        try:
            return pack.verify(role)
        except ModelError as exc:
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

    def _loaded(self, role: str, model: VerifiedModel, providers: list[str]) -> None:
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
                metadata={"role": role, "providers": providers, **info},
            )
        )

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
