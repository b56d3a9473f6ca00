"""Model packs on the real insightface + onnxruntime code (CPU), with generated tiny models."""

from __future__ import annotations

import base64
import json
import operator
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from insightface.app import FaceAnalysis
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD

from engine.errors import ModelError
from engine.models import ModelCheckError, ModelPack, ModelProblem, VerifiedModel
from tests.engine import modelgen

REPO = Path(__file__).resolve().parents[2]
CPU = ["CPUExecutionProvider"]


@pytest.fixture
def pack(model_pack: Path, tmp_path: Path) -> Path:
    """A private copy of the session's pack, free to tamper with."""
    return Path(shutil.copytree(model_pack, tmp_path / "pack"))


def edit_manifest(pack: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = pack / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def model_entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(m for m in doc["models"] if m["name"] == name)
    return entry


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every outgoing connection or name lookup fails and is recorded."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> Any:
        attempts.append(args)
        raise OSError("network access attempted in a no-download test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


# -- the generated pack on insightface's own code -------------------------------------------


def test_generation_is_fast(tmp_path: Path) -> None:
    for make in (
        lambda p: modelgen.make_scrfd(p, modelgen.T1_FACES),
        modelgen.make_arcface,
        modelgen.make_inswapper,
    ):
        started = time.perf_counter()
        make(tmp_path / "m.onnx")
        assert time.perf_counter() - started < 1.0


def test_generated_pack_verifies(model_pack: Path) -> None:
    pack = ModelPack.load(model_pack)
    results = pack.verify_all()
    assert [r.spec.name for r in results if isinstance(r, VerifiedModel)] == [
        "det_10g",
        "w600k_r50",
        "inswapper_128",
    ]
    swapper = pack.verify("swapper")
    assert swapper.spec.name == "inswapper_128"
    assert swapper.path == (model_pack / "swapper" / "inswapper_128.onnx").resolve()
    assert swapper.licence_status == "non-commercial (declared)"
    assert swapper.licence_detail == {"source": "declared", "declared": "non-commercial"}
    assert pack.verify("det_10g").spec.role == "detector"


def test_get_model_routes_each_generated_model(model_pack: Path) -> None:
    pack = ModelPack.load(model_pack)
    expected = {"detector": SCRFD, "recognition": ArcFaceONNX, "swapper": INSwapper}
    for role, cls in expected.items():
        model = get_model(str(pack.verify(role).path), providers=CPU)
        assert isinstance(model, cls), role


def test_face_analysis_finds_the_planted_faces_without_network(
    model_pack: Path, sample_image_path: Path, tmp_path: Path, no_network: list[object]
) -> None:
    ModelPack.load(model_pack).verify_all()
    root = tmp_path / "insightface-root"
    # A directory as `name` is used as is; `root` is only where downloads would go.
    app = FaceAnalysis(
        name=str(model_pack),
        root=str(root),
        allowed_modules=["detection", "recognition"],
        providers=CPU,
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))
    image = cv2.imread(str(sample_image_path))
    assert image is not None
    faces = app.get(image)

    assert set(app.models) == {"detection", "recognition"}
    planted = sorted(
        modelgen.detector_to_image(box, image.shape, (640, 640)) for box in modelgen.T1_FACES
    )
    found = sorted(tuple(float(v) for v in face.bbox) for face in faces)
    assert len(found) == 6
    np.testing.assert_allclose(found, planted, atol=0.5)
    embeddings = np.stack([face.normed_embedding for face in faces])
    assert embeddings.shape == (6, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert np.all(similarity[~np.eye(6, dtype=bool)] < 0.999)  # input-dependent
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert np.all((face.kps[:, 0] > x1) & (face.kps[:, 0] < x2))
        assert np.all((face.kps[:, 1] > y1) & (face.kps[:, 1] < y2))
    assert no_network == []
    assert not root.exists()


def test_inswapper_changes_the_target_face_only(
    model_pack: Path, sample_image_path: Path, no_network: list[object]
) -> None:
    pack = ModelPack.load(model_pack)
    app = FaceAnalysis(
        name=str(model_pack), allowed_modules=["detection", "recognition"], providers=CPU
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))
    image = cv2.imread(str(sample_image_path))
    assert image is not None
    faces = sorted(app.get(image), key=lambda f: float(f.bbox[0]))
    swapper = get_model(str(pack.verify("swapper").path), providers=CPU)
    assert isinstance(swapper, INSwapper)
    assert swapper.emap.shape == (512, 512)

    target, source = faces[2], faces[0]
    swapped = swapper.get(image.copy(), target, source, paste_back=True)
    changed = np.abs(swapped.astype(int) - image.astype(int)).max(axis=2) > 0

    x1, y1, x2, y2 = (round(float(v)) for v in target.bbox)
    inside = changed[y1:y2, x1:x2]
    assert inside.mean() > 0.5, "the swap barely touched the target face"
    margin_x, margin_y = (x2 - x1) // 2, (y2 - y1) // 2
    near = np.zeros_like(changed)
    near[max(0, y1 - margin_y) : y2 + margin_y, max(0, x1 - margin_x) : x2 + margin_x] = True
    assert not changed[~near].any(), "pixels changed far outside the target face"
    assert no_network == []


# -- tampering and malformed manifests -------------------------------------------------------


def test_tampered_model_is_rejected_before_parsing(
    pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pack / "w600k_r50.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tampered model was parsed")

    monkeypatch.setattr(onnx, "load", no_parse)
    with pytest.raises(ModelError, match=r"sha256 mismatch") as info:
        ModelPack.load(pack).verify("recognition")
    assert isinstance(info.value, ModelCheckError)
    assert info.value.check == "sha256"
    assert "w600k_r50" in info.value.message


def test_missing_model_file(pack: Path) -> None:
    (pack / "det_10g.onnx").unlink()
    with pytest.raises(ModelError, match=r"'det_10g'.*det_10g\.onnx is missing"):
        ModelPack.load(pack).verify("detector")


def test_wrong_input_shape_in_manifest(pack: Path) -> None:
    edit_manifest(
        pack, lambda d: model_entry(d, "w600k_r50")["inputs"][0].update(shape=[1, 3, 96, 96])
    )
    with pytest.raises(ModelError, match=r"signature mismatch: input 'input.1' shape") as info:
        ModelPack.load(pack).verify("w600k_r50")
    assert "[1, 3, 96, 96]" in info.value.message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda e: e["outputs"][0].update(dtype="float16"),
            r"output '683' dtype float32 != manifest float16",
        ),
        (
            lambda e: e["outputs"][0].update(name="embedding"),
            r"output name '683' != manifest 'embedding'",
        ),
        (
            lambda e: e["inputs"].append(e["inputs"][0]),
            r"inputs: model has 1 \(input.1\), manifest lists 2",
        ),
        (
            lambda e: e["inputs"][0].update(shape=[1, 3, 112, 112]),
            r"shape \['N', 3, 112, 112\] != manifest \[1,",
        ),
    ],
)
def test_other_signature_mismatches(
    pack: Path, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    edit_manifest(pack, lambda d: change(model_entry(d, "w600k_r50")))
    with pytest.raises(ModelError, match=expected):
        ModelPack.load(pack).verify("recognition")


def test_symbolic_dimension_names_need_not_match(pack: Path) -> None:
    edit_manifest(
        pack, lambda d: model_entry(d, "w600k_r50")["inputs"][0].update(shape=[None, 3, 112, 112])
    )
    assert ModelPack.load(pack).verify("recognition").spec.inputs[0].shape[0] is None


@pytest.mark.parametrize(
    "file", ["../w600k_r50.onnx", "/etc/passwd", "swapper/../../x.onnx", "a\\b.onnx", ""]
)
def test_paths_must_stay_inside_the_pack(pack: Path, file: str) -> None:
    edit_manifest(pack, lambda d: model_entry(d, "w600k_r50").update(file=file))
    with pytest.raises(ModelError, match=r"models\[1\]\.file"):
        ModelPack.load(pack)


def test_symlink_out_of_the_pack_is_rejected(pack: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.move(pack / "w600k_r50.onnx", outside)
    (pack / "w600k_r50.onnx").symlink_to(outside)
    with pytest.raises(ModelError, match="outside the pack"):
        ModelPack.load(pack).verify("recognition")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"format": "ffengine.model-pack.v1", "models": [', r"invalid JSON at line 1 column \d+"),
        ("[]", "must be a JSON object"),
        ('{"format": "other", "models": []}', r"format: must be 'ffengine.model-pack.v1'"),
        ('{"format": "ffengine.model-pack.v1", "models": []}', "models: must be a non-empty list"),
        ('{"format": "ffengine.model-pack.v1", "format": "x"}', "duplicate key 'format'"),
        ('{"format": "ffengine.model-pack.v1", "models": [], "extra": 1}', "unknown field"),
    ],
)
def test_malformed_manifest_documents(pack: Path, text: str, expected: str) -> None:
    (pack / "manifest.json").write_text(text)
    with pytest.raises(ModelError, match=expected):
        ModelPack.load(pack)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda e: e.pop("sha256"), r"models\[0\]: missing field\(s\) sha256"),
        (lambda e: e.update(sha256="abc"), r"models\[0\]\.sha256: must be 64 hexadecimal"),
        (lambda e: e.update(role="upscaler"), r"models\[0\]\.role: 'upscaler' is not one of"),
        (lambda e: e.update(sha265="x"), r"models\[0\]: unknown field\(s\) sha265"),
        (
            lambda e: e["inputs"][0].update(shape=[1, True, 2]),
            r"models\[0\]\.inputs\[0\]\.shape\[1\]",
        ),
        (lambda e: e.update(version=""), r"models\[0\]\.version: must be a non-empty string"),
        (lambda e: e.update(outputs=[]), r"models\[0\]\.outputs: must be a non-empty list"),
    ],
)
def test_malformed_model_entries_name_the_field(
    pack: Path, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    edit_manifest(pack, lambda d: change(d["models"][0]))
    with pytest.raises(ModelError, match=expected):
        ModelPack.load(pack)


def test_duplicate_model_names(pack: Path) -> None:
    edit_manifest(pack, lambda d: d["models"].append(d["models"][0]))
    with pytest.raises(ModelError, match=r"models\[3\]\.name: duplicate model name 'det_10g'"):
        ModelPack.load(pack)


def test_missing_manifest_and_unknown_model(pack: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model manifest"):
        ModelPack.load(tmp_path)
    with pytest.raises(ModelError, match="no model named or with role 'enhancer'"):
        ModelPack.load(pack).verify("enhancer")


def test_verify_all_reports_every_problem(pack: Path) -> None:
    (pack / "det_10g.onnx").unlink()
    (pack / "swapper" / "inswapper_128.onnx").write_bytes(b"not a model")
    results = ModelPack.load(pack).verify_all()
    problems = [r for r in results if isinstance(r, ModelProblem)]
    assert [(p.name, p.check) for p in problems] == [
        ("det_10g", "file"),
        ("inswapper_128", "sha256"),
    ]
    assert isinstance(results[1], VerifiedModel)


# -- licences --------------------------------------------------------------------------------


def write_licence(
    directory: Path,
    key: Ed25519PrivateKey,
    *,
    model_id: str,
    grant: str = "non-commercial",
    valid_from: str = "2020-01-01T00:00:00Z",
    valid_until: str | None = None,
) -> None:
    doc: dict[str, Any] = {
        "license_version": 1,
        "license_id": "lic-test-1",
        "issuer": "InsightFace",
        "model_id": model_id,
        "grant": grant,
        "valid_from": valid_from,
    }
    if valid_until is not None:
        doc["valid_until"] = valid_until
    if grant == "commercial":
        doc["customer"] = "Example Ltd"
    signature = key.sign(rfc8785.dumps(doc))
    doc["signature"] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    (directory / "MODEL.LICENSE").write_text(json.dumps(doc))


def test_signed_licence_is_verified(pack: Path) -> None:
    key = Ed25519PrivateKey.generate()
    write_licence(pack, key, model_id=pack.name)
    model = ModelPack.load(pack, licence_keys=[key.public_key()]).verify("swapper")
    assert model.licence_status == "non-commercial (verified)"
    assert model.licence_detail["source"] == "signed"
    assert model.licence_detail["signature_valid"] is True
    assert model.licence_detail["file"] == "MODEL.LICENSE"


def test_licence_names_the_package_from_the_manifest(pack: Path) -> None:
    key = Ed25519PrivateKey.generate()
    write_licence(pack, key, model_id="buffalo_l", grant="commercial")
    edit_manifest(pack, lambda d: d.update(package={"name": "buffalo_l"}))
    model = ModelPack.load(pack, licence_keys=[key.public_key()]).verify("detector")
    assert model.licence_status == "commercial (verified)"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"valid_until": "2021-01-01T00:00:00Z"}, "has expired"),
        ({"valid_from": "2999-01-01T00:00:00Z"}, "is not active yet"),
        ({"model_id": "someone-else"}, "is invalid: Model license is for 'someone-else'"),
    ],
)
def test_unusable_licence_is_a_model_error(
    pack: Path, fields: dict[str, str], expected: str
) -> None:
    key = Ed25519PrivateKey.generate()
    write_licence(pack, key, **{"model_id": pack.name, **fields})
    with pytest.raises(ModelError, match=expected) as info:
        ModelPack.load(pack, licence_keys=[key.public_key()]).verify("detector")
    assert isinstance(info.value, ModelCheckError)
    assert info.value.check == "licence"


def test_licence_signed_by_an_untrusted_key(pack: Path) -> None:
    write_licence(pack, Ed25519PrivateKey.generate(), model_id=pack.name)
    with pytest.raises(ModelError, match="signature verification failed"):
        ModelPack.load(pack).verify("detector")  # insightface's bundled keys


def test_declared_commercial_needs_a_commercial_grant(pack: Path) -> None:
    key = Ed25519PrivateKey.generate()
    write_licence(pack, key, model_id=pack.name)
    edit_manifest(pack, lambda d: model_entry(d, "det_10g").update(licence="commercial"))
    with pytest.raises(ModelError, match=r"declares commercial use but MODEL\.LICENSE grants"):
        ModelPack.load(pack, licence_keys=[key.public_key()]).verify("detector")


# -- the command line ------------------------------------------------------------------------


def ffengine(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_cli_verify_good_pack(model_pack: Path) -> None:
    result = ffengine("models", "verify", model_pack)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:4] == ["det_10g", "detector", "sha256=ok", "signature=ok"]
    assert lines[2].startswith("inswapper_128")
    assert all(line.endswith("licence=non-commercial (declared)") for line in lines)


def test_cli_verify_reports_problems_with_exit_3(pack: Path) -> None:
    (pack / "w600k_r50.onnx").write_bytes(b"tampered")
    edit_manifest(pack, lambda d: model_entry(d, "det_10g")["inputs"][0].update(name="data"))
    result = ffengine("models", "verify", pack)
    assert result.returncode == 3
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert rows["w600k_r50"][2:4] == ["sha256=mismatch", "signature=unchecked"]
    assert rows["det_10g"][2:4] == ["sha256=ok", "signature=mismatch"]
    assert rows["inswapper_128"][2:4] == ["sha256=ok", "signature=ok"]
    assert "sha256 mismatch for w600k_r50.onnx" in result.stderr
    assert "input name 'input.1' != manifest 'data'" in result.stderr
    assert "Traceback" not in result.stderr

    doc = json.loads(ffengine("models", "verify", "--json", pack).stdout)
    assert doc["ok"] is False
    assert [m["problem"] and m["problem"]["check"] for m in doc["models"]] == [
        "signature",
        "sha256",
        None,
    ]


def test_cli_verify_usage_and_manifest_errors(pack: Path, tmp_path: Path) -> None:
    missing = ffengine("models", "verify", tmp_path / "nowhere")
    assert missing.returncode == 2
    assert "is not a directory" in missing.stderr
    no_manifest = ffengine("models", "verify", tmp_path)
    assert no_manifest.returncode == 2
    assert "has no manifest.json" in no_manifest.stderr
    (pack / "manifest.json").write_text("{")
    broken = ffengine("models", "verify", pack)
    assert broken.returncode == 3
    assert "invalid JSON at line 1" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_cli_manifest_writes_what_modelgen_declares(model_pack: Path, tmp_path: Path) -> None:
    pack = Path(shutil.copytree(model_pack, tmp_path / "pack"))
    (pack / "manifest.json").unlink()
    written = ffengine(
        "models", "manifest", pack, "--licence", "non-commercial", "--version", "test-1"
    )
    assert written.returncode == 0, written.stderr
    ours, theirs = (json.loads((p / "manifest.json").read_text()) for p in (pack, model_pack))
    assert ours["format"] == theirs["format"]
    by_name = operator.itemgetter("name")
    assert sorted(ours["models"], key=by_name) == sorted(theirs["models"], key=by_name)
    assert ffengine("models", "verify", pack).returncode == 0

    again = ffengine("models", "manifest", pack)
    assert again.returncode == 2
    assert "--force" in again.stderr
    bad_role = ffengine("models", "manifest", pack, "--force", "--role", "det_10g=upscaler")
    assert bad_role.returncode == 2
    override = ffengine("models", "manifest", pack, "--stdout", "--role", "w600k_r50=enhancer")
    assert override.returncode == 0, override.stderr
    assert model_entry(json.loads(override.stdout), "w600k_r50")["role"] == "enhancer"
