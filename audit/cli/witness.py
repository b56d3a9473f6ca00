"""`ffaudit witness ...`: a transparency-log witness (C2SP tlog-witness) — its key and its
server. The audit service submits its checkpoints to witnesses; a witness cosigns each one
that extends what it cosigned before, so no log can show two histories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audit.errors import UsageError
from audit.witness.settings import WitnessSettings

KEY_FILE = "witness.key"
VKEY_FILE = "witness.vkey"
_FILE = click.Path(dir_okay=False, path_type=Path)


def _settings_help() -> str:
    lines = ["\b", "Settings (environment variables; flags override them):"]
    for name, field in WitnessSettings.model_fields.items():
        about = f" - {field.description}" if field.description else ""
        lines.append(f"  FFWITNESS_{name.upper()} [{field.default}]{about}")
    return "\n".join(lines)


@click.group()
def witness() -> None:
    """A transparency-log witness: cosigns the checkpoints of the logs it is given."""


def _cosigner_vkey(name: str, key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.integrity.notes import CosignatureSigner, NoteError

    assert isinstance(key, Ed25519PrivateKey)
    try:
        return CosignatureSigner(name, key).verifier.vkey()
    except NoteError as exc:
        raise UsageError(f"witness name {name!r}: {exc}") from None


@witness.command("keygen")
@click.option("--name", required=True, help="The witness's key name, e.g. witness.example/w1.")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory."
)
@click.option("--force", is_flag=True, help="Overwrite an existing key.")
def keygen(name: str, out: Path, force: bool) -> None:
    """Create OUT/witness.key (Ed25519, PKCS#8 PEM, 0600) and OUT/witness.vkey; print the
    cosignature vkey (what logs and verifiers configure for this witness)."""
    from audit.common.files import write_atomic
    from audit.integrity.keys import Signer

    key_path, vkey_path = out / KEY_FILE, out / VKEY_FILE
    if key_path.exists() and not force:
        raise UsageError(f"refusing to overwrite the existing key {key_path}")
    signer = Signer.generate()
    vkey = _cosigner_vkey(name, signer.key)  # the name is checked before anything is written
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(key_path, signer.pem(), mode=0o600)
    write_atomic(vkey_path, f"{vkey}\n".encode(), mode=0o644)
    click.echo(f"wrote {key_path} and {vkey_path}", err=True)
    click.echo(vkey)


@witness.command("vkey")
@click.option("--name", required=True, help="The witness's key name.")
@click.option("--key", "key_file", type=_FILE, required=True, help="Its witness.key.")
def vkey(name: str, key_file: Path) -> None:
    """Print the cosignature vkey of the witness key KEY named NAME."""
    from audit.integrity.keys import Signer

    click.echo(_cosigner_vkey(name, Signer.load(key_file).key))


@witness.command("serve", epilog=_settings_help())
@click.option("--name", default=None, help="The witness's key name [FFWITNESS_NAME].")
@click.option("--key-file", type=_FILE, default=None, help="[FFWITNESS_KEY_FILE]")
@click.option(
    "--logs-file",
    type=_FILE,
    default=None,
    help="`log <vkey> [url]` lines: the logs to witness [FFWITNESS_LOGS_FILE].",
)
@click.option("--database-url", default=None, help="[FFWITNESS_DATABASE_URL]")
@click.option("--host", default=None, help="HTTP bind address [FFWITNESS_HOST].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="[FFWITNESS_PORT]")
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Apply database migrations before serving.",
)
def serve(
    name: str | None,
    key_file: Path | None,
    logs_file: Path | None,
    database_url: str | None,
    host: str | None,
    port: int | None,
    migrate: bool,
) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness) for the configured logs."""
    import uvicorn
    from pydantic import ValidationError

    from audit.db.session import upgrade
    from audit.witness.app import create_app

    flags: dict[str, Any] = {
        "name": name,
        "key_file": key_file,
        "logs_file": logs_file,
        "database_url": database_url,
        "host": host,
        "port": port,
    }
    try:
        settings = WitnessSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise UsageError("; ".join(str(e["msg"]) for e in exc.errors())) from None
    app = create_app(settings)  # reads the key and the logs: a bad one stops here
    if migrate:
        upgrade(settings.database_url)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        limit_concurrency=settings.max_connections,
    )
