"""Local model packs: manifest, verification (hash, ONNX signature, licence), never downloads."""

from engine.models.manifest import (
    FORMAT,
    MANIFEST_NAME,
    ROLES,
    ModelCheckError,
    ModelPack,
    ModelProblem,
    ModelSpec,
    Role,
    TensorSpec,
    VerifiedModel,
    infer_role,
    manifest_document,
    read_signature,
    sha256_file,
)

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "ROLES",
    "ModelCheckError",
    "ModelPack",
    "ModelProblem",
    "ModelSpec",
    "Role",
    "TensorSpec",
    "VerifiedModel",
    "infer_role",
    "manifest_document",
    "read_signature",
    "sha256_file",
]
