"""verify-export: check an export bundle offline, as an auditor or a court expert would."""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli.client import echo_json
from audit.errors import UsageError
from audit.exports.verify import ExportReport
from audit.exports.verify import verify_export as check_bundle
from audit.integrity.keys import Verifier

_FILE = click.Path(dir_okay=False, path_type=Path)


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def verify_export(
    pubkey: Path,
    stream_pubkeys: tuple[str, ...],
    trust_bundled_key: bool,
    as_json: bool,
    directory: Path,
) -> int:
    """Verify the export bundle in DIRECTORY. Exit 0 intact, 1 any failure, 2 usage or
    unreadable input."""
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
    report = check_bundle(directory, service_key, stream_keys=pinned)
    if as_json:
        echo_json(report.as_dict())
    else:
        _print(report)
    return 0 if report.ok else 1


def _print(report: ExportReport) -> None:
    for failure in report.failures:
        click.echo(failure.describe())
    for r in report.ranges:
        click.echo(
            f"stream {r.stream}: sequences {r.first_sequence}..{r.last_sequence}, "
            f"{r.records} records, {r.links} links, {r.checkpoints} checkpoints, "
            f"signed through {r.signed_through or 'none'}; "
            f"{len(r.producer_signed)} of {r.records} records proven by the stream's key"
        )
        for seq, why in r.unproven:
            click.echo(f"  not proven by the stream's key: seq {seq}: {why}")
    if report.ok:
        total = sum(r.records for r in report.ranges)
        click.echo(f"OK: {total} records in {len(report.ranges)} ranges verified")
    else:
        counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.counts.items()))
        click.echo(f"FAILED: {counts}")
