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

And from v3 on, the transparency log (audit.exports.tlog):
* a full record with no inclusion proof that the manifest does not list as not in the log
  (or, with require_log, any selected record the log does not prove): **not_in_log**;
* a proof that does not lead from the record's recomputed leaf to the checkpoint's root,
  proves no full record of the bundle, or puts the chain out of order: **inclusion**;
* a stream's checkpoint missing, not signed by the service key as the log's key, or not
  what the manifest states: **log_checkpoint**; of another log: **log_origin**;
* with a witness policy: its quorum not met: **log_quorum**.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

import orjson
from cryptography.hazmat.primitives import hashes

from audit.errors import CanonicalizationError, KeyMaterialError, UsageError
from audit.exports.bundle import (
    CHECKPOINTS,
    FORMAT,
    FORMAT_V1,
    FORMATS,
    LINKS,
    MANIFEST,
    MANIFEST_SIG,
    RECORDS,
    RECORDS_CSV,
    SERVICE_PUB,
    STUB_FIELDS,
    STUB_SEQUENCE,
    STUB_STREAM,
    csv_header,
    csv_row,
    data_files,
    is_checkpoint,
    load_public_key,
    manifest_message,
)
from audit.exports.chain import (
    MODIFIED_DETAIL,
    Element,
    ExportFailure,
    ExportFailureKind,
    Finding,
    FindingKind,
    RangeReport,
    RangeSpec,
    record_verdict,
    walk,
)
from audit.exports.tlog import (
    TLOG,
    CheckpointLine,
    Leaf,
    LogDeclaration,
    ProofLine,
    check_log,
    parse_declaration,
    parse_line,
)
from audit.integrity import record as f
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import record_hash
from audit.integrity.keys import Verifier
from audit.integrity.notes import Policy

_HEX = frozenset("0123456789abcdef")
_COUNTED = {RECORDS: "records", LINKS: "links", CHECKPOINTS: "checkpoints"}
_LOG_COUNTED = ("proofs", "not_in_log")  # v3


@dataclass(slots=True)
class ExportReport:
    directory: Path
    failures: list[ExportFailure] = field(default_factory=list)
    ranges: list[RangeReport] = field(default_factory=list)
    tenant: str | None = None
    query: Any = None
    created_at: str | None = None
    format: str | None = None
    # What the service states it knows and the bundle cannot show (spec §10.2).
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing wrong at all: the bundle is authentic and its chain intact."""
        return not self.failures

    @property
    def authentic(self) -> bool:
        """Every failure is one the service declared in its signed manifest: the bundle is
        what the service issued, faithful evidence of whatever damage it states."""
        return all(failure.declared for failure in self.failures)

    @property
    def damaged(self) -> bool:
        """The exported chain (or what the service knows of the store) is damaged."""
        return bool(self.failures) or any(x.kind.damage for x in self.findings)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(failure.kind.value for failure in self.failures))

    def of_kind(self, kind: ExportFailureKind) -> list[ExportFailure]:
        return [failure for failure in self.failures if failure.kind is kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "authentic": self.authentic,
            "damaged": self.damaged,
            "format": self.format,
            "directory": str(self.directory),
            "tenant": self.tenant,
            "created_at": self.created_at,
            "query": self.query,
            "counts": self.counts,
            "ranges": [r.as_dict() for r in self.ranges],
            "failures": [failure.as_dict() for failure in self.failures],
            "findings": [x.as_dict() for x in self.findings],
        }


def verify_export(
    directory: Path,
    service_key: Verifier,
    *,
    stream_keys: Mapping[str, Verifier] | None = None,
    policy: Policy | None = None,
    require_log: bool = False,
) -> ExportReport:
    """Check the bundle in `directory` against the trusted service key.

    `stream_keys` optionally pins streams' keys independently of the manifest (which
    carries each stream's key under the service's signature). `policy` (a C2SP
    tlog-policy) also requires every stream's log checkpoint to carry its witnesses'
    quorum; its log lines are not used, the log key being the service key under each
    origin. `require_log`: every selected record must be proven by the log. A bundle
    without a log (v1, v2) fails either requirement. Raises UsageError only when
    `directory` cannot be read at all; everything wrong with its content is a failure.
    """
    try:
        is_dir = directory.is_dir()
    except OSError as exc:
        raise UsageError(f"cannot read {directory}: {exc.strerror}") from None
    if not is_dir:
        raise UsageError(f"{directory}: not a directory")
    return _Checker(directory, service_key, stream_keys or {}, policy, require_log).run()


class _Checker:
    def __init__(
        self,
        directory: Path,
        service_key: Verifier,
        stream_keys: Mapping[str, Verifier],
        policy: Policy | None = None,
        require_log: bool = False,
    ) -> None:
        self.dir = directory
        self.service_key = service_key
        self.stream_keys = stream_keys
        self.policy = policy
        self.require_log = require_log
        # v3: the manifest's tlog section, the full records' recomputed leaves and the
        # tlog.ndjson lines, per stream.
        self.log_declarations: list[LogDeclaration] = []
        self.leaves: dict[str, dict[int, Leaf]] = {}
        self.log_checkpoints: dict[str, CheckpointLine] = {}
        self.log_proofs: dict[str, list[ProofLine]] = {}
        self.report = ExportReport(directory)
        self.ranges: dict[str, RangeSpec] = {}
        self.elements: dict[str, list[Element]] = {}
        self.lines: dict[str, int] = {}  # data lines per NDJSON file
        self._csv_line: int | None = None  # where the last row read from records.csv starts
        self.format = FORMAT_V1
        self.declared: list[ExportFailure] = []

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
        if self.format == FORMAT:
            self._log_lines()
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
        if self.format == FORMAT:
            self._logs()
        elif self.policy is not None or self.require_log:
            self.fail(
                ExportFailureKind.LOG_QUORUM if self.policy else ExportFailureKind.NOT_IN_LOG,
                f"a {self.format} bundle carries no transparency log: nothing in it is proven "
                "by the log, as was required",
                MANIFEST,
            )
        self._compare_declared()
        return self.report

    def _compare_declared(self) -> None:
        """Mark each failure found that the manifest declares; a declared one that is not
        found is a false statement of the service, itself a failure."""
        declared = {x.location: x for x in self.declared}
        seen = set()
        for index, failure in enumerate(self.report.failures):
            if failure.location in declared:
                seen.add(failure.location)
                self.report.failures[index] = replace(failure, declared=True)
        for location, x in declared.items():
            if location not in seen:
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"the manifest declares a {x.kind.value} failure at "
                    f"{x.file or 'bundle'} line {x.line}, stream {x.stream}, seq {x.sequence} "
                    "that the bundle does not show",
                    MANIFEST,
                    None,
                    x.stream,
                    x.sequence,
                )

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
        fmt = manifest.get("format")
        if fmt not in FORMATS:
            problems.append(f"format is {fmt!r}, not one of {', '.join(FORMATS)}")
        else:
            self.format = self.report.format = fmt
            if fmt != FORMAT_V1:
                problems += self._declarations(manifest)
            if fmt == FORMAT:
                problems += self._log_declarations(manifest)
        if not isinstance(manifest.get("tenant"), str):
            problems.append("tenant is not a string")
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            problems.append("files is not an object of SHA-256 hex digests")
        else:
            problems += [
                f"files does not list {name}"
                for name in data_files(self.format)
                if name not in files
            ]
        counts = manifest.get("counts")
        counted = [*_COUNTED.values(), *(_LOG_COUNTED if self.format == FORMAT else ())]
        if not isinstance(counts, dict) or not all(_is_int(counts.get(n)) for n in counted):
            problems.append(f"counts is not an object of {', '.join(counted)}")
        ranges = manifest.get("ranges")
        if not isinstance(ranges, list):
            problems.append("ranges is not a list")
        for problem in problems:
            self.fail(ExportFailureKind.MALFORMED, problem, MANIFEST)
        return not problems

    def _declarations(self, manifest: dict[str, Any]) -> list[str]:
        """Read the manifest's `failures` and `findings` (v2 on); what is wrong with them."""
        failures, findings = manifest.get("failures"), manifest.get("findings")
        if not isinstance(failures, list) or not isinstance(findings, list):
            return ["failures and findings are not lists"]
        problems: list[str] = []
        for index, item in enumerate(failures):
            failure = _declared_failure(item)
            if failure is None:
                problems.append(f"failures[{index}] is not a declarable failure")
            else:
                self.declared.append(failure)
        for index, item in enumerate(findings):
            finding = _finding(item)
            if finding is None:
                problems.append(f"findings[{index}] is not a finding")
            else:
                self.report.findings.append(finding)
        return problems

    def _log_declarations(self, manifest: dict[str, Any]) -> list[str]:
        """Read the manifest's `tlog` section (v3); what is wrong with it."""
        items = manifest.get("tlog")
        if not isinstance(items, list):
            return ["tlog is not a list"]
        problems: list[str] = []
        for index, item in enumerate(items):
            decl = parse_declaration(item)
            if isinstance(decl, str):
                problems.append(f"tlog[{index}]: {decl}")
            elif any(d.stream == decl.stream for d in self.log_declarations):
                problems.append(f"tlog[{index}]: a second entry for stream {decl.stream!r}")
            else:
                self.log_declarations.append(decl)
        return problems

    # -- files --------------------------------------------------------------------------

    def _files(self, files: dict[str, str]) -> None:
        for name, expected in sorted(files.items()):
            if name not in data_files(self.format):
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
            self.ranges[stream] = RangeSpec(
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
        if self.format != FORMAT:
            return
        have = sum(len(p) for p in self.log_proofs.values())
        if have != counts["proofs"]:
            self.fail(
                ExportFailureKind.NOT_IN_LOG
                if have < counts["proofs"]
                else ExportFailureKind.INCLUSION,
                f"the manifest counts {counts['proofs']} proofs, the file has {have}",
                TLOG,
            )
        listed = sum(len(d.not_in_log) for d in self.log_declarations)
        if listed != counts["not_in_log"]:
            self.fail(
                ExportFailureKind.MALFORMED,
                f"counts.not_in_log is {counts['not_in_log']}, the tlog section lists {listed}",
                MANIFEST,
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
            computed = self._content(name, number, rec, line)
            intact = computed == stored
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
                Element(
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
            # The log proves the first full record read for a sequence; any other one is
            # already an extra_record of the walk.
            self.leaves.setdefault(stream, {}).setdefault(seq, Leaf(computed, selected, intact))
        if rows is not None:
            for _ in rows:
                self.fail(
                    ExportFailureKind.CSV_MISMATCH,
                    f"a row with no record in {RECORDS}",
                    RECORDS_CSV,
                    self._csv_line,
                )

    def _content(self, name: str, number: int, rec: dict[str, Any], line: bytes) -> str | None:
        """The hash of the record's content (None when it has none); a failure when it is
        not the record's event.hash or the line is not canonical."""
        stream, seq = rec[f.STREAM], rec[f.EVENT_SEQUENCE]
        try:
            computed = record_hash(rec)
            canonical = canonicalize(rec)
        except CanonicalizationError as exc:
            self.fail(ExportFailureKind.MALFORMED, exc.message, name, number, stream, seq)
            return None
        if computed != rec[f.EVENT_HASH]:
            self.fail(
                ExportFailureKind.MODIFIED_RECORD,
                MODIFIED_DETAIL,
                name,
                number,
                stream,
                seq,
            )
            return computed
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
        return computed

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
                Element(
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

    def _add(self, element: Element) -> None:
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
                if header != csv_header(self.format):
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
        verdict = None
        if self.format != FORMAT_V1:
            verdict = record_verdict(stream, seq, self.declared, self.report.findings)
        try:
            expected = csv_row(rec, verdict)
        except CanonicalizationError:
            return  # the record itself is reported as malformed
        if row != expected:
            columns = [
                name
                for name, a, b in itertools.zip_longest(csv_header(self.format), row, expected)
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

    def _walk(self, r: RangeSpec, elements: list[Element]) -> None:
        self.report.ranges.append(walk(r, elements, self.fail))

    # -- the transparency log (v3) --------------------------------------------------------

    def _log_lines(self) -> None:
        """Read tlog.ndjson: per stream (in stream order) its checkpoint line, then its
        inclusion lines in sequence order."""
        last: tuple[str, int] | None = None  # (stream, sequence); 0: the checkpoint line
        for number, line in self._lines(TLOG):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self.fail(ExportFailureKind.MALFORMED, f"not JSON: {exc}", TLOG, number)
                continue
            item = parse_line(doc, number)
            if isinstance(item, str):
                stream = doc.get("stream") if type(doc) is dict else None
                self.fail(
                    ExportFailureKind.MALFORMED,
                    f"not a tlog line: {item}",
                    TLOG,
                    number,
                    stream if isinstance(stream, str) else None,
                )
                continue
            seq = item.sequence if isinstance(item, ProofLine) else None
            if canonicalize(doc) != line.rstrip(b"\r\n"):
                self.fail(
                    ExportFailureKind.MALFORMED,
                    "line is not the canonical (RFC 8785) form of its object",
                    TLOG,
                    number,
                    item.stream,
                    seq,
                )
            here = (item.stream, seq or 0)
            if last is not None and here <= last:
                self.fail(
                    ExportFailureKind.MALFORMED,
                    "out of order: each stream's checkpoint line, then its proofs by "
                    "sequence, streams in order",
                    TLOG,
                    number,
                    item.stream,
                    seq,
                )
            else:
                last = here
            if isinstance(item, CheckpointLine):
                if item.stream in self.log_checkpoints:
                    continue  # out of order, reported above
                self.log_checkpoints[item.stream] = item
            else:
                self.log_proofs.setdefault(item.stream, []).append(item)

    def _logs(self) -> None:
        declared = {d.stream: d for d in self.log_declarations}
        tenant = self.report.tenant or ""
        for index, report in enumerate(self.report.ranges):
            decl = declared.pop(report.stream, None)
            if decl is None:
                self.fail(
                    ExportFailureKind.MALFORMED,
                    "the manifest's tlog section has no entry for the range",
                    MANIFEST,
                    stream=report.stream,
                )
                continue
            log = check_log(
                decl,
                tenant,
                self.log_checkpoints.pop(decl.stream, None),
                self.log_proofs.pop(decl.stream, []),
                self.leaves.get(decl.stream, {}),
                self.service_key.key,
                self.fail,
                policy=self.policy,
                require_log=self.require_log,
            )
            self.report.ranges[index] = replace(report, log=log)
        for stream in sorted(declared):
            self.fail(
                ExportFailureKind.MALFORMED,
                "the manifest's tlog section names a stream with no range",
                MANIFEST,
                stream=stream,
            )
        # Lines of streams the manifest's tlog section does not name prove nothing.
        for cp in self.log_checkpoints.values():
            self.fail(
                ExportFailureKind.LOG_CHECKPOINT,
                "a checkpoint of a stream the manifest's tlog section does not name",
                TLOG,
                cp.line,
                cp.stream,
            )
        for proofs in self.log_proofs.values():
            for p in proofs:
                self.fail(
                    ExportFailureKind.INCLUSION,
                    "a proof for a stream the manifest's tlog section does not name",
                    TLOG,
                    p.line,
                    p.stream,
                    p.sequence,
                )


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


def _declared_failure(item: Any) -> ExportFailure | None:
    if type(item) is not dict or set(item) != {
        "kind",
        "file",
        "line",
        "stream",
        "sequence",
        "detail",
    }:
        return None
    try:
        kind = ExportFailureKind(item["kind"])
    except ValueError:
        return None
    file, line, stream, seq = item["file"], item["line"], item["stream"], item["sequence"]
    if not (
        kind.declarable
        and (file is None or file in (RECORDS, LINKS, CHECKPOINTS, MANIFEST, TLOG))
        and (line is None or (_is_int(line) and line >= 1))
        and (stream is None or isinstance(stream, str))
        and (seq is None or _is_int(seq))
        and isinstance(item["detail"], str)
    ):
        return None
    return ExportFailure(kind, file, line, stream, seq, item["detail"], declared=True)


def _finding(item: Any) -> Finding | None:
    if type(item) is not dict or set(item) != {"kind", "stream", "sequence", "detail"}:
        return None
    try:
        kind = FindingKind(item["kind"])
    except ValueError:
        return None
    stream, seq, detail = item["stream"], item["sequence"], item["detail"]
    if not (isinstance(stream, str) and _is_int(seq) and seq >= 1 and isinstance(detail, str)):
        return None
    return Finding(kind, stream, seq, detail)
