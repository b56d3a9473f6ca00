"""Writing verifiable export bundles (docs/record-spec.md §10 is the normative text).

An auditor's query selects records scattered over one or more chains. The bundle carries
those records in full and, for every other record between the first and the last sequence
exported from each stream, only a link stub (sequence, event.hash, ffaudit.prev): enough to
walk the chain across the gaps and see that nothing is missing, while other people's
records stay out. Checkpoints in the ranges travel in full (they hold no personal data) so
the producer's own Ed25519 signatures can be checked, and a manifest signed by the service
key binds every file, range boundary and the query together.

A stub's hash cannot be recomputed without the record's content, so what links across a
stub is vouched for by the service's signature alone; the producer's checkpoint signatures
prove only records joined to a checkpoint through full records. The spec says so, and the
verifier reports which selected records are producer-signed in that sense.

From format v3 on, a bundle also carries the transparency log's evidence (tlog.ndjson,
audit.exports.tlog): per stream one checkpoint of the stream's log and, per full record the
log holds, its inclusion proof against it, the leaf recomputed from the record's content.
That proves a selected record unaltered since it was logged wherever the chain's own
signatures cannot reach it (across a stub), as far as the checkpoint is trusted: signed by
the service key, so trusted beyond the manifest once witnesses have cosigned it.

A bundle is evidence either way. The writer walks the range it is about to write with the
verifier's own walk (audit.exports.chain) and states every failure it finds (a modified
record, a hole, a broken link, a record after a closing checkpoint, a checkpoint whose
signature does not verify) in the signed manifest, with what the service alone knows (a
fork, a modified record exported as a stub, a record rejected at ingest) as findings; each
selected record's verdict is a column of records.csv. It refuses only input that is not a
set of records of the tenant, or a selection outside it.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.common.files import fsync_dir
from audit.errors import InvalidInputError, KeyMaterialError, UsageError
from audit.exports.chain import (
    MODIFIED_DETAIL,
    Element,
    ExportFailure,
    ExportFailureKind,
    Finding,
    FindingKind,
    RangeSpec,
    record_verdict,
    verified_checkpoints,
    walk,
)
from audit.exports.tlog import (
    TLOG,
    CheckpointLine,
    Leaf,
    LogDeclaration,
    ProofLine,
    StreamLog,
    check_log,
    is_cosigned,
    log_verifier,
)
from audit.integrity import contexts
from audit.integrity import record as f
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import record_hash
from audit.integrity.keys import Signer, Verifier
from audit.integrity.merkle import EMPTY_ROOT, HASH_SIZE
from audit.integrity.notes import MAX_PROOF_HASHES, NoteError, parse_checkpoint, parse_note

FORMATS: Final = contexts.EXPORT_FORMATS
FORMAT_V1: Final = FORMATS[0]  # no failures, findings or verdict column
FORMAT_V2: Final = FORMATS[1]  # no transparency log
FORMAT: Final = FORMATS[-1]

RECORDS: Final = "records.ndjson"
RECORDS_CSV: Final = "records.csv"
LINKS: Final = "links.ndjson"
CHECKPOINTS: Final = "checkpoints.ndjson"
SERVICE_PUB: Final = "service.pub"
MANIFEST: Final = "manifest.json"
MANIFEST_SIG: Final = "manifest.sig"
# Every file the manifest lists (and hashes); manifest.json and manifest.sig are the two
# files outside it. tlog.ndjson from v3 on.
DATA_FILES_V2: Final = (RECORDS, RECORDS_CSV, LINKS, CHECKPOINTS, SERVICE_PUB)
DATA_FILES: Final = (*DATA_FILES_V2, TLOG)

STUB_STREAM: Final = "stream"
STUB_SEQUENCE: Final = "sequence"
STUB_FIELDS: Final = (STUB_STREAM, STUB_SEQUENCE, f.EVENT_HASH, f.PREV)
_CHECKPOINT: Final = "audit.checkpoint"

CSV_COLUMNS: Final = (
    f.STREAM,
    f.EVENT_SEQUENCE,
    f.TIMESTAMP,
    f.EVENT_ACTION,
    f.EVENT_OUTCOME,
    f.EVENT_KIND,
    f.EVENT_CATEGORY,
    f.EVENT_TYPE,
    f.USER_HASH,
    f.SESSION_HASH,
    f.CLIENT_IP_HASH,
    f.TARGET_HASH,
    f.TRACE_ID,
    f.FILE_SHA256,
    f.ERROR_TYPE,
    f.ERROR_MESSAGE,
    f.METADATA,
    f.KEY_ID,
    f.EVENT_ID,
    f.EVENT_DATASET,
    f.TENANT,
    f.SCHEMA,
    f.PREV,
    f.EVENT_HASH,
)
VERDICT: Final = "verdict"  # records.csv's last column from v2 on (chain.record_verdict)
# Spreadsheets run a cell starting with one of these as a formula (CSV injection); OWASP
# adds tab and carriage return, which some of them strip before looking.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def data_files(fmt: str) -> tuple[str, ...]:
    """The files a manifest of format `fmt` lists."""
    return DATA_FILES if fmt == FORMAT else DATA_FILES_V2


def manifest_context(fmt: str) -> bytes:
    return contexts.export_context(fmt)


def manifest_message(manifest: Any) -> bytes:
    """The exact bytes `manifest.sig` signs: the context of the manifest's format (the
    current one when it names none we know), then the manifest's JCS form."""
    fmt = manifest.get("format") if isinstance(manifest, Mapping) else None
    context = manifest_context(fmt if fmt in FORMATS else FORMAT)
    return context + canonicalize(manifest)


def csv_cell(value: Any) -> str:
    """One spreadsheet cell: strings as they are, other JSON values in their JCS form,
    absent as empty, then neutralised against formula injection."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        text = canonicalize(value).decode("utf-8")
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_header(fmt: str = FORMAT) -> list[str]:
    names = CSV_COLUMNS if fmt == FORMAT_V1 else (*CSV_COLUMNS, VERDICT)
    return [csv_cell(name) for name in names]


def csv_row(record: Mapping[str, Any], verdict: str | None = None) -> list[str]:
    """A record's row; `verdict` (v2 on) is appended as the last cell."""
    row = [csv_cell(record.get(name)) for name in CSV_COLUMNS]
    return row if verdict is None else [*row, csv_cell(verdict)]


def stub(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a non-selected record contributes: its place and links, none of its content."""
    return {
        STUB_STREAM: record[f.STREAM],
        STUB_SEQUENCE: record[f.EVENT_SEQUENCE],
        f.EVENT_HASH: record[f.EVENT_HASH],
        f.PREV: record[f.PREV],
    }


def is_checkpoint(record: Mapping[str, Any]) -> bool:
    return record.get(f.EVENT_ACTION) == _CHECKPOINT


def load_public_key(pem: str | bytes, what: str) -> Verifier:
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnicodeError) as exc:
        raise KeyMaterialError(f"{what}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{what}: not an Ed25519 public key")
    return Verifier.from_key(key)


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]


@dataclass(slots=True)
class _Logs:
    """The log evidence of a v3 bundle as it will be written."""

    declarations: list[LogDeclaration]
    lines: list[CheckpointLine | ProofLine]  # tlog.ndjson, in order
    failures: list[ExportFailure]


@dataclass(slots=True)
class _Range:
    stream: str
    key: Verifier
    chain: dict[int, Mapping[str, Any]]  # sequence -> record; a hole is a declared failure
    first: int
    last: int
    elements: list[Element]
    signed_through: int = 0

    def spec(self) -> RangeSpec:
        return RangeSpec(
            self.stream,
            self.first,
            self.last,
            self.chain[self.first][f.PREV],
            self.chain[self.last][f.EVENT_HASH],
            self.signed_through,
            self.key,
        )


def write_export(
    directory: Path,
    records: Iterable[Mapping[str, Any]],
    selected: Collection[tuple[str, int]],
    public_keys: Mapping[str, str | bytes],
    query: Mapping[str, Any],
    signer: Signer,
    *,
    tenant: str,
    findings: Iterable[Finding] = (),
    created_at: datetime | None = None,
    tlog: Mapping[str, StreamLog] | None = None,
) -> ExportResult:
    """Write a bundle into `directory`, which must not exist yet.

    `records`: for every stream involved, every record of the tenant's stream from the first
    to the last sequence to export (include everything up to the first checkpoint after the
    last selected record, so a producer signature closes the range). `selected`: the
    (stream, sequence) pairs the query matched; each must be among `records`.
    `public_keys`: each stream's registered Ed25519 public key (PEM). `query`: what the
    auditor asked for, as a JSON object. `signer`: the service key that signs the manifest.
    `findings`: what the service knows of the ranges beyond the records (records rejected
    at ingest), stated in the manifest beside what the writer finds itself. `tlog`: each
    stream's transparency-log evidence (a checkpoint and the proofs against it); given, the
    bundle is v3 and every full record without a proof is listed as not in the log with the
    reason given; None writes a v2 bundle (no log).

    A damaged chain is exported with its failures stated (module docstring). Raises
    UsageError when `directory` exists, InvalidInputError for input that is not a set of
    records of `tenant`, KeyMaterialError for a missing or unusable stream key.
    """
    if os.path.lexists(directory):
        raise UsageError(f"{directory} already exists; an export never overwrites anything")
    if not isinstance(query, Mapping):
        raise InvalidInputError("the query must be a JSON object")
    wanted = set(selected)
    noted: list[Finding] = list(findings)
    ranges = _ranges(records, tenant, public_keys, wanted, noted)
    known = {(r.stream, seq) for r in ranges for seq in r.chain}
    unknown = sorted(wanted - known)
    if unknown:
        stream, seq = unknown[0]
        raise InvalidInputError(
            f"{len(unknown)} selected record(s) are not among the records given, "
            f"e.g. stream {stream!r} sequence {seq}"
        )
    failures = _failures(ranges)
    fmt = FORMAT_V2 if tlog is None else FORMAT
    logs = None if tlog is None else _logs(ranges, tlog, signer, tenant)
    if logs is not None:
        failures = sorted([*failures, *logs.failures], key=_failure_order)
    noted.sort(key=lambda x: (x.stream, x.sequence, x.kind.value, x.detail))
    manifest: dict[str, Any] = {
        "format": fmt,
        "created_at": f.format_timestamp(created_at or datetime.now(UTC)),
        "tenant": tenant,
        "query": dict(query),
        "service_key_fingerprint": signer.verifier.fingerprint,
        "failures": [x.declaration() for x in failures],
        "findings": [x.as_dict() for x in noted],
    }
    canonicalize(manifest)  # refuse an unrepresentable query before writing anything

    parent = directory.parent
    if not parent.is_dir():
        raise UsageError(f"{parent}: not a directory")
    # Written in a sibling temporary directory and renamed into place, so a bundle is
    # either complete or absent; mkdtemp makes it 0700, which the rename keeps.
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
    try:
        counts, files = _write_files(tmp, ranges, wanted, signer, failures, noted, fmt, logs)
        manifest["counts"] = counts
        manifest["files"] = files
        manifest["ranges"] = [
            {
                "stream": r.stream,
                "first_sequence": r.first,
                "last_sequence": r.last,
                "first_prev": r.chain[r.first][f.PREV],
                "last_hash": r.chain[r.last][f.EVENT_HASH],
                "signed_through": r.signed_through,
                "public_key_pem": r.key.pem().decode("ascii"),
                "key_fingerprint": r.key.fingerprint,
            }
            for r in ranges
        ]
        if logs is not None:
            manifest["tlog"] = [d.as_dict() for d in logs.declarations]
        body = canonicalize(manifest)
        signature = signer.sign(manifest_context(fmt) + body)
        _write(tmp / MANIFEST, body + b"\n")
        _write(tmp / MANIFEST_SIG, base64.b64encode(signature) + b"\n")
        fsync_dir(tmp)
        _rename_no_replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    return ExportResult(directory, manifest)


def _ranges(
    records: Iterable[Mapping[str, Any]],
    tenant: str,
    public_keys: Mapping[str, str | bytes],
    wanted: set[tuple[str, int]],
    noted: list[Finding],
) -> list[_Range]:
    chains: dict[str, dict[int, Mapping[str, Any]]] = {}
    for index, record in enumerate(records):
        problem = f.shape_error(record)
        if problem is not None:
            raise InvalidInputError(f"record {index}: {problem}", index=index)
        stream, seq = record[f.STREAM], record[f.EVENT_SEQUENCE]
        if record[f.TENANT] != tenant:
            raise InvalidInputError(
                f"stream {stream!r} sequence {seq} belongs to another tenant", index=index
            )
        chain = chains.setdefault(stream, {})
        other = chain.get(seq)
        if other is None:
            chain[seq] = record
        elif other[f.EVENT_HASH] != record[f.EVENT_HASH]:
            # The bundle holds one chain: the record given first (the store's plain name),
            # and says the other exists.
            noted.append(
                Finding(
                    FindingKind.FORK,
                    stream,
                    seq,
                    f"another record claims the sequence in the store: event.hash "
                    f"{record[f.EVENT_HASH][:16]}…",
                )
            )
    out: list[_Range] = []
    lines = {RECORDS: 0, CHECKPOINTS: 0, LINKS: 0}
    for stream in sorted(chains):
        chain = chains[stream]
        if stream not in public_keys:
            raise KeyMaterialError(f"no public key given for stream {stream!r}")
        key = load_public_key(public_keys[stream], f"public key of stream {stream!r}")
        r = _Range(stream, key, chain, min(chain), max(chain), [])
        for seq in sorted(chain):
            record = chain[seq]
            intact = record_hash(record) == record[f.EVENT_HASH]
            selected = (stream, seq) in wanted
            name = RECORDS if selected else CHECKPOINTS if is_checkpoint(record) else LINKS
            lines[name] += 1
            if name == LINKS and not intact:
                noted.append(
                    Finding(
                        FindingKind.MODIFIED_IN_STORE,
                        stream,
                        seq,
                        "exported as a link stub, but its stored content no longer hashes "
                        "to its event.hash",
                    )
                )
            r.elements.append(
                Element(
                    name,
                    lines[name],
                    stream,
                    seq,
                    record[f.EVENT_HASH],
                    record[f.PREV],
                    full=name != LINKS,
                    intact=intact and name != LINKS,
                    selected=selected,
                    record=record if is_checkpoint(record) and name != LINKS else None,
                )
            )
        r.signed_through = max(verified_checkpoints(r.elements, key), default=0)
        out.append(r)
    return out


def _failures(ranges: list[_Range]) -> list[ExportFailure]:
    """What a verifier of this bundle will find, found with its own walk."""
    failures: list[ExportFailure] = []

    def fail(
        kind: ExportFailureKind,
        detail: str,
        file: str | None,
        line: int | None,
        stream: str | None,
        seq: int | None,
    ) -> None:
        failures.append(ExportFailure(kind, file, line, stream, seq, detail, declared=True))

    for r in ranges:
        for el in r.elements:
            if el.full and not el.intact:
                fail(
                    ExportFailureKind.MODIFIED_RECORD,
                    MODIFIED_DETAIL,
                    el.file,
                    el.line,
                    el.stream,
                    el.seq,
                )
        walk(r.spec(), r.elements, fail)
    failures.sort(key=_failure_order)
    return failures


def _failure_order(x: ExportFailure) -> tuple[str, int, str, str]:
    return (x.stream or "", x.sequence or 0, x.kind.value, x.file or "")


def _logs(
    ranges: list[_Range], tlog: Mapping[str, StreamLog], signer: Signer, tenant: str
) -> _Logs:
    """tlog.ndjson's lines and the manifest's tlog section; what the verifier's own check
    finds in them (a stored record that is not the leaf the log holds) is declared."""
    out = _Logs([], [], [])

    def fail(
        kind: ExportFailureKind,
        detail: str,
        file: str | None,
        line: int | None,
        stream: str | None,
        seq: int | None,
    ) -> None:
        # Every line is built from the evidence here, so the check can only find what the
        # store and the log disagree on; anything else is a bug of this writer.
        if not kind.declarable:
            raise AssertionError(f"the writer made a {kind.value} failure: {detail}")
        out.failures.append(ExportFailure(kind, file, line, stream, seq, detail, declared=True))

    for r in ranges:
        log = tlog.get(r.stream)
        if log is None:
            raise InvalidInputError(f"no transparency-log evidence given for stream {r.stream!r}")
        leaves = {
            el.seq: Leaf(record_hash(r.chain[el.seq]), el.selected, el.intact)
            for el in r.elements
            if el.full
        }
        checkpoint, root, cosigned = _checkpoint_line(r.stream, log, signer, len(out.lines) + 1)
        if checkpoint is not None:
            out.lines.append(checkpoint)
        proofs: list[ProofLine] = []
        absent: list[tuple[int, str]] = []
        for seq in sorted(leaves):
            proof = log.proofs.get(seq) if checkpoint is not None else None
            if proof is None:
                why = log.absent.get(seq) or "the service holds no inclusion proof for it"
                absent.append((seq, why))
                continue
            hashes = tuple(proof.hashes)
            if (
                proof.index < 0
                or len(hashes) > MAX_PROOF_HASHES
                or any(len(h) != HASH_SIZE for h in hashes)
            ):
                raise InvalidInputError(
                    f"stream {r.stream!r} sequence {seq}: not an inclusion proof (index "
                    f"{proof.index}, {len(hashes)} hashes)"
                )
            line = ProofLine(len(out.lines) + 1, r.stream, seq, proof.index, hashes)
            out.lines.append(line)
            proofs.append(line)
        decl = LogDeclaration(
            r.stream,
            log.origin,
            checkpoint.size if checkpoint is not None else 0,
            root,
            cosigned,
            tuple(absent),
        )
        out.declarations.append(decl)
        check_log(decl, tenant, checkpoint, proofs, leaves, signer.verifier.key, fail)
    return out


def _checkpoint_line(
    stream: str, log: StreamLog, signer: Signer, line: int
) -> tuple[CheckpointLine | None, bytes, bool]:
    """The stream's checkpoint line (None without a checkpoint), its root, and whether the
    note carries cosignatures."""
    if log.note is None:
        return None, EMPTY_ROOT, False
    try:
        note = parse_note(log.note)
        body = parse_checkpoint(note.text)
    except NoteError as exc:
        raise InvalidInputError(
            f"stream {stream!r}: the log's checkpoint is not a checkpoint note ({exc.detail})"
        ) from None
    if body.size == 0:
        return None, EMPTY_ROOT, False  # the empty tree proves nothing
    verifier = log_verifier(log.origin, signer.verifier.key)
    cosigned = verifier is not None and is_cosigned(note, verifier)
    return CheckpointLine(line, stream, log.origin, body.size, log.note), body.root_hash, cosigned


class _HashingWriter:
    """Writes a file and hashes exactly the bytes written, in one pass."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = path.open("xb")
        self._hash = hashes.Hash(hashes.SHA256())

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def close(self) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.finalize().hex()


def _write_files(
    tmp: Path,
    ranges: list[_Range],
    wanted: set[tuple[str, int]],
    signer: Signer,
    failures: list[ExportFailure],
    findings: list[Finding],
    fmt: str,
    logs: _Logs | None,
) -> tuple[dict[str, int], dict[str, str]]:
    out = {name: _HashingWriter(tmp / name) for name in data_files(fmt)}
    counts = {"records": 0, "links": 0, "checkpoints": 0}
    text = io.StringIO()
    # RFC 4180 line ends; every cell is quoted only when it needs to be.
    rows = csv.writer(text, lineterminator="\r\n")
    rows.writerow(csv_header(fmt))
    try:
        for r in ranges:  # sorted by stream: the files are in (stream, sequence) order
            for seq in sorted(r.chain):
                record = r.chain[seq]
                if (r.stream, seq) in wanted:
                    out[RECORDS].write(canonicalize(dict(record)) + b"\n")
                    verdict = record_verdict(r.stream, seq, failures, findings)
                    rows.writerow(csv_row(record, verdict))
                    counts["records"] += 1
                elif is_checkpoint(record):
                    out[CHECKPOINTS].write(canonicalize(dict(record)) + b"\n")
                    counts["checkpoints"] += 1
                else:
                    out[LINKS].write(canonicalize(stub(record)) + b"\n")
                    counts["links"] += 1
                if text.tell() > 1 << 16:
                    out[RECORDS_CSV].write(text.getvalue().encode("utf-8"))
                    text.seek(0)
                    text.truncate()
        out[RECORDS_CSV].write(text.getvalue().encode("utf-8"))
        out[SERVICE_PUB].write(signer.verifier.pem())
        if logs is not None:
            for item in logs.lines:
                out[TLOG].write(canonicalize(item.as_dict()) + b"\n")
            counts["proofs"] = sum(isinstance(item, ProofLine) for item in logs.lines)
            counts["not_in_log"] = sum(len(d.not_in_log) for d in logs.declarations)
    finally:
        files = {name: writer.close() for name, writer in out.items()}
    return counts, files


def _write(path: Path, data: bytes) -> None:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _rename_no_replace(tmp: Path, directory: Path) -> None:
    # rename(2) cannot replace a non-empty directory or put a directory over a file, so an
    # existing bundle is never lost; the lexists check also refuses an empty directory
    # (only one created in the instant between check and rename could still be replaced).
    if os.path.lexists(directory):
        raise UsageError(f"{directory} already exists; an export never overwrites anything")
    try:
        os.rename(tmp, directory)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror}") from exc
