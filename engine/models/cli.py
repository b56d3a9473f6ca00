"""`ffengine models`: verify a local model pack, or write the manifest for one.

Exit codes follow engine.errors: 0 all good, 2 usage (no such directory or manifest, bad
option), 3 any model problem (missing, tampered, wrong signature, licence).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from audit.common.files import write_atomic
from engine.errors import FFEngineError, ModelError, UsageError
from engine.models.manifest import (
    MANIFEST_NAME,
    ROLES,
    ModelPack,
    ModelProblem,
    ModelSpec,
    Role,
    VerifiedModel,
    infer_role,
    manifest_document,
    read_signature,
    sha256_file,
)

_DIRECTORY = click.Path(path_type=Path, file_okay=False)

# What each failed check says about the checks after it: a missing or tampered file is never
# parsed, so its signature and licence stay unchecked.
_COLUMNS: dict[str, tuple[str, str, str]] = {
    "file": ("missing", "unchecked", "unchecked"),
    "sha256": ("mismatch", "unchecked", "unchecked"),
    "signature": ("ok", "mismatch", "unchecked"),
    "licence": ("ok", "ok", "invalid"),
}


def _run(action: Callable[[], int]) -> None:
    """Run a command body; engine errors become one line on stderr and their exit code."""
    try:
        code = action()
    except FFEngineError as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code)


def _existing_pack_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")


@click.group("models")
def models() -> None:
    """Local model packs: verify them, or write their manifest. Never downloads."""


def _row(result: VerifiedModel | ModelProblem) -> dict[str, Any]:
    if isinstance(result, VerifiedModel):
        spec = result.spec
        return {
            "name": spec.name,
            "role": spec.role,
            "file": spec.file,
            "sha256": "ok",
            "signature": "ok",
            "licence": result.licence_status,
            "licence_detail": result.licence_detail,
            "problem": None,
        }
    sha, signature, licence = _COLUMNS.get(result.check, ("unchecked",) * 3)
    return {
        "name": result.name,
        "role": result.role,
        "file": result.file,
        "sha256": sha,
        "signature": signature,
        "licence": licence,
        "problem": {"check": result.check, "message": result.message},
    }


@models.command("verify")
@click.argument("directory", type=_DIRECTORY)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def verify(directory: Path, as_json: bool) -> None:
    """Check every model of the pack in DIRECTORY: file, SHA-256, ONNX signature, licence."""

    def body() -> int:
        _existing_pack_dir(directory)
        if not (directory / MANIFEST_NAME).is_file():
            raise UsageError(f"{directory} has no {MANIFEST_NAME}")
        try:
            pack = ModelPack.load(directory)
        except ModelError as exc:
            if as_json:
                doc = {"directory": str(directory), "ok": False, "error": exc.message, "models": []}
                click.echo(json.dumps(doc, indent=2))
            raise
        rows = [_row(result) for result in pack.verify_all()]
        problems = [row for row in rows if row["problem"] is not None]
        if as_json:
            doc = {"directory": str(directory), "package": pack.package, "ok": not problems}
            doc["models"] = rows
            click.echo(json.dumps(doc, indent=2))
        else:
            width = max(len(row["name"]) for row in rows)
            for row in rows:
                click.echo(
                    f"{row['name']:<{width}}  {row['role']:<11}  sha256={row['sha256']:<9}  "
                    f"signature={row['signature']:<9}  licence={row['licence']}"
                )
        for row in problems:
            click.echo(f"error: {row['problem']['message']}", err=True)
        if problems:
            click.echo(f"{len(problems)} of {len(rows)} models failed verification", err=True)
            return ModelError.exit_code
        click.echo(f"{len(rows)} models verified", err=True)
        return 0

    _run(body)


def _role_overrides(values: Sequence[str]) -> dict[str, Role]:
    overrides: dict[str, Role] = {}
    for value in values:
        name, sep, role = value.partition("=")
        if not sep or not name:
            raise UsageError(f"--role {value!r}: expected NAME=ROLE")
        for known in ROLES:
            if role == known:
                overrides[name] = known
                break
        else:
            raise UsageError(f"--role {value!r}: role must be one of {', '.join(ROLES)}")
    return overrides


def build_specs(
    directory: Path, roles: dict[str, Role], licence: str, version: str
) -> list[ModelSpec]:
    """A ModelSpec for each .onnx file under `directory` (named by file stem, sorted)."""
    files = sorted(p for p in directory.rglob("*.onnx") if p.is_file())
    if not files:
        raise UsageError(f"no .onnx files under {directory}")
    specs: list[ModelSpec] = []
    unused = dict(roles)
    for path in files:
        relative = path.relative_to(directory).as_posix()
        name = path.stem
        if any(spec.name == name for spec in specs):
            raise UsageError(f"two models named {name!r}: rename one of the files")
        inputs, outputs = read_signature(path)
        role = unused.pop(name, None) or unused.pop(relative, None) or infer_role(inputs, outputs)
        if role is None:
            raise UsageError(f"cannot infer the role of {relative}: pass --role {name}=ROLE")
        specs.append(
            ModelSpec(name, version, role, relative, sha256_file(path), licence, inputs, outputs)
        )
    if unused:
        raise UsageError(f"--role names no model file: {', '.join(sorted(unused))}")
    return specs


@models.command("manifest")
@click.argument("directory", type=_DIRECTORY)
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="NAME=ROLE",
    help="Set a model's role (name = file stem) instead of inferring it.",
)
@click.option("--licence", default="unknown", show_default=True, help="Declared licence.")
@click.option("--version", default="unversioned", show_default=True, help="Model version.")
@click.option("--package", default=None, help="Pack id a signed MODEL.LICENSE names.")
@click.option("--force", is_flag=True, help="Replace an existing manifest.json.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the manifest, write nothing.")
def manifest(
    directory: Path,
    roles: tuple[str, ...],
    licence: str,
    version: str,
    package: str | None,
    force: bool,
    to_stdout: bool,
) -> None:
    """Write DIRECTORY/manifest.json for the .onnx files under DIRECTORY.

    Roles are inferred the way insightface routes models (detector, recognition, swapper;
    image-to-image models are enhancers); hashes and signatures are read from the files.
    """

    def body() -> int:
        _existing_pack_dir(directory)
        target = directory / MANIFEST_NAME
        if target.exists() and not (force or to_stdout):
            raise UsageError(f"{target} exists: pass --force to replace it")
        specs = build_specs(directory, _role_overrides(roles), licence, version)
        text = json.dumps(manifest_document(specs, package), indent=2) + "\n"
        if to_stdout:
            click.echo(text, nl=False)
            return 0
        # Public like the model files beside it (names, roles, hashes): whoever runs the
        # engine reads it, not only who wrote it.
        write_atomic(target, text.encode("utf-8"), mode=0o644)
        ModelPack.load(directory)  # what we wrote must be what verify accepts
        for spec in specs:
            click.echo(f"{spec.name}  {spec.role}  {spec.file}  {spec.sha256}")
        click.echo(f"wrote {target}", err=True)
        return 0

    _run(body)
