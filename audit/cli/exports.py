"""export and verify-export: have the service make a signed bundle and fetch it; check a
bundle offline, as an auditor or a court expert would."""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli.client import (
    REFUSALS,
    bearer,
    call,
    echo_json,
    refusal,
    service_option,
    tenant_option,
    token_option,
    unreachable,
    when,
)
from audit.errors import ServiceRefusedError, UsageError
from audit.exports.bundle import DATA_FILES, MANIFEST, MANIFEST_SIG
from audit.exports.verify import ExportReport
from audit.exports.verify import verify_export as check_bundle
from audit.integrity.keys import Verifier
from audit.integrity.notes import NoteError, Policy, parse_policy

_FILE = click.Path(dir_okay=False, path_type=Path)
_BUNDLE_FILES = frozenset((*DATA_FILES, MANIFEST, MANIFEST_SIG))


@click.command("verify-export")
@click.option(
    "--pubkey",
    type=_FILE,
    required=True,
    help="The service's public key (PEM), obtained separately: never the bundle's service.pub.",
)
@click.option(
    "--stream-pubkey",
    "stream_pubkeys",
    multiple=True,
    metavar="STREAM=FILE",
    help="Also require STREAM's checkpoints to be signed by the key in FILE (repeatable).",
)
@click.option(
    "--trust-bundled-key",
    is_flag=True,
    help="Accept a --pubkey file inside the bundle (it proves only that the bundle is "
    "consistent with itself, not who made it).",
)
@click.option(
    "--policy",
    type=_FILE,
    help="C2SP tlog-policy: also require each stream's log checkpoint to carry its "
    "witnesses' quorum (its log lines are not needed: the log key is --pubkey under each "
    "origin).",
)
@click.option(
    "--require-log",
    is_flag=True,
    help="Require every selected record to be proven by the transparency log (a record "
    "the service states is not in the log, or a bundle older than v3, fails).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def verify_export(
    pubkey: Path,
    stream_pubkeys: tuple[str, ...],
    trust_bundled_key: bool,
    policy: Path | None,
    require_log: bool,
    as_json: bool,
    directory: Path,
) -> int:
    """Verify the export bundle in DIRECTORY. Exit 0 intact; 1 a failure the service did not
    declare (the bundle is not what it issued, or not consistent); 4 authentic, and the
    service declares the exported chain damaged (evidence of tampering in its store); 2 usage
    or unreadable input."""
    if pubkey.resolve().is_relative_to(directory.resolve()) and not trust_bundled_key:
        # Whoever made the bundle chose that key: verifying with it proves nothing about
        # who signed it. Passed silently before.
        raise UsageError(
            f"{pubkey} is inside the bundle: verify with the service's key obtained "
            "separately (or --trust-bundled-key to check self-consistency only)"
        )
    service_key = Verifier.load(pubkey)
    pinned: dict[str, Verifier] = {}
    for item in stream_pubkeys:
        stream, sep, path = item.partition("=")
        if not sep or not stream or not path:
            raise UsageError(f"--stream-pubkey takes STREAM=FILE, not {item!r}")
        pinned[stream] = Verifier.load(Path(path))
    witnesses = load_policy(policy) if policy is not None else None
    report = check_bundle(
        directory, service_key, stream_keys=pinned, policy=witnesses, require_log=require_log
    )
    if as_json:
        echo_json(report.as_dict())
    else:
        _print(report)
    return exit_status(report)


def load_policy(path: Path) -> Policy:
    try:
        return parse_policy(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except NoteError as exc:
        raise UsageError(f"{path}: not a C2SP tlog-policy: {exc.detail}") from None


def exit_status(report: ExportReport) -> int:
    if not report.authentic:
        return 1
    return 4 if report.damaged else 0


def _print(report: ExportReport) -> None:
    for failure in report.failures:
        click.echo(failure.describe())
    for finding in report.findings:
        click.echo(
            f"SERVICE STATES {finding.kind.value}: seq {finding.sequence}, stream "
            f"{finding.stream}: {finding.detail}"
        )
    for r in report.ranges:
        click.echo(
            f"stream {r.stream}: sequences {r.first_sequence}..{r.last_sequence}, "
            f"{r.records} records, {r.links} links, {r.checkpoints} checkpoints, "
            f"signed through {r.signed_through or 'none'}; "
            f"{len(r.producer_signed)} of {r.records} records proven by the stream's key"
        )
        for seq, why in r.unproven:
            click.echo(f"  not proven by the stream's key: seq {seq}: {why}")
        if r.log is not None:
            log = r.log
            if not log.size:
                said = "no checkpoint"
            elif log.witnesses:
                said = f"size {log.size}, cosigned by {', '.join(log.witnesses)}"
            elif log.cosigned:
                said = f"size {log.size}, cosigned; give --policy to check the witnesses"
            else:
                said = f"size {log.size}, not cosigned"
            click.echo(
                f"  transparency log {log.origin} ({said}): {len(log.proven)} of "
                f"{r.records} records proven by the log"
            )
            for seq, why in log.unproven:
                click.echo(f"  not proven by the log: seq {seq}: {why}")
    total = sum(r.records for r in report.ranges)
    counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.counts.items()))
    if not report.authentic:
        click.echo(f"FAILED: {counts}")
    elif report.damaged:
        click.echo(
            f"AUTHENTIC, DAMAGED CHAIN: {total} records in {len(report.ranges)} ranges; every "
            f"failure ({counts or 'none'}) is declared in the service's signed manifest, "
            f"{sum(x.kind.damage for x in report.findings)} damage finding(s) stated"
        )
    else:
        click.echo(f"OK: {total} records in {len(report.ranges)} ranges verified")


@click.command("export")
@click.option("--actor", help="Raw user id (pseudonymised by the service).")
@click.option("--action", multiple=True, help="Repeatable.")
@click.option("--outcome", multiple=True, help="Repeatable.")
@click.option("--job", multiple=True, help="Repeatable.")
@click.option("--stream", multiple=True, help="Repeatable.")
@click.option("--file-hash", multiple=True, help="SHA-256 of an input or output file. Repeatable.")
@click.option("--since", callback=when, help="RFC 3339 time or a date (midnight UTC).")
@click.option("--until", callback=when, help="RFC 3339 time or a date (midnight UTC).")
@click.option("--q", help="Free text.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The bundle is written to OUT/EXPORT_ID.",
)
@click.option(
    "--pubkey",
    type=_FILE,
    help="Verify the downloaded bundle with the service's public key (obtained separately).",
)
@click.option(
    "--policy",
    type=_FILE,
    help="With --pubkey: also require the witnesses' quorum of this C2SP tlog-policy.",
)
@service_option
@token_option()
@tenant_option("Open mode only (no tokens): the tenant to export.")
def export(
    actor: str | None,
    action: tuple[str, ...],
    outcome: tuple[str, ...],
    job: tuple[str, ...],
    stream: tuple[str, ...],
    file_hash: tuple[str, ...],
    since: str | None,
    until: str | None,
    q: str | None,
    out: Path,
    pubkey: Path | None,
    policy: Path | None,
    service: str,
    token: str | None,
    tenant: str | None,
) -> int:
    """Create an export bundle of the selected records (POST /v1/exports), download its
    files, and with --pubkey verify it. Exit 0 done (and intact), 1 verification failed,
    4 authentic but the service declares the exported chain damaged."""
    if policy is not None and pubkey is None:
        raise UsageError("--policy checks the downloaded bundle: give --pubkey too")
    witnesses = load_policy(policy) if policy is not None else None
    body = {
        "actor": actor,
        "action": list(action),
        "outcome": list(outcome),
        "job": list(job),
        "stream": list(stream),
        "file_hash": [h.lower() for h in file_hash],
        "since": since,
        "until": until,
        "q": q,
    }
    made = call(
        "POST",
        service,
        "/v1/exports",
        token,
        tenant,
        body={k: v for k, v in body.items() if v not in (None, [])},
    )
    # The answer names the directory and files written here: only an export id and the
    # bundle's own file names are taken, so a spoofed or compromised service cannot make
    # this command write outside OUT (`../`, absolute paths).
    export_id, names = made.get("export_id"), made.get("files")
    if not (isinstance(export_id, str) and export_id.isalnum() and isinstance(names, list)):
        raise ServiceRefusedError("the service's answer is not an export (id and files)")
    strange = [n for n in names if n not in _BUNDLE_FILES]
    if strange:
        raise ServiceRefusedError(f"the service named files no bundle has: {strange!r}")
    directory = out / export_id
    directory.mkdir(parents=True, mode=0o700)
    for name in names:
        (directory / name).write_bytes(_download(service, export_id, name, token, tenant))
    click.echo(f"export {export_id}: {made['records']} records in {directory}", err=True)
    if pubkey is None:
        return 0
    report = check_bundle(directory, Verifier.load(pubkey), policy=witnesses)
    _print(report)
    return exit_status(report)


def _download(
    service: str, export_id: str, name: str, token: str | None, tenant: str | None
) -> bytes:
    import httpx

    try:
        response = httpx.get(
            f"{service.rstrip('/')}/v1/exports/{export_id}/{name}",
            headers=bearer(token),
            params={"tenant": tenant} if tenant else None,
            timeout=120,
        )
    except httpx.HTTPError as exc:
        raise unreachable(service, exc) from None
    if response.status_code >= 400:
        raise refusal(response, REFUSALS)
    return response.content
