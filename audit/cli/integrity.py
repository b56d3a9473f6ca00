"""keygen, keys rotate, seal and verify: the integrity tools a third party can run alone."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import click
from click.core import ParameterSource
from tqdm import tqdm

from audit.cli.client import DEFAULT_SERVICE, echo_json, when
from audit.errors import InvalidInputError, UsageError
from audit.integrity.chain import ChainWriter, CheckpointPolicy, SealedRecord
from audit.integrity.keys import KeySet, Verifier, rotate_pseudonym_key
from audit.integrity.keys import keygen as make_keys
from audit.integrity.parallel import ParallelVerifier, default_jobs
from audit.integrity.plain import parse_plain_event
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.ratelimit import SessionRateLimiter
from audit.integrity.seal import Sealer
from audit.integrity.verify import ChainVerifier, Failure, FailureKind
from audit.settings import AuditSettings

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--out", "out", type=_DIR, required=True, help="Directory for the key files.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(out: Path, force: bool) -> None:
    """Create signing.key, signing.pub (Ed25519, PEM) and pii.key (pseudonym keyring)."""
    keys = make_keys(out, force=force)
    click.echo(f"wrote {out}/signing.key, signing.pub, pii.key", err=True)
    click.echo(f"signing key fingerprint: {keys.signer.verifier.fingerprint}", err=True)


@click.group()
def keys() -> None:
    """Manage key directories."""


@keys.command("rotate")
@click.option("--keys", "directory", type=_DIR, required=True)
def rotate(directory: Path) -> None:
    """Add a new pseudonym key and make it current; old keys stay active for queries."""
    keyring = rotate_pseudonym_key(directory)
    click.echo(f"current pseudonym key: {keyring.current}", err=True)


@click.command()
@click.option("--stream", required=True, help="Stream id the records belong to.")
@click.option("--keys", "directory", type=_DIR, required=True, help="Directory from keygen.")
@click.option("--tenant", default="default", show_default=True)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=2),
    default=None,
    help="Records per signed checkpoint [default: FFAUDIT_CHECKPOINT_EVERY or 1000].",
)
@click.option(
    "--checkpoint-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds of event time between checkpoints.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Records per second per session [default: 10].",
)
@click.option("--burst", type=click.IntRange(min=1), default=None)
def seal(
    stream: str,
    directory: Path,
    tenant: str,
    checkpoint_every: int | None,
    checkpoint_interval: float | None,
    rate: float | None,
    burst: int | None,
) -> None:
    """Read plain events (JSON lines) on stdin; write sealed records (NDJSON) on stdout.

    Records are pseudonymised, rate-limited per session on event time, hash-chained and
    signed, ending with a closing checkpoint. A bad line stops the run with an error naming
    it, and no closing checkpoint is written, so `verify --strict` flags the output.
    """
    settings = AuditSettings()
    keyset = KeySet.load(directory)
    policy = CheckpointPolicy(
        every=checkpoint_every or settings.checkpoint_every,
        interval_s=checkpoint_interval or settings.checkpoint_interval_s,
    )
    sealer = Sealer(
        ChainWriter(stream, tenant, keyset.signer, policy=policy),
        Pseudonymizer(keyset.keyring, tenant),
        SessionRateLimiter(
            rate or settings.rate_limit_per_s,
            burst or settings.rate_limit_burst,
            max_sessions=settings.rate_limit_max_sessions,
        ),
    )
    out = sys.stdout.buffer
    last_ts: datetime | None = None
    sealed = 0
    for number, line in enumerate(sys.stdin.buffer, start=1):
        if not line.strip():
            continue
        try:
            event = parse_plain_event(line)
            records = sealer.seal(event)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"line {number}: {exc.message} ({sealed} events sealed before it; "
                "the stream was not closed)"
            ) from None
        _write(out, records)
        last_ts = event.timestamp
        sealed += 1
    _write(out, sealer.close(last_ts or datetime.now(UTC)))
    out.flush()
    click.echo(
        f"sealed {sealed} events into stream {stream!r} ({sealer.writer.head.sequence} records)",
        err=True,
    )


def _write(out: IO[bytes], records: list[SealedRecord]) -> None:
    for sealed in records:
        out.write(sealed.line + b"\n")


@click.command()
@click.option(
    "--pubkey",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Files: the producer's signing.pub (required).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Files: also fail when a stream lacks its closing checkpoint (truncation).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout.")
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Files: records of reordering tolerated per stream.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Files: worker processes, with the same failures as one [default: the cores].",
)
@click.option(
    "--service",
    envvar="FFAUDIT_SERVICE_URL",
    default=None,
    help=f"Verify what a running service stores [FFAUDIT_SERVICE_URL; default {DEFAULT_SERVICE}].",
)
@click.option("--stream", "streams", multiple=True, help="Service: a stream (repeatable).")
@click.option(
    "--since",
    callback=when,
    help="Service: every stream of the tenant (with --until), RFC 3339 or a date (UTC).",
)
@click.option("--until", callback=when, help="Service: see --since.")
@click.option("--token", envvar="FFAUDIT_TOKEN", default=None, help="Service: bearer token.")
@click.option("--tenant", default=None, help="Service in open mode (no tokens): the tenant.")
@click.option("--progress", is_flag=True, help="Service: progress on stderr even when not a tty.")
@click.argument(
    "records",
    required=False,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
)
def verify(
    pubkey: Path | None,
    strict: bool,
    as_json: bool,
    window: int,
    jobs: int | None,
    service: str | None,
    streams: tuple[str, ...],
    since: str | None,
    until: str | None,
    token: str | None,
    tenant: str | None,
    progress: bool,
    records: Path | None,
) -> int:
    """Verify RECORDS.ndjson offline, or (--service, --stream or --since/--until) the chains
    a running audit service stores, with progress on stderr. Exit 0 intact, 1 integrity
    failure, 2 usage error, unreadable input or a service error."""
    ctx = click.get_current_context()
    # FFAUDIT_SERVICE_URL in the environment does not make a file check remote.
    named_service = ctx.get_parameter_source("service") is ParameterSource.COMMANDLINE
    remote = [
        name
        for name, given in (
            ("--service", named_service),
            ("--stream", bool(streams)),
            ("--since", since is not None),
            ("--until", until is not None),
            ("--progress", progress),
        )
        if given
    ]
    if records is not None:
        if remote:
            raise UsageError(
                f"{', '.join(remote)}: for a service's stored chains, not with a RECORDS file"
            )
        if pubkey is None:
            # As click words a missing required option: for files, --pubkey is one.
            option = next(p for p in ctx.command.params if p.name == "pubkey")
            raise click.MissingParameter(ctx=ctx, param=option)
        return _verify_file(pubkey, strict, as_json, window, records, jobs or default_jobs())
    if not remote:
        raise UsageError(
            "name a RECORDS.ndjson file (with --pubkey), or --stream / --since to verify "
            "what a running service stores"
        )
    local = [n for n, given in (("--pubkey", pubkey), ("--strict", strict)) if given]
    if local:
        raise UsageError(f"{', '.join(local)}: for files; the service uses its own keys")
    if jobs is not None:
        raise UsageError("--jobs: for files; the service verifies what it stores itself")
    if streams and (since or until):
        raise UsageError("--stream or --since/--until: a time range verifies every stream")
    if not streams and since is None and until is None:
        raise UsageError("name --stream, or --since/--until for every stream of the tenant")
    from audit.cli.remote import verify_remote  # deferred: httpx, for --service alone

    return verify_remote(
        service or DEFAULT_SERVICE,
        token,
        tenant,
        streams,
        since,
        until,
        progress=progress,
        as_json=as_json,
    )


def _verify_file(
    pubkey: Path, strict: bool, as_json: bool, window: int, records: Path, jobs: int
) -> int:
    key = Verifier.load(pubkey)
    verifier = ChainVerifier(key, strict=strict, window=window)
    failures: list[Failure] = []

    def report(found: list[Failure]) -> None:
        if as_json:
            failures.extend(found)
        else:
            for failure in found:
                click.echo(_describe(failure))

    try:
        stream = sys.stdin.buffer if str(records) == "-" else records.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {records}: {exc.strerror}") from None
    size = None if str(records) == "-" else records.stat().st_size
    # Workers seek into the file: stdin and pipes are read by this process alone.
    sliced = jobs > 1 and size is not None and records.is_file()
    with (
        stream,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc="verify",
            leave=False,
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
        ) as bar,
    ):
        pending = 0
        try:
            if sliced:
                verifier = ParallelVerifier(key, strict=strict, window=window)
                for found in verifier.verify([records], jobs=jobs, progress=bar.update):
                    report(found)
            else:
                for number, line in enumerate(stream, start=1):
                    pending += len(line)
                    if line.strip():
                        found = verifier.feed(number, line)
                        if found:
                            report(found)
                    if pending > 1 << 20:
                        bar.update(pending)
                        pending = 0
        except OSError as exc:
            raise UsageError(f"cannot read {records}: {exc.strerror}") from None
        bar.update(pending)
    if not sliced:
        report(verifier.finish())
    if strict and not verifier.streams:
        verifier.counts[FailureKind.TRUNCATED] += 1
        report([])
    elif not verifier.lines:
        # "OK: 0 records" read as a pass: a wrong path or an empty export proves nothing.
        raise UsageError(f"{records}: no records to verify")
    summary = {
        "ok": verifier.ok,
        "lines": verifier.lines,
        "strict": strict,
        "counts": {kind.value: n for kind, n in verifier.counts.items()},
        "streams": [s.summary() for s in verifier.streams.values()],
    }
    if as_json:
        summary["failures"] = [f.as_dict() for f in failures]
        echo_json(summary)
    else:
        _print_summary(verifier, strict)
    return 0 if verifier.ok else 1


def _describe(failure: Failure) -> str:
    where = [f"line {failure.line}" if failure.line is not None else "end of input"]
    if failure.sequence is not None:
        where.append(f"seq {failure.sequence}")
    if failure.stream is not None:
        where.append(f"stream {failure.stream}")
    return f"FAIL {failure.kind.value}: {', '.join(where)}: {failure.detail}"


def _print_summary(verifier: ChainVerifier, strict: bool) -> None:
    for s in verifier.streams.values():
        click.echo(
            f"stream {s.stream}: {s.records} records, last sequence {s.expected - 1}, "
            f"signed through {s.signed_through}, "
            f"{'closed' if s.closed else 'not closed'}"
        )
    if verifier.ok:
        click.echo(f"OK: {verifier.lines} records verified")
    else:
        counts = ", ".join(f"{k.value}: {n}" for k, n in sorted(verifier.counts.items()))
        click.echo(f"FAILED: {counts}")
    if strict and not verifier.streams:
        click.echo("FAILED: no records at all (strict)")
