"""Local model packs: the manifest, and the checks that run before any inference session.

A pack is a directory holding ONNX files and `manifest.json`:

    {"format": "ffengine.model-pack.v1",
     "package": {"name": "buffalo_l"},            # optional: the id a signed licence names
     "models": [{"name": "det_10g", "version": "1", "role": "detector",
                 "file": "det_10g.onnx", "sha256": "<64 hex>", "licence": "non-commercial",
                 "inputs": [{"name": "input.1", "shape": [1, 3, "?", "?"], "dtype": "float32"}],
                 "outputs": [...]}]}

`ModelPack.verify` checks, in this order and before anything hands the file to onnxruntime:
the file exists inside the pack, its SHA-256 equals the manifest's, its ONNX signature
(input/output names, shapes, dtypes) equals the manifest's, and its licence. The graph is
parsed only after the hash matched, so an unknown file never reaches a protobuf parser.
Models are never downloaded.

Licences: a `MODEL.LICENSE` next to the model file (or at the pack root) is verified with
insightface's signed-licence code (Ed25519 over RFC 8785, bundled InsightFace keys); without
one, the status is the manifest's declared value, marked "(declared)".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, get_args

from engine.errors import ModelError
from engine.hashing import sha256_file as sha256_file  # re-exported: part of the API

if TYPE_CHECKING:
    import onnx

FORMAT = "ffengine.model-pack.v1"
MANIFEST_NAME = "manifest.json"
LICENCE_FILENAME = "MODEL.LICENSE"  # insightface's model_license.LICENSE_FILENAME

Role = Literal["detector", "recognition", "swapper", "enhancer"]
ROLES: tuple[Role, ...] = get_args(Role)
Check = Literal["manifest", "file", "sha256", "signature", "licence"]
Dim = int | str | None

_MAX_MANIFEST_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_KEYS = {"name", "version", "role", "file", "sha256", "licence", "inputs", "outputs"}
_TOP_KEYS = {"format", "package", "models"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    role: Role
    file: str
    sha256: str
    licence: str  # as declared: "non-commercial", "commercial", "unknown", ...
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "role": self.role,
            "file": self.file,
            "sha256": self.sha256,
            "licence": self.licence,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


@dataclass(frozen=True)
class VerifiedModel:
    spec: ModelSpec
    path: Path
    licence_status: str
    licence_detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelProblem:
    """One failed model, for reports that list every problem (`verify_all`)."""

    name: str
    role: str
    file: str
    check: Check
    message: str


class ModelCheckError(ModelError):
    """A ModelError that says which model and which check failed."""

    def __init__(self, model: str, role: str, check: Check, message: str) -> None:
        super().__init__(f"model {model!r} ({role}): {message}")
        self.model = model
        self.role = role
        self.check = check


_Fail = Callable[[Check, str], ModelCheckError]


# -- reading files ---------------------------------------------------------------------------


def _load_graph(path: Path) -> onnx.ModelProto:
    import onnx  # deferred: `ffengine --help` should not pay for protobuf and onnx

    try:
        # External weights are irrelevant to the signature and are not hash-covered here.
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends; all mean "not ONNX"
        raise ModelError(f"{path.name} is not a readable ONNX model: {exc}") from exc


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        dtype: Any = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        return str(dtype.name)
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _tensors(values: Iterable[onnx.ValueInfoProto], skip: set[str]) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        if value.name in skip:  # IR < 4 lists initializers among the graph inputs
            continue
        tensor = value.type.tensor_type
        shape: list[Dim] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(str(dim.dim_param))
            else:
                shape.append(None)
        specs.append(TensorSpec(value.name, tuple(shape), _dtype_name(tensor.elem_type)))
    return tuple(specs)


def read_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of an ONNX file, without creating an inference session."""
    graph = _load_graph(path).graph
    initializers = {init.name for init in graph.initializer}
    return _tensors(graph.input, initializers), _tensors(graph.output, set())


def infer_role(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Role | None:
    """The role insightface's model_zoo routing would give the model, or None.

    Mirrors ModelRouter.get_model (>= 5 outputs: detector; two inputs at 128x128: swapper;
    one square input >= 112 and a multiple of 16: recognition). One addition: a square
    image-to-image model (rank-4 output of the input's size) is an enhancer, which insightface
    would misroute as ArcFace. Landmark/attribute models have no role here.
    """
    if len(outputs) >= 5:
        return "detector"
    if not inputs or len(inputs[0].shape) != 4:
        return None
    height, width = inputs[0].shape[2], inputs[0].shape[3]
    if (height, width) in ((192, 192), (96, 96)):
        return None
    if len(inputs) == 2 and (height, width) == (128, 128):
        return "swapper"
    if isinstance(height, int) and height == width and height >= 112 and height % 16 == 0:
        if len(outputs) == 1 and tuple(outputs[0].shape[2:]) == (height, width):
            return "enhancer"
        return "recognition"
    return None


# -- the manifest ----------------------------------------------------------------------------


def _fail(manifest: Path, where: str, message: str) -> ModelError:
    return ModelError(f"{manifest}: {where}: {message}" if where else f"{manifest}: {message}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-standard JSON number {value}")


def safe_relative(file: str) -> PurePosixPath | None:
    """`file` as a relative POSIX path that cannot leave the pack, or None."""
    if not file or "\\" in file or "\x00" in file:
        return None
    path = PurePosixPath(file)
    if path.is_absolute() or any(part in ("", ".", "..") or ":" in part for part in path.parts):
        return None
    return path


class _Parser:
    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest

    def fail(self, where: str, message: str) -> ModelError:
        return _fail(self.manifest, where, message)

    def text(self, obj: Mapping[str, Any], key: str, where: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def tensors(self, obj: Mapping[str, Any], key: str, where: str) -> tuple[TensorSpec, ...]:
        items = obj.get(key)
        if not isinstance(items, list) or not items:
            raise self.fail(f"{where}.{key}", "must be a non-empty list of tensors")
        specs = []
        for i, item in enumerate(items):
            at = f"{where}.{key}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(at, "must be an object with name, shape and dtype")
            if unknown := sorted(set(item) - {"name", "shape", "dtype"}):
                raise self.fail(at, f"unknown field(s) {', '.join(unknown)}")
            shape = item.get("shape")
            if not isinstance(shape, list):
                raise self.fail(f"{at}.shape", f"must be a list, got {shape!r}")
            for d, dim in enumerate(shape):
                ok = dim is None or isinstance(dim, str) or (type(dim) is int and dim >= 0)
                if not ok:
                    raise self.fail(
                        f"{at}.shape[{d}]", f"must be an int >= 0, a name or null: {dim!r}"
                    )
            specs.append(
                TensorSpec(self.text(item, "name", at), tuple(shape), self.text(item, "dtype", at))
            )
        return tuple(specs)

    def model(self, raw: Any, i: int) -> ModelSpec:
        at = f"models[{i}]"
        if not isinstance(raw, dict):
            raise self.fail(at, "must be an object")
        if missing := sorted(_MODEL_KEYS - set(raw)):
            raise self.fail(at, f"missing field(s) {', '.join(missing)}")
        if unknown := sorted(set(raw) - _MODEL_KEYS):
            raise self.fail(at, f"unknown field(s) {', '.join(unknown)}")
        name = self.text(raw, "name", at)
        if not _NAME.fullmatch(name):
            raise self.fail(f"{at}.name", f"{name!r} is not a valid model name")
        role = raw["role"]
        if role not in ROLES:
            raise self.fail(f"{at}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        file = self.text(raw, "file", at)
        if safe_relative(file) is None:
            raise self.fail(f"{at}.file", f"{file!r} must be a relative path inside the pack")
        sha256 = self.text(raw, "sha256", at).lower()
        if not _SHA256.fullmatch(sha256):
            raise self.fail(f"{at}.sha256", "must be 64 hexadecimal characters")
        return ModelSpec(
            name=name,
            version=self.text(raw, "version", at),
            role=role,
            file=file,
            sha256=sha256,
            licence=self.text(raw, "licence", at),
            inputs=self.tensors(raw, "inputs", at),
            outputs=self.tensors(raw, "outputs", at),
        )

    def parse(self, data: bytes) -> tuple[str | None, tuple[ModelSpec, ...]]:
        try:
            doc = json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            )
        except json.JSONDecodeError as exc:
            raise self.fail(
                "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise self.fail("", f"invalid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise self.fail("", "the manifest must be a JSON object")
        if doc.get("format") != FORMAT:
            raise self.fail("format", f"must be {FORMAT!r}, got {doc.get('format')!r}")
        if unknown := sorted(set(doc) - _TOP_KEYS):
            raise self.fail("", f"unknown field(s) {', '.join(unknown)}")
        package = None
        if "package" in doc:
            if not isinstance(doc["package"], dict) or set(doc["package"]) != {"name"}:
                raise self.fail("package", 'must be {"name": "<pack id>"}')
            package = self.text(doc["package"], "name", "package")
        raw_models = doc.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise self.fail("models", "must be a non-empty list")
        models = tuple(self.model(raw, i) for i, raw in enumerate(raw_models))
        seen: set[str] = set()
        for i, spec in enumerate(models):
            if spec.name in seen:
                raise self.fail(f"models[{i}].name", f"duplicate model name {spec.name!r}")
            seen.add(spec.name)
        return package, models


def manifest_document(models: Sequence[ModelSpec], package: str | None = None) -> dict[str, Any]:
    """The JSON document for `models` (what `ffengine models manifest` writes)."""
    doc: dict[str, Any] = {"format": FORMAT}
    if package is not None:
        doc["package"] = {"name": package}
    doc["models"] = [spec.to_json() for spec in models]
    return doc


# -- verification ----------------------------------------------------------------------------


def _dims_match(declared: Dim, actual: Dim) -> bool:
    # Symbolic dimension names are exporter trivia; what matters is fixed vs free, and the value.
    if isinstance(declared, int) or isinstance(actual, int):
        return declared == actual
    return True


def signature_differences(
    kind: str, declared: Sequence[TensorSpec], actual: Sequence[TensorSpec]
) -> list[str]:
    """Human-readable differences between a manifest's and a model's tensors."""
    if len(declared) != len(actual):
        names = ", ".join(t.name for t in actual)
        return [f"{kind}s: model has {len(actual)} ({names}), manifest lists {len(declared)}"]
    found = []
    for want, have in zip(declared, actual, strict=True):
        if want.name != have.name:
            found.append(f"{kind} name {have.name!r} != manifest {want.name!r}")
        shapes_equal = len(want.shape) == len(have.shape) and all(
            _dims_match(w, h) for w, h in zip(want.shape, have.shape, strict=True)
        )
        if not shapes_equal:
            found.append(
                f"{kind} {have.name!r} shape {list(have.shape)} != manifest {list(want.shape)}"
            )
        if want.dtype != have.dtype:
            found.append(f"{kind} {have.name!r} dtype {have.dtype} != manifest {want.dtype}")
    return found


class ModelPack:
    def __init__(
        self,
        directory: Path,
        models: Sequence[ModelSpec],
        package: str | None = None,
        licence_keys: Sequence[Any] | None = None,
    ) -> None:
        self.directory = directory
        self.models = tuple(models)
        # The id a signed licence must name: insightface falls back to the directory name too.
        self.package = package or directory.resolve().name
        self._licence_keys = tuple(licence_keys) if licence_keys is not None else None

    @classmethod
    def load(cls, directory: Path, *, licence_keys: Sequence[Any] | None = None) -> ModelPack:
        """Parse DIR/manifest.json. `licence_keys` (Ed25519 public keys) replace insightface's
        bundled licence keys, for packs licensed by another issuer key (and for tests)."""
        manifest = directory / MANIFEST_NAME
        try:
            with manifest.open("rb") as stream:
                data = stream.read(_MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ModelError(f"{manifest}: no model manifest in {directory}") from None
        except OSError as exc:
            raise ModelError(f"{manifest}: cannot read the manifest: {exc.strerror}") from exc
        if len(data) > _MAX_MANIFEST_BYTES:
            raise _fail(manifest, "", f"larger than {_MAX_MANIFEST_BYTES} bytes")
        package, models = _Parser(manifest).parse(data)
        return cls(directory, models, package, licence_keys)

    def spec(self, name_or_role: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name_or_role:
                return spec
        matches = [spec for spec in self.models if spec.role == name_or_role]
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(f"{s.name} ({s.role})" for s in self.models)
        if matches:
            raise ModelError(
                f"several {name_or_role} models in {self.directory}: name one of {names}"
            )
        raise ModelError(
            f"no model named or with role {name_or_role!r} in {self.directory} (has {names})"
        )

    def verify(self, name_or_role: str) -> VerifiedModel:
        """Check one model; call before creating any inference session for it."""
        spec = self.spec(name_or_role)

        def fail(check: Check, message: str) -> ModelCheckError:
            return ModelCheckError(spec.name, spec.role, check, message)

        path = self._path(spec, fail)
        actual = sha256_file(path)
        if actual != spec.sha256:
            raise fail(
                "sha256",
                f"sha256 mismatch for {spec.file}: file {actual}, manifest {spec.sha256}",
            )
        try:
            inputs, outputs = read_signature(path)
        except ModelError as exc:
            raise fail("signature", exc.message) from None
        differences = signature_differences("input", spec.inputs, inputs)
        differences += signature_differences("output", spec.outputs, outputs)
        if differences:
            raise fail("signature", "signature mismatch: " + "; ".join(differences))
        status, detail = self._licence(spec, path, fail)
        return VerifiedModel(spec, path, status, detail)

    def verify_all(self) -> list[VerifiedModel | ModelProblem]:
        """Every model's result, in manifest order: all problems, not only the first."""
        results: list[VerifiedModel | ModelProblem] = []
        for spec in self.models:
            try:
                results.append(self.verify(spec.name))
            except ModelCheckError as exc:
                problem = ModelProblem(spec.name, spec.role, spec.file, exc.check, exc.message)
                results.append(problem)
        return results

    def _path(self, spec: ModelSpec, fail: _Fail) -> Path:
        path = self.directory / spec.file
        root = self.directory.resolve()
        try:
            resolved = path.resolve(strict=True)
        except FileNotFoundError:
            raise fail("file", f"file {spec.file} is missing from {self.directory}") from None
        except (OSError, RuntimeError) as exc:
            raise fail("file", f"file {spec.file} cannot be resolved: {exc}") from None
        if not resolved.is_relative_to(root):
            raise fail("file", f"file {spec.file} resolves outside the pack (symlink?)")
        if not resolved.is_file():
            raise fail("file", f"{spec.file} is not a regular file")
        return resolved

    def _licence(self, spec: ModelSpec, path: Path, fail: _Fail) -> tuple[str, dict[str, Any]]:
        root = self.directory.resolve()
        candidates = dict.fromkeys((path.parent / LICENCE_FILENAME, root / LICENCE_FILENAME))
        found = next((c for c in candidates if c.exists() or c.is_symlink()), None)
        if found is None:
            return f"{spec.licence} (declared)", {"source": "declared", "declared": spec.licence}
        if not found.resolve().is_relative_to(root):
            raise fail("licence", f"{found.name} resolves outside the pack (symlink?)")
        # Deferred: importing insightface pulls in cv2 and onnxruntime, needed only here.
        from insightface.model_zoo import model_license as ml

        where = found.relative_to(root).as_posix()
        try:
            granted = ml.verify_model_license(
                found, expected_model_id=self.package, public_keys=self._licence_keys
            )
        except ml.ModelLicenseNotActiveError as exc:
            raise fail("licence", f"licence {where} is not active yet: {exc}") from None
        except ml.ModelLicenseExpiredError as exc:
            raise fail("licence", f"licence {where} has expired: {exc}") from None
        except ml.ModelLicenseError as exc:
            raise fail("licence", f"licence {where} is invalid: {exc}") from None
        if spec.licence == "commercial" and not granted.commercial_use_permitted:
            raise fail(
                "licence", f"manifest declares commercial use but {where} grants {granted.grant}"
            )
        detail: dict[str, Any] = {"source": "signed", "file": where, "declared": spec.licence}
        detail.update(granted.public_summary())
        return f"{granted.grant} (verified)", detail
