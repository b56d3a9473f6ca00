"""Offline verification of an export bundle (docs/record-spec.md §10).

Needs nothing but the bundle directory and the service's public key, obtained separately
(the bundle's own service.pub proves nothing: whoever forged a bundle would ship their key).
Every failure is reported with its kind and location; checking goes on after the first one,
so a report shows everything that is wrong, not merely that something is.

How evidence becomes a failure kind:
* the manifest names another service key: **wrong_key**; its signature does not verify:
  **manifest_signature** (so every value in it, file hashes included, is unproven);
* a file whose SHA-256 is not the manifest's, or one the manifest does not list:
  **file_hash**;
* a full record that does not hash to its event.hash: **modified_record**;
* a sequence of a declared range that nothing in the bundle holds: **missing_record**;
* a record or stub outside every declared range, or a second one for a sequence:
  **extra_record**;
* an element whose ffaudit.prev is not its predecessor's event.hash: **broken_link**,
  blamed on the side whose value nothing else vouches for (a stub, whose hash cannot be
  recomputed without content, rather than a full record);
* the walk's ends disagree with the manifest's first_prev / last_hash: **range_mismatch**;
* a checkpoint that is not signed by the range's key, or a dishonest signed_through:
  **bad_checkpoint**;
* records.csv that does not say what records.ndjson says: **csv_mismatch**;
* anything unreadable as the format (bad JSON, out of order, missing manifest fields):
  **malformed**.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard

import orjson
from cryptography.hazmat.primitives import hashes

from audit.errors import CanonicalizationError, KeyMaterialError, UsageError
from audit.exports.bundle import (
    CHECKPOINTS,
    DATA_FILES,
    FORMAT,
    LINKS,
    MANIFEST,
    MANIFEST_SIG,
    RECORDS,
    RECORDS_CSV,
    SERVICE_PUB,
    STUB_FIELDS,
    STUB_SEQUENCE,
    STUB_STREAM,
    checkpoint_signature_ok,
    csv_header,
    csv_row,
    is_checkpoint,
    load_public_key,
    manifest_message,
)
from audit.integrity import record as f
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import record_hash
from audit.integrity.keys import Verifier

_HEX = frozenset("0123456789abcdef")
_COUNTED = {RECORDS: "records", LINKS: "links", CHECKPOINTS: "checkpoints"}


class ExportFailureKind(StrEnum):
    MANIFEST_SIGNATURE = "manifest_signature"
    WRONG_KEY = "wrong_key"
    FILE_HASH = "file_hash"
    MODIFIED_RECORD = "modified_record"
    MISSING_RECORD = "missing_record"
    EXTRA_RECORD = "extra_record"
    BROKEN_LINK = "broken_link"
    RANGE_MISMATCH = "range_mismatch"
    BAD_CHECKPOINT = "bad_checkpoint"
    CSV_MISMATCH = "csv_mismatch"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class ExportFailure:
    kind: ExportFailureKind
    file: str | None  # a bundle file name; None when nothing in the bundle is at fault
    line: int | None  # 1-based physical line (records.csv: the line its row starts on)
    stream: str | None
    sequence: int | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "file": self.file,
            "line": self.line,
            "stream": self.stream,
            "sequence": self.sequence,
            "detail": self.detail,
        }

    def describe(self) -> str:
        where = [self.file or "bundle"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.sequence is not None:
            where.append(f"seq {self.sequence}")
        if self.stream is not None:
            where.append(f"stream {self.stream}")
        return f"FAIL {self.kind.value}: {', '.join(where)}: {self.detail}"


@dataclass(frozen=True, slots=True)
class RangeReport:
    stream: str
    first_sequence: int
    last_sequence: int
    records: int  # selected records (full) in the range
    links: int
    checkpoints: int  # checkpoints in the range, selected or not
    signed_through: int  # highest checkpoint whose signature verifies; 0 when none
    # Selected records joined to a verifying checkpoint through full records only: those
    # the producer's key proves. The others rest on the service's signature alone.
    producer_signed: tuple[int, ...]
    # Every other selected record, with why the producer's key does not reach it.
    unproven: tuple[tuple[int, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "records": self.records,
            "links": self.links,
            "checkpoints": self.checkpoints,
            "signed_through": self.signed_through,
            "producer_signed": list(self.producer_signed),
            "unproven": [{"sequence": s, "reason": why} for s, why in self.unproven],
        }


@dataclass(slots=True)
class ExportReport:
    directory: Path
    failures: list[ExportFailure] = field(default_factory=list)
    ranges: list[RangeReport] = field(default_factory=list)
    tenant: str | None = None
    query: Any = None
    created_at: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(failure.kind.value for failure in self.failures))

    def of_kind(self, kind: ExportFailureKind) -> list[ExportFailure]:
        return [failure for failure in self.failures if failure.kind is kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "directory": str(self.directory),
            "tenant": self.tenant,
            "created_at": self.created_at,
            "query": self.query,
            "counts": self.counts,
            "ranges": [r.as_dict() for r in self.ranges],
            "failures": [failure.as_dict() for failure in self.failures],
        }


@dataclass(frozen=True, slots=True)
class _Range:
    stream: str
    first: int
    last: int
    first_prev: str
    last_hash: str
    signed_through: int
    key: Verifier | None  # None when the manifest's key is unusable (already reported)


@dataclass(frozen=True, slots=True)
class _Element:
    """A record, checkpoint or stub, reduced to what the chain walk needs."""

    file: str
    line: int
    stream: str
    seq: int
    hash: str
    prev: str
    full: bool  # content present: the hash was recomputed from it
    intact: bool  # full and the content matches its hash
    selected: bool
    record: dict[str, Any] | None  # checkpoints only: to check their signatures


def verify_export(
    directory: Path,
    service_key: Verifier,
    *,
    stream_keys: Mapping[str, Verifier] | None = None,
) -> ExportReport:
    """Check the bundle in `directory` against the trusted service key.

    `stream_keys` optionally pins streams' keys independently of the manifest (which
    carries each stream's key under the service's signature). Raises UsageError only when
    `directory` cannot be read at all; everything wrong with its content is a failure.
    """
    try:
        is_dir = directory.is_dir()
    except OSError as exc:
        raise UsageError(f"cannot read {directory}: {exc.strerror}") from None
    if not is_dir:
        raise UsageError(f"{directory}: not a directory")
    return _Checker(directory, service_key, stream_keys or {}).run()


class _Checker:
    def __init__(
        self, directory: Path, service_key: Verifier, stream_keys: Mapping[str, Verifier]
    ) -> None:
        self.dir = directory
        self.service_key = service_key
        self.stream_keys = stream_keys
        self.report = ExportReport(directory)
        self.ranges: dict[str, _Range] = {}
        self.elements: dict[str, list[_Element]] = {}
        self.lines: dict[str, int] = {}  # data lines per NDJSON file
        self._csv_line: int | None = None  # where the last row read from records.csv starts

    def fail(
        self,
        kind: ExportFailureKind,
        detail: str,
        file: str | None = None,
        line: int | None = None,
        stream: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.report.failures.append(ExportFailure(kind, file, line, stream, seq, detail))

    def run(self) -> ExportReport:
        manifest = self._manifest()
        if manifest is None:
            return self.report
        self._signature(manifest)
        if not self._shape(manifest):
            return self.report
        self._files(manifest["files"])
        self._ranges(manifest["ranges"])
        self._full_records(RECORDS, selected=True)
        self._full_records(CHECKPOINTS, selected=False)
        self._stubs()
        self._counts(manifest["counts"])
        for stream in sorted(set(self.elements) - set(self.ranges)):
            for el in self.elements[stream]:
                self.fail(
                    ExportFailureKind.EXTRA_RECORD,
                    "its stream is not one of the manifest's ranges",
                    el.file,
                    el.line,
                    el.stream,
                    el.seq,
                )
        for r in self.ranges.values():
            self._walk(r, self.elements.get(r.stream, []))
        return self.report

    # -- manifest -----------------------------------------------------------------------

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read {self.dir / name}: {exc.strerror}") from None

    def _manifest(self) -> dict[str, Any] | None:
        data = self._read(MANIFEST)
        if data is None:
            self.fail(ExportFailureKind.MALFORMED, "no manifest.json: not an export", MANIFEST)
            return None
        try:
            manifest = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self.fail(ExportFailureKind.MALFORMED, f"not JSON: {exc}", MANIFEST)
            return None
        if type(manifest) is not dict:
            self.fail(ExportFailureKind.MALFORMED, "not a JSON object", MANIFEST)
            return None
        self.report.tenant = _str_or_none(manifest.get("tenant"))
        self.report.created_at = _str_or_none(manifest.get("created_at"))
        self.report.query = manifest.get("query")
        return manifest

    def _signature(self, manifest: dict[str, Any]) -> None:
        named = manifest.get("service_key_fingerprint")
        if named != self.service_key.fingerprint:
            # Checking the signature would only repeat this: it cannot verify under our key.
            self.fail(
                ExportFailureKind.WRONG_KEY,
                f"signed by service key {str(named)[:16]}…, trusted key is "
                f"{self.service_key.fingerprint[:16]}…",
                MANIFEST,
            )
            return
        data = self._read(MANIFEST_SIG)
        if data is None:
            self.fail(ExportFailureKind.MANIFEST_SIGNATURE, "no manifest.sig", MANIFEST_SIG)
            return
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 64:
            self.fail(
                ExportFailureKind.MANIFEST_SIGNATURE,
                "not a base64 Ed25519 signature",
                MANIFEST_SIG,
            )
            return
        try:
            message = manifest_message(manifest)
        except CanonicalizationError as exc:
            self.fail(ExportFailureKind.MALFORMED, exc.message, MANIFEST)
            return
        if not self.service_key.verify(raw, message):
            self.fail(
                ExportFailureKind.MANIFEST_SIGNATURE,
                "the service's signature does not verify: the manifest was altered, "
                "so nothing it states is proven",
                MANIFEST,
            )

    def _shape(self, manifest: dict[str, Any]) -> bool:
        """False when the manifest is too broken to check the files against."""
        problems: list[str] = []
        if manifest.get("format") != FORMAT:
            problems.append(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
        if not isinstance(manifest.get("tenant"), str):
            problems.append("tenant is not a string")
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            problems.append("files is not an object of SHA-256 hex digests")
        else:
            problems += [f"files does not list {name}" for name in DATA_FILES if name not in files]
        counts = manifest.get("counts")
        if not isinstance(counts, dict) or not all(
            _is_int(counts.get(name)) for name in _COUNTED.values()
        ):
            problems.append("counts is not an object of records, links and checkpoints")
        ranges = manifest.get("ranges")
        if not isinstance(ranges, list):
            problems.append("ranges is not a list")
        for problem in problems:
            self.fail(ExportFailureKind.MALFORMED, problem, MANIFEST)
        return not problems

    # -- files --------------------------------------------------------------------------

    def _files(self, files: dict[str, str]) -> None:
        for name, expected in sorted(files.items()):
            if name not in DATA_FILES:
                # Never open a path the manifest names: it could point anywhere.
                self.fail(ExportFailureKind.MALFORMED, f"unknown file {name!r} listed", MANIFEST)
                continue
            digest = self._sha256(name)
            if digest is None:
                self.fail(ExportFailureKind.FILE_HASH, "listed in the manifest but missing", name)
            elif digest != expected:
                self.fail(
                    ExportFailureKind.FILE_HASH,
                    f"SHA-256 is {digest[:16]}…, the manifest says {expected[:16]}…",
                    name,
                )
        try:
            present = set(os.listdir(self.dir))
        except OSError as exc:
            raise UsageError(f"cannot list {self.dir}: {exc.strerror}") from None
        for name in sorted(present - set(files) - {MANIFEST, MANIFEST_SIG}):
            self.fail(
                ExportFailureKind.FILE_HASH,
                "not listed in the manifest: nothing vouches for it",
                name,
            )
        pem = self._read(SERVICE_PUB)
        if pem is not None:
            try:
                shipped = load_public_key(pem, SERVICE_PUB)
            except KeyMaterialError as exc:
                self.fail(ExportFailureKind.MALFORMED, exc.message, SERVICE_PUB)
            else:
                if shipped.fingerprint != self.service_key.fingerprint:
                    self.fail(
                        ExportFailureKind.WRONG_KEY,
                        "the bundle's service.pub is not the trusted service key",
                        SERVICE_PUB,
                    )

    def _sha256(self, name: str) -> str | None:
        h = hashes.Hash(hashes.SHA256())
        try:
            with (self.dir / name).open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read {self.dir / name}: {exc.strerror}") from None
        return h.finalize().hex()

    def _ranges(self, ranges: list[Any]) -> None:
        for index, item in enumerate(ranges):
            problem = _range_problem(item)
            if problem is not None:
                stream = item.get("stream") if isinstance(item, dict) else None
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"ranges[{index}]: {problem}",
                    MANIFEST,
                    stream=stream if isinstance(stream, str) else None,
                )
                continue
            stream = item["stream"]
            if stream in self.ranges:
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"ranges[{index}]: a second range for the stream",
                    MANIFEST,
                    stream=stream,
                )
                continue
            key = self._range_key(item)
            self.ranges[stream] = _Range(
                stream,
                item["first_sequence"],
                item["last_sequence"],
                item["first_prev"],
                item["last_hash"],
                item["signed_through"],
                key,
            )

    def _range_key(self, item: dict[str, Any]) -> Verifier | None:
        stream = item["stream"]
        try:
            key = load_public_key(item["public_key_pem"], f"stream {stream!r}")
        except KeyMaterialError as exc:
            self.fail(ExportFailureKind.MALFORMED, exc.message, MANIFEST, stream=stream)
            return None
        if key.fingerprint != item["key_fingerprint"]:
            self.fail(
                ExportFailureKind.WRONG_KEY,
                "key_fingerprint is not the fingerprint of public_key_pem",
                MANIFEST,
                stream=stream,
            )
            return None
        pinned = self.stream_keys.get(stream)
        if pinned is not None and pinned.fingerprint != key.fingerprint:
            self.fail(
                ExportFailureKind.WRONG_KEY,
                f"the manifest gives stream key {key.fingerprint[:16]}…, the trusted key is "
                f"{pinned.fingerprint[:16]}…",
                MANIFEST,
                stream=stream,
            )
            return None  # nothing in the range is proven under the key the caller trusts
        return key

    def _counts(self, counts: dict[str, Any]) -> None:
        for name, key in _COUNTED.items():
            have, claimed = self.lines.get(name, 0), counts[key]
            if have != claimed:
                self.fail(
                    ExportFailureKind.MISSING_RECORD
                    if have < claimed
                    else ExportFailureKind.EXTRA_RECORD,
                    f"the manifest counts {claimed} {key}, the file has {have}",
                    name,
                )

    # -- records, checkpoints, stubs ----------------------------------------------------

    def _lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        try:
            fh = (self.dir / name).open("rb")
        except FileNotFoundError:
            return  # reported by the file hashes
        except OSError as exc:
            raise UsageError(f"cannot read {self.dir / name}: {exc.strerror}") from None
        with fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    self.lines[name] = self.lines.get(name, 0) + 1
                    yield number, line

    def _full_records(self, name: str, *, selected: bool) -> None:
        rows = self._csv_rows() if selected else None
        last: tuple[str, int] | None = None
        for number, line in self._lines(name):
            row = next(rows, None) if rows is not None else None
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self.fail(ExportFailureKind.MALFORMED, f"not JSON: {exc}", name, number)
                continue
            problem = f.shape_error(rec)
            if problem is not None:
                stream = rec.get(f.STREAM) if type(rec) is dict else None
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"not an ffaudit record: {problem}",
                    name,
                    number,
                    stream if isinstance(stream, str) else None,
                )
                continue
            stream, seq, stored = rec[f.STREAM], rec[f.EVENT_SEQUENCE], rec[f.EVENT_HASH]
            if rows is not None:
                self._csv_compare(row, rec, number)
            last = self._order(name, number, stream, seq, last)
            intact = self._content(name, number, rec, line)
            if rec[f.TENANT] != self.report.tenant:
                self.fail(
                    ExportFailureKind.EXTRA_RECORD,
                    "belongs to another tenant than the export's",
                    name,
                    number,
                    stream,
                    seq,
                )
                continue
            if not selected and not is_checkpoint(rec):
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"{CHECKPOINTS} holds only checkpoints, this is {rec[f.EVENT_ACTION]!r}",
                    name,
                    number,
                    stream,
                    seq,
                )
            self._add(
                _Element(
                    name,
                    number,
                    stream,
                    seq,
                    stored,
                    rec[f.PREV],
                    full=True,
                    intact=intact,
                    selected=selected,
                    record=rec if is_checkpoint(rec) else None,
                )
            )
        if rows is not None:
            for _ in rows:
                self.fail(
                    ExportFailureKind.CSV_MISMATCH,
                    f"a row with no record in {RECORDS}",
                    RECORDS_CSV,
                    self._csv_line,
                )

    def _content(self, name: str, number: int, rec: dict[str, Any], line: bytes) -> bool:
        stream, seq = rec[f.STREAM], rec[f.EVENT_SEQUENCE]
        try:
            computed = record_hash(rec)
            canonical = canonicalize(rec)
        except CanonicalizationError as exc:
            self.fail(ExportFailureKind.MALFORMED, exc.message, name, number, stream, seq)
            return False
        if computed != rec[f.EVENT_HASH]:
            self.fail(
                ExportFailureKind.MODIFIED_RECORD,
                "content does not match its event.hash",
                name,
                number,
                stream,
                seq,
            )
            return False
        if canonical != line.rstrip(b"\r\n"):
            # The writer emits JCS lines; anything else leaves room for JSON parsers to
            # disagree (duplicate members, 1 vs 1.0) about what was verified.
            self.fail(
                ExportFailureKind.MALFORMED,
                "line is not the canonical (RFC 8785) form of its record",
                name,
                number,
                stream,
                seq,
            )
        return True

    def _stubs(self) -> None:
        last: tuple[str, int] | None = None
        for number, line in self._lines(LINKS):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self.fail(ExportFailureKind.MALFORMED, f"not JSON: {exc}", LINKS, number)
                continue
            problem = _stub_problem(doc)
            if problem is not None:
                stream = doc.get(STUB_STREAM) if type(doc) is dict else None
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"not a link stub: {problem}",
                    LINKS,
                    number,
                    stream if isinstance(stream, str) else None,
                )
                continue
            stream, seq = doc[STUB_STREAM], doc[STUB_SEQUENCE]
            last = self._order(LINKS, number, stream, seq, last)
            if canonicalize(doc) != line.rstrip(b"\r\n"):
                self.fail(
                    ExportFailureKind.MALFORMED,
                    "line is not the canonical (RFC 8785) form of its stub",
                    LINKS,
                    number,
                    stream,
                    seq,
                )
            self._add(
                _Element(
                    LINKS,
                    number,
                    stream,
                    seq,
                    doc[f.EVENT_HASH],
                    doc[f.PREV],
                    full=False,
                    intact=False,
                    selected=False,
                    record=None,
                )
            )

    def _order(
        self, name: str, number: int, stream: str, seq: int, last: tuple[str, int] | None
    ) -> tuple[str, int]:
        here = (stream, seq)
        if last is not None and here <= last:
            self.fail(
                ExportFailureKind.MALFORMED,
                f"out of (stream, sequence) order: follows sequence {last[1]} of stream "
                f"{last[0]!r}",
                name,
                number,
                stream,
                seq,
            )
            return last
        return here

    def _add(self, element: _Element) -> None:
        self.elements.setdefault(element.stream, []).append(element)

    # -- records.csv --------------------------------------------------------------------

    def _csv_rows(self) -> Iterator[list[str]]:
        """Data rows of records.csv, after checking its header."""
        try:
            raw = (self.dir / RECORDS_CSV).open("rb")
        except FileNotFoundError:
            return  # reported by the file hashes; every record then lacks its row
        except OSError as exc:
            raise UsageError(f"cannot read {self.dir / RECORDS_CSV}: {exc.strerror}") from None
        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
            reader = csv.reader(text)
            try:
                header = next(reader, None)
                if header != csv_header():
                    self.fail(
                        ExportFailureKind.CSV_MISMATCH,
                        "the header is not the export's column list",
                        RECORDS_CSV,
                        1,
                    )
                while True:
                    start = reader.line_num + 1  # a quoted newline makes a row span lines
                    row = next(reader, None)
                    if row is None:
                        break
                    self._csv_line = start
                    yield row
            except (csv.Error, UnicodeDecodeError) as exc:
                self.fail(
                    ExportFailureKind.CSV_MISMATCH,
                    f"unreadable as UTF-8 CSV: {exc}",
                    RECORDS_CSV,
                    reader.line_num or None,
                )

    def _csv_compare(self, row: list[str] | None, rec: dict[str, Any], number: int) -> None:
        stream, seq = rec[f.STREAM], rec[f.EVENT_SEQUENCE]
        if row is None:
            self.fail(
                ExportFailureKind.CSV_MISMATCH,
                f"no row for the record at {RECORDS} line {number}",
                RECORDS_CSV,
                None,
                stream,
                seq,
            )
            return
        try:
            expected = csv_row(rec)
        except CanonicalizationError:
            return  # the record itself is reported as malformed
        if row != expected:
            columns = [
                name
                for name, a, b in itertools.zip_longest(csv_header(), row, expected)
                if a is None or b is None or a != b
            ]
            self.fail(
                ExportFailureKind.CSV_MISMATCH,
                f"differs from the record at {RECORDS} line {number} in "
                f"{', '.join(str(c) for c in columns) or 'its column count'}",
                RECORDS_CSV,
                self._csv_line,
                stream,
                seq,
            )

    # -- the chain walk -----------------------------------------------------------------

    def _walk(self, r: _Range, elements: list[_Element]) -> None:
        at: dict[int, list[_Element]] = {}
        for el in elements:
            if r.first <= el.seq <= r.last:
                at.setdefault(el.seq, []).append(el)
            else:
                self.fail(
                    ExportFailureKind.EXTRA_RECORD,
                    f"outside the exported range {r.first}..{r.last}",
                    el.file,
                    el.line,
                    el.stream,
                    el.seq,
                )
        chosen: dict[int, _Element] = {}
        for seq, candidates in sorted(at.items()):
            best = max(candidates, key=lambda c: _fit(c, at, r))  # max keeps the first tie
            chosen[seq] = best
            for other in candidates:
                if other is not best:
                    self.fail(
                        ExportFailureKind.EXTRA_RECORD,
                        f"a second element claims the sequence (the chain continues through "
                        f"{best.file} line {best.line})",
                        other.file,
                        other.line,
                        other.stream,
                        other.seq,
                    )
        self._holes(r, chosen)
        for seq in range(r.first + 1, r.last + 1):
            a, b = chosen.get(seq - 1), chosen.get(seq)
            if a is not None and b is not None and b.prev != a.hash:
                # A stub's hash and prev are unverifiable, a full record's are not: blame
                # the side where the disagreeing value cannot have been checked.
                blamed = a if b.full and not a.full else b
                self.fail(
                    ExportFailureKind.BROKEN_LINK,
                    f"sequence {seq} ({b.file} line {b.line}) links to {b.prev[:16]}…, "
                    f"sequence {seq - 1} ({a.file} line {a.line}) has hash {a.hash[:16]}…",
                    blamed.file,
                    blamed.line,
                    r.stream,
                    blamed.seq,
                )
        closing = min(
            (
                seq
                for seq, el in chosen.items()
                if el.record and el.record.get(f.CP_CLOSING) is True
            ),
            default=None,
        )
        for seq in sorted(chosen):
            if closing is not None and seq > closing:
                # Anyone can link a record to the closing checkpoint's public hash; the
                # producer never writes after it.
                el = chosen[seq]
                self.fail(
                    ExportFailureKind.EXTRA_RECORD,
                    f"follows the stream's closing checkpoint (sequence {closing})",
                    el.file,
                    el.line,
                    r.stream,
                    seq,
                )
        if r.first == 1 and r.first_prev != f.ZERO_HASH:
            self.fail(
                ExportFailureKind.RANGE_MISMATCH,
                "the range starts the stream, so its first_prev must be 64 zeros",
                MANIFEST,
                None,
                r.stream,
                1,
            )
        first, last = chosen.get(r.first), chosen.get(r.last)
        if first is not None and first.prev != r.first_prev:
            self.fail(
                ExportFailureKind.RANGE_MISMATCH,
                f"links to {first.prev[:16]}…, the manifest's first_prev is {r.first_prev[:16]}…",
                first.file,
                first.line,
                r.stream,
                r.first,
            )
        if last is not None and last.hash != r.last_hash:
            self.fail(
                ExportFailureKind.RANGE_MISMATCH,
                f"has hash {last.hash[:16]}…, the manifest's last_hash is {r.last_hash[:16]}…",
                last.file,
                last.line,
                r.stream,
                r.last,
            )
        signed = self._checkpoints(r, [c for c in chosen.values() if c.record is not None])
        self.report.ranges.append(self._summary(r, chosen, signed))

    def _holes(self, r: _Range, chosen: dict[int, _Element]) -> None:
        missing = [seq for seq in range(r.first, r.last + 1) if seq not in chosen]
        for _, run in itertools.groupby(enumerate(missing), key=lambda p: p[1] - p[0]):
            seqs = [seq for _, seq in run]
            span = f"sequence {seqs[0]}" if len(seqs) == 1 else f"sequences {seqs[0]}..{seqs[-1]}"
            self.fail(
                ExportFailureKind.MISSING_RECORD,
                f"{span} of the exported range: neither a record nor a stub in the bundle",
                None,
                None,
                r.stream,
                seqs[0],
            )

    def _checkpoints(self, r: _Range, checkpoints: list[_Element]) -> set[int]:
        signed: set[int] = set()
        for cp in checkpoints:
            assert cp.record is not None
            if r.key is None:
                continue  # the range's key is unusable, which is already a failure
            problem = checkpoint_signature_ok(cp.record, r.key)
            if problem is None and cp.intact:
                signed.add(cp.seq)
            elif problem is not None:
                self.fail(
                    ExportFailureKind.BAD_CHECKPOINT,
                    problem,
                    cp.file,
                    cp.line,
                    r.stream,
                    cp.seq,
                )
        honest = max(signed, default=0)
        if r.key is not None and r.signed_through != honest:
            self.fail(
                ExportFailureKind.BAD_CHECKPOINT,
                f"signed_through is {r.signed_through}, but the highest checkpoint whose "
                f"signature verifies is {honest or 'none'}",
                MANIFEST,
                None,
                r.stream,
                r.signed_through,
            )
        return signed

    @staticmethod
    def _summary(r: _Range, chosen: dict[int, _Element], signed: set[int]) -> RangeReport:
        # Walk down from each verifying checkpoint while the chain stays made of intact,
        # linked full records: a stub's hash cannot be recomputed, so the producer's
        # signature stops there.
        proven: list[int] = []
        anchored = False
        for seq in range(r.last, r.first - 1, -1):
            el = chosen.get(seq)
            nxt = chosen.get(seq + 1)
            if el is None or not el.intact:
                anchored = False
            elif seq in signed:
                anchored = True
            elif anchored and (nxt is None or nxt.prev != el.hash):
                anchored = False
            if anchored and el is not None and el.selected:
                proven.append(seq)
        values = chosen.values()
        last_signed = max(signed, default=0)
        taken = set(proven)
        unproven = []
        for seq in range(r.first, r.last + 1):
            el = chosen.get(seq)
            if el is None or not el.selected or seq in taken:
                continue
            if not el.intact:
                why = "its content does not hash to its event.hash"
            elif seq > last_signed:
                why = "after the range's last verifying checkpoint: the service's signature alone"
            else:
                why = "an unselected record (a stub) lies between it and its checkpoint"
            unproven.append((seq, why))
        return RangeReport(
            stream=r.stream,
            first_sequence=r.first,
            last_sequence=r.last,
            records=sum(1 for el in values if el.selected),
            links=sum(1 for el in values if not el.full),
            checkpoints=sum(1 for el in values if el.record is not None),
            signed_through=max(signed, default=0),
            producer_signed=tuple(sorted(proven)),
            unproven=tuple(unproven),
        )


def _fit(candidate: _Element, at: dict[int, list[_Element]], r: _Range) -> tuple[bool, ...]:
    """How well one of several elements claiming a sequence fits the chain, best first.

    What follows decides first (the chain continues through the genuine one: anybody can
    make a record that links back, or hash its own content), then what precedes, then
    whether its content matches its hash.
    """
    seq = candidate.seq
    if seq == r.last:
        onward = candidate.hash == r.last_hash
    else:
        onward = any(n.prev == candidate.hash for n in at.get(seq + 1, ()))
    if seq == r.first:
        backward = candidate.prev == r.first_prev
    else:
        backward = any(p.hash == candidate.prev for p in at.get(seq - 1, ()))
    return (onward, backward, candidate.intact)


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _range_problem(item: Any) -> str | None:
    if type(item) is not dict:
        return "not an object"
    if not isinstance(item.get("stream"), str):
        return "stream is not a string"
    first, last, through = (
        item.get("first_sequence"),
        item.get("last_sequence"),
        item.get("signed_through"),
    )
    if not (_is_int(first) and _is_int(last) and 1 <= first <= last):
        return "first_sequence and last_sequence are not integers with 1 <= first <= last"
    if not (_is_int(through) and (through == 0 or first <= through <= last)):
        return "signed_through is neither 0 nor a sequence of the range"
    if not (_is_hash(item.get("first_prev")) and _is_hash(item.get("last_hash"))):
        return "first_prev and last_hash are not 64 lowercase hex digits"
    if not isinstance(item.get("public_key_pem"), str):
        return "public_key_pem is not a string"
    if not _is_hash(item.get("key_fingerprint")):
        return "key_fingerprint is not 64 lowercase hex digits"
    return None


def _stub_problem(doc: Any) -> str | None:
    if type(doc) is not dict:
        return "not a JSON object"
    if set(doc) != set(STUB_FIELDS):
        # A stub carrying anything else would leak content of a record nobody selected.
        return f"members must be exactly {', '.join(STUB_FIELDS)}"
    if not isinstance(doc[STUB_STREAM], str):
        return "stream is not a string"
    seq = doc[STUB_SEQUENCE]
    if not _is_int(seq) or seq < 1:
        return "sequence is not an integer >= 1"
    if not (_is_hash(doc[f.EVENT_HASH]) and _is_hash(doc[f.PREV])):
        return "event.hash and ffaudit.prev are not 64 lowercase hex digits"
    return None
