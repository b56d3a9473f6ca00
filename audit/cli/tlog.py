"""verify-proof and tlog: fetch a record's transparency-log proof, and check one offline
with only the log's key (and the witnesses' keys and quorum) — docs/record-spec.md §14."""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from pathlib import Path

import click
import orjson

from audit.cli.client import call, echo_json, service_option, tenant_option, token_option
from audit.errors import InvalidInputError, UsageError
from audit.integrity.chain import record_hash
from audit.integrity.keys import Verifier
from audit.integrity.notes import (
    SIG_ED25519,
    NoteError,
    Policy,
    TlogProof,
    parse_checkpoint,
    parse_note,
    parse_policy,
    parse_tlog_proof,
    parse_vkey,
    vkey_for,
)
from audit.integrity.transparency import State, TransparencyError, observe, verify_proof

_FILE = click.Path(dir_okay=False, path_type=Path)


def load_policy(
    policy: Path | None, log_keys: tuple[str, ...], pubkey: Path | None, data: bytes
) -> Policy:
    """What the proof must satisfy: a C2SP tlog-policy file (logs, witnesses, quorum),
    --log-key vkeys, and/or --pubkey, the service key as the log key of the proof's own
    origin (every log of a service is signed by its one key under the log's origin, so one
    policy file cannot list them all: the file then gives witnesses and quorum only)."""
    logs = [parse_vkey(key) for key in log_keys]
    if pubkey is not None:
        logs.append(vkey_for(_origin(data), Verifier.load(pubkey).key, SIG_ED25519))
    if policy is None:
        if not logs:
            raise UsageError("give --policy FILE, --log-key VKEY or --pubkey SERVICE_PUB")
        return parse_policy("".join(f"log {key.vkey()}\n" for key in logs) + "quorum none\n")
    try:
        trusted = parse_policy(policy.read_bytes())
    except OSError as exc:
        raise UsageError(f"{policy}: {exc}") from None
    except NoteError as exc:
        # A policy that does not parse is a usage error (exit 2), never "not proven" (1).
        raise UsageError(f"{policy}: not a C2SP tlog-policy: {exc.detail}") from None
    return replace(trusted, logs=(*trusted.logs, *logs)) if logs else trusted


def _origin(data: bytes) -> str:
    """The origin the proof's checkpoint claims (its signature is checked afterwards)."""
    try:
        return parse_checkpoint(parse_note(parse_tlog_proof(data).checkpoint).text).origin
    except NoteError as exc:
        raise InvalidInputError(f"not a tlog-proof with a checkpoint: {exc.detail}") from None


def _entry(record: Path | None, event_hash: str | None) -> bytes:
    if (record is None) == (event_hash is None):
        raise UsageError("give the record (--record FILE) or its --event-hash, exactly one")
    if event_hash is not None:
        try:
            entry = bytes.fromhex(event_hash)
        except ValueError:
            entry = b""
        if len(entry) != 32:
            raise UsageError("--event-hash takes 64 hex digits")
        return entry
    assert record is not None
    try:
        doc = orjson.loads(record.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InvalidInputError(f"{record}: not a JSON record ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{record}: not a JSON object")
    # The leaf is recomputed from the content: a proof for an edited record fails.
    return bytes.fromhex(record_hash(doc))


def _consistency(files: tuple[Path, ...]) -> dict[tuple[int, int], list[bytes]]:
    proofs: dict[tuple[int, int], list[bytes]] = {}
    for path in files:
        try:
            doc = orjson.loads(path.read_bytes())
            key = (int(doc["old_size"]), int(doc["new_size"]))
            proofs[key] = [base64.b64decode(h, validate=True) for h in doc["hashes"]]
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidInputError(f"{path}: not a consistency proof ({exc})") from None
    return proofs


@click.command("verify-proof")
@click.argument("proof", type=_FILE)
@click.option("--record", type=_FILE, help="The record (JSON) the proof is for.")
@click.option("--event-hash", help="Or its event.hash (hex), when the record is not at hand.")
@click.option("--policy", type=_FILE, help="C2SP tlog-policy: the logs, witnesses and quorum.")
@click.option("--log-key", "log_keys", multiple=True, metavar="VKEY", help="A log's vkey.")
@click.option(
    "--pubkey",
    type=_FILE,
    help="The service's public key (PEM), obtained separately: the log key of the proof's origin.",
)
@click.option("--origin", help="Require this log origin (<service>/<tenant>/<stream>).")
@click.option(
    "--state",
    type=_FILE,
    help="Checkpoints seen before (created if missing, updated on success): a log that "
    "shows another history than before fails.",
)
@click.option(
    "--consistency",
    "consistency_files",
    multiple=True,
    type=_FILE,
    help="A consistency proof (the service's JSON) between this checkpoint and the one "
    "the state file holds. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True)
def verify_proof_cmd(
    proof: Path,
    record: Path | None,
    event_hash: str | None,
    policy: Path | None,
    log_keys: tuple[str, ...],
    pubkey: Path | None,
    origin: str | None,
    state: Path | None,
    consistency_files: tuple[Path, ...],
    as_json: bool,
) -> int:
    """Verify a C2SP tlog-proof offline: the checkpoint's log signature and witness quorum,
    the record's inclusion, and (with --state) consistency with every checkpoint seen
    before. Exit 0 proven; 1 not proven (the reason is printed); 2 usage."""
    entry = _entry(record, event_hash)
    try:
        data = proof.read_bytes()
    except OSError as exc:
        raise UsageError(f"{proof}: {exc}") from None
    trusted = load_policy(policy, log_keys, pubkey, data)
    seen = State.load(state) if state is not None else None
    try:
        parsed, checkpoint = verify_proof(data, entry, trusted, origin=origin)
        if seen is not None:
            observe(seen, checkpoint, _consistency(consistency_files))
    except TransparencyError as exc:
        if as_json:
            echo_json({"ok": False, "kind": exc.kind.value, "detail": exc.detail})
        else:
            click.echo(f"NOT PROVEN ({exc.kind.value}): {exc.detail}")
        return 1
    if seen is not None and state is not None:
        seen.save(state)
    cp = checkpoint.checkpoint
    if as_json:
        echo_json(
            {
                "ok": True,
                "origin": cp.origin,
                "index": parsed.index,
                "size": cp.size,
                "cosigners": sorted(checkpoint.cosigners),
            }
        )
    else:
        witnesses = ", ".join(sorted(checkpoint.cosigners)) or "none required"
        click.echo(
            f"OK: leaf {parsed.index} of {cp.origin} (tree size {cp.size}); "
            f"cosigned by: {witnesses}"
        )
    return 0


@click.group("tlog")
def tlog() -> None:
    """Transparency logs: proofs, checkpoints, keys."""


@tlog.command("proof")
@click.option("--stream", required=True)
@click.option("--sequence", type=int, required=True)
@click.option("--out", type=_FILE, help="Write the .tlog-proof here (default: stdout).")
@service_option
@token_option()
@tenant_option()
def proof_cmd(
    stream: str,
    sequence: int,
    out: Path | None,
    service: str,
    token: str | None,
    tenant: str | None,
) -> None:
    """Fetch the C2SP tlog-proof of the record at SEQUENCE of STREAM."""
    doc = call(
        "GET", service, f"/v1/tlog/{stream}/inclusion", token, tenant, params={"sequence": sequence}
    )
    data = TlogProof(
        index=int(doc["index"]),
        hashes=tuple(base64.b64decode(h) for h in doc["hashes"]),
        checkpoint=doc["checkpoint"].encode(),
    ).encode()
    if out is None:
        click.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)
        click.echo(f"wrote {out} (leaf {doc['index']}, tree size {doc['size']})", err=True)


@tlog.command("consistency")
@click.option("--stream", required=True)
@click.option("--old", type=int, required=True)
@click.option("--new", type=int, required=True)
@service_option
@token_option()
@tenant_option()
def consistency_cmd(
    stream: str, old: int, new: int, service: str, token: str | None, tenant: str | None
) -> None:
    """Fetch a consistency proof between two tree sizes (JSON, for verify-proof)."""
    echo_json(
        call(
            "GET",
            service,
            f"/v1/tlog/{stream}/consistency",
            token,
            tenant,
            params={"old": old, "new": new},
        )
    )


@tlog.command("vkey")
@click.option("--pubkey", type=_FILE, required=True, help="The service's public key (PEM).")
@click.option("--origin", required=True, help="<service>/<tenant>/<stream>")
def vkey_cmd(pubkey: Path, origin: str) -> None:
    """The log's verifier key for a policy: computed offline from the service's key."""
    click.echo(vkey_for(origin, Verifier.load(pubkey).key, SIG_ED25519).vkey())
