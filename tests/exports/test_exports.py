"""Export bundles end to end: really sealed streams, real signatures, real tampering.

Every tamper test starts from a fresh copy of one bundle, changes it the way an attacker
would (with or without the service key), and checks the verifier names the right kind of
failure at the right place.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit.errors import InvalidInputError, UsageError
from audit.exports import (
    ExportFailureKind,
    ExportReport,
    verify_export,
    write_export,
)
from audit.exports.bundle import csv_header, csv_row, manifest_message
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy, record_hash
from audit.integrity.digest import sha256_hex
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer, Verifier
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer

K = ExportFailureKind
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TENANT = "acme"
ACTORS = ("alice", "bob", "carol")
WHO = "bob"
QUERY = {"actor": "bob", "from": "2026-11-21T00:00:00Z", "to": "2026-11-22T00:00:00Z"}
FORMULA = '=HYPERLINK("http://evil.example/x","click")\nsecond line'  # a multi-line cell
Record = dict[str, Any]
Location = tuple[str | None, int | None, str | None, int | None]


def event(stream: str, i: int) -> AuditEvent:
    """Event i of a stream: actors take turns; every value unique to it carries a marker."""
    actor = ACTORS[i % len(ACTORS)]
    failed = actor == WHO and i == 4
    return AuditEvent(
        action=EventAction.JOB_FAILED if failed else EventAction.FACE_SWAPPED,
        outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
        timestamp=T0 + timedelta(seconds=i),
        actor=actor,
        client_ip=f"198.51.{100 + int(stream[-1])}.{i + 1}",  # unique to the event
        session=f"sess-{stream}-{actor}",
        target=f"/srv/uploads/{stream}/clip-{i}.mp4",
        job_id=f"job-{stream}-{i}",
        error_message=FORMULA if failed else None,
        metadata={
            "marker": f"marker-{stream}-{i}",
            "note": 'a "quoted", comma\nand newline' if failed else "plain",
            "blend_ratio": 0.75,
        },
    )


def seal_stream(
    stream: str, signer: Signer, keyring: Keyring, n: int, *, close: bool = True
) -> list[Record]:
    sealer = Sealer(
        ChainWriter(stream, TENANT, signer, policy=CheckpointPolicy(5, None)),
        Pseudonymizer(keyring, TENANT),
    )
    sealed = []
    for i in range(n):
        sealed += sealer.seal(event(stream, i))
    if close:
        sealed += sealer.close(T0 + timedelta(hours=1))
    return [orjson.loads(s.line) for s in sealed]


def fetch(streams: dict[str, list[Record]], selected: set[tuple[str, int]]) -> list[Record]:
    """What the service fetches with the store's scan: per stream, from the first selected
    record through the first checkpoint after the last one (or the stream's end)."""
    out: list[Record] = []
    for stream, records in streams.items():
        seqs = [seq for name, seq in selected if name == stream]
        if not seqs:
            continue
        lo, hi = min(seqs), max(seqs)
        end = next(
            (
                r["event.sequence"]
                for r in records
                if r["event.sequence"] >= hi and r["event.action"] == "audit.checkpoint"
            ),
            records[-1]["event.sequence"],
        )
        out += [r for r in records if lo <= r["event.sequence"] <= end]
    return out


@dataclass(frozen=True)
class World:
    streams: dict[str, list[Record]]
    stream_signers: dict[str, Signer]
    service: Signer
    selected: set[tuple[str, int]]
    pristine: Path

    @property
    def public_keys(self) -> dict[str, bytes]:
        return {name: s.verifier.pem() for name, s in self.stream_signers.items()}

    def record(self, stream: str, seq: int) -> Record:
        return self.streams[stream][seq - 1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    keyring = Keyring.generate()
    signers = {name: Signer.generate() for name in ("cam-1", "cam-2", "cam-3")}
    streams = {
        "cam-1": seal_stream("cam-1", signers["cam-1"], keyring, 30),
        "cam-2": seal_stream("cam-2", signers["cam-2"], keyring, 20),
        # Still open: its last records are not covered by any checkpoint yet.
        "cam-3": seal_stream("cam-3", signers["cam-3"], keyring, 11, close=False),
    }
    bob = Pseudonymizer(keyring, TENANT).pseudonym(PiiKind.USER, WHO)
    selected = {
        (name, r["event.sequence"])
        for name, records in streams.items()
        for r in records
        if r.get("user.hash") == bob and r["event.sequence"] > 1
    }
    service = Signer.generate()
    pristine = tmp_path_factory.mktemp("exports") / "bundle"
    write_export(
        pristine,
        fetch(streams, selected),
        selected,
        {name: s.verifier.pem() for name, s in signers.items()},
        QUERY,
        service,
        tenant=TENANT,
    )
    return World(streams, signers, service, selected, pristine)


@pytest.fixture
def bundle(world: World, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(world.pristine, copy)
    return copy


# -- helpers --------------------------------------------------------------------------


def check(bundle: Path, world: World, key: Verifier | None = None) -> ExportReport:
    return verify_export(bundle, key or world.service.verifier)


def at(report: ExportReport, kind: ExportFailureKind) -> set[Location]:
    return {(x.file, x.line, x.stream, x.sequence) for x in report.of_kind(kind)}


def kinds(report: ExportReport) -> set[str]:
    return set(report.counts)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_lines(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in content))


def manifest(bundle: Path) -> Record:
    doc: Record = orjson.loads((bundle / "manifest.json").read_bytes())
    return doc


def save_manifest(bundle: Path, doc: Record, *, resign_with: Signer | None = None) -> None:
    (bundle / "manifest.json").write_bytes(canonicalize(doc) + b"\n")
    if resign_with is not None:
        signature = resign_with.sign(manifest_message(doc))
        (bundle / "manifest.sig").write_bytes(base64.b64encode(signature) + b"\n")


def refresh_file_hashes(bundle: Path, *, resign_with: Signer | None = None) -> Record:
    """Make the manifest's file hashes match again; re-signs only with a service key."""
    doc = manifest(bundle)
    doc["files"] = {name: sha256_hex((bundle / name).read_bytes()) for name in doc["files"]}
    save_manifest(bundle, doc, resign_with=resign_with)
    return doc


def line_of(bundle: Path, name: str, stream: str, seq: int) -> int:
    key = "stream" if name == "links.ndjson" else "ffaudit.stream"
    seq_key = "sequence" if name == "links.ndjson" else "event.sequence"
    for number, line in enumerate(lines(bundle / name), start=1):
        doc = orjson.loads(line)
        if doc[key] == stream and doc[seq_key] == seq:
            return number
    raise AssertionError(f"{stream}:{seq} not in {name}")


def elements(bundle: Path) -> dict[tuple[str, int], tuple[str, Record]]:
    """Every element of the bundle by (stream, sequence): (file, parsed line)."""
    out: dict[tuple[str, int], tuple[str, Record]] = {}
    for name in ("records.ndjson", "checkpoints.ndjson"):
        for line in lines(bundle / name):
            doc = orjson.loads(line)
            out[doc["ffaudit.stream"], doc["event.sequence"]] = (name, doc)
    for line in lines(bundle / "links.ndjson"):
        doc = orjson.loads(line)
        out[doc["stream"], doc["sequence"]] = ("links.ndjson", doc)
    return out


def rewrite(bundle: Path, items: dict[tuple[str, int], tuple[str, Record]]) -> None:
    """Write every file from `items` as the writer would (records.csv included)."""
    by_file: dict[str, list[bytes]] = {
        "records.ndjson": [],
        "checkpoints.ndjson": [],
        "links.ndjson": [],
    }
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\r\n")
    rows.writerow(csv_header())
    for key in sorted(items):
        name, doc = items[key]
        by_file[name].append(canonicalize(doc))
        if name == "records.ndjson":
            rows.writerow(csv_row(doc, "ok"))
    for name, content in by_file.items():
        write_lines(bundle / name, content)
    (bundle / "records.csv").write_bytes(text.getvalue().encode())


def insider_rehash(
    bundle: Path, world: World, stream: str, seq: int, edit: Callable[[Record], None]
) -> None:
    """Someone holding the service key but not the stream's key edits a record and
    recomputes every hash after it until the chain joins up again, then re-signs the
    manifest: all the service key can do."""
    items = elements(bundle)
    name, doc = items[stream, seq]
    edit(doc)
    doc["event.hash"] = record_hash(doc)
    new_hash, nxt = doc["event.hash"], seq + 1
    while (stream, nxt) in items:
        name, doc = items[stream, nxt]
        doc["ffaudit.prev"] = new_hash
        if name == "links.ndjson":
            break  # a stub's hash cannot be recomputed, and nothing needs it to be
        doc["event.hash"] = record_hash(doc)
        new_hash, nxt = doc["event.hash"], nxt + 1
    rewrite(bundle, items)
    doc = manifest(bundle)
    for r in doc["ranges"]:
        if r["stream"] == stream:
            last = items[stream, r["last_sequence"]][1]
            r["last_hash"] = last["event.hash"]
    save_manifest(bundle, doc)
    refresh_file_hashes(bundle, resign_with=world.service)


def csv_lines(bundle: Path) -> list[int]:
    """The physical line each data row of records.csv starts on."""
    text = io.StringIO((bundle / "records.csv").read_text(encoding="utf-8"), newline="")
    reader = csv.reader(text)
    next(reader)
    starts: list[int] = []
    while True:
        start = reader.line_num + 1
        if next(reader, None) is None:
            return starts
        starts.append(start)


def ffaudit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


def pubkey_file(tmp_path: Path, signer: Signer, name: str = "service.pub") -> Path:
    path = tmp_path / name
    path.write_bytes(signer.verifier.pem())
    return path


def selected_before(world: World, stream: str, follower: str) -> int:
    """A selected record whose successor is a checkpoint ("checkpoint") or a stub ("stub")."""
    for name, seq in sorted(world.selected):
        if name != stream or seq + 1 > len(world.streams[stream]):
            continue
        nxt = world.record(stream, seq + 1)
        is_cp = nxt["event.action"] == "audit.checkpoint"
        if (follower == "checkpoint") == is_cp and (stream, seq + 1) not in world.selected:
            return seq
    raise AssertionError(f"no selected record of {stream} before a {follower}")


# -- an intact bundle -----------------------------------------------------------------


def test_bundle_holds_the_selection_and_verifies(world: World) -> None:
    report = check(world.pristine, world)
    assert report.ok, [f.describe() for f in report.failures]
    assert report.tenant == TENANT
    assert report.query == QUERY

    got = [orjson.loads(line) for line in lines(world.pristine / "records.ndjson")]
    want = [world.record(stream, seq) for stream, seq in sorted(world.selected)]
    assert got == want
    assert lines(world.pristine / "records.ndjson") == [canonicalize(r) for r in want]

    doc = manifest(world.pristine)
    assert doc["format"] == "ffaudit.export.v2"
    assert doc["failures"] == []
    assert doc["findings"] == []
    assert doc["service_key_fingerprint"] == world.service.verifier.fingerprint
    assert sorted(doc["files"]) == [
        "checkpoints.ndjson",
        "links.ndjson",
        "records.csv",
        "records.ndjson",
        "service.pub",
    ]
    assert doc["counts"]["records"] == len(world.selected)
    by_stream = {r["stream"]: r for r in doc["ranges"]}
    assert sorted(by_stream) == ["cam-1", "cam-2", "cam-3"]
    for stream, r in by_stream.items():
        seqs = [seq for name, seq in world.selected if name == stream]
        assert r["first_sequence"] == min(seqs)
        assert r["first_prev"] == world.record(stream, min(seqs))["ffaudit.prev"]
        assert r["last_hash"] == world.record(stream, r["last_sequence"])["event.hash"]
        assert r["key_fingerprint"] == world.stream_signers[stream].verifier.fingerprint
    # Closed streams end their range on the checkpoint after the last selected record.
    assert world.record("cam-1", by_stream["cam-1"]["last_sequence"])["event.action"] == (
        "audit.checkpoint"
    )
    assert by_stream["cam-1"]["signed_through"] == by_stream["cam-1"]["last_sequence"]
    # The open stream's tail is after its last checkpoint: signed_through says so.
    cam3 = by_stream["cam-3"]
    assert 0 < cam3["signed_through"] < cam3["last_sequence"]
    summaries = {r.stream: r for r in report.ranges}
    assert summaries["cam-3"].signed_through == cam3["signed_through"]
    total = sum(len(lines(world.pristine / n)) for n in ("records.ndjson", "links.ndjson"))
    total += len(lines(world.pristine / "checkpoints.ndjson"))
    assert total == sum(r["last_sequence"] - r["first_sequence"] + 1 for r in doc["ranges"])
    assert (world.pristine / "service.pub").read_bytes() == world.service.verifier.pem()


def test_cli_verifies_and_exits_by_outcome(world: World, bundle: Path, tmp_path: Path) -> None:
    pub = pubkey_file(tmp_path, world.service)
    ok = ffaudit("verify-export", str(bundle), "--pubkey", str(pub))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"OK: {len(world.selected)} records in 3 ranges verified" in ok.stdout

    as_json = ffaudit("verify-export", str(bundle), "--pubkey", str(pub), "--json")
    assert as_json.returncode == 0
    doc = orjson.loads(as_json.stdout)
    assert doc["ok"] is True
    assert doc["failures"] == []
    assert {r["stream"] for r in doc["ranges"]} == {"cam-1", "cam-2", "cam-3"}

    pinned = pubkey_file(tmp_path, world.stream_signers["cam-2"], "cam-2.pub")
    also = ffaudit(
        "verify-export", str(bundle), "--pubkey", str(pub), "--stream-pubkey", f"cam-2={pinned}"
    )
    assert also.returncode == 0, also.stdout

    content = lines(bundle / "records.ndjson")
    content[0] = content[0].replace(b'"event.outcome":"success"', b'"event.outcome":"failure"')
    write_lines(bundle / "records.ndjson", content)
    failed = ffaudit("verify-export", str(bundle), "--pubkey", str(pub))
    assert failed.returncode == 1
    assert "FAIL modified_record: records.ndjson, line 1" in failed.stdout
    assert "FAIL file_hash: records.ndjson" in failed.stdout

    missing = ffaudit("verify-export", str(tmp_path / "nope"), "--pubkey", str(pub))
    assert missing.returncode == 2
    assert "not a directory" in missing.stderr
    not_a_key = ffaudit("verify-export", str(bundle), "--pubkey", str(pub.parent / "nope.pem"))
    assert not_a_key.returncode == 2
    # The bundle's own service.pub proves only self-consistency: refused unless asked for.
    bundled = ffaudit("verify-export", str(bundle), "--pubkey", str(bundle / "service.pub"))
    assert bundled.returncode == 2
    assert "inside the bundle" in bundled.stderr
    bad_pin = ffaudit(
        "verify-export", str(bundle), "--pubkey", str(pub), "--stream-pubkey", "cam-2"
    )
    assert bad_pin.returncode == 2


def test_nothing_of_unselected_records_leaves_the_service(world: World) -> None:
    blob = b"".join(p.read_bytes() for p in sorted(world.pristine.iterdir()))
    doc = manifest(world.pristine)
    ranges = {r["stream"]: (r["first_sequence"], r["last_sequence"]) for r in doc["ranges"]}
    bob = world.record(*min(world.selected))["user.hash"]
    hidden = 0
    for stream, records in world.streams.items():
        for r in records:
            seq = r["event.sequence"]
            if (stream, seq) in world.selected or r["event.action"] == "audit.checkpoint":
                continue
            assert r["user.hash"] != bob
            for name in ("user.hash", "ffaudit.session.hash"):  # other people
                assert r[name].encode() not in blob, (stream, seq, name)
            for name in ("ffaudit.target.hash", "ffaudit.client.ip_hash"):  # this event's
                assert r[name].encode() not in blob, (stream, seq, name)
            for value in (r["ffaudit.metadata"]["marker"], r["trace.id"], r["event.id"]):
                assert orjson.dumps(value) not in blob, (stream, seq, value)  # as a JSON string
            first, last = ranges[stream]
            # Inside a range only the hash travels, as a link stub; the hash of the record
            # before the range is its first record's ffaudit.prev.
            assert (r["event.hash"].encode() in blob) == (first - 1 <= seq <= last)
            hidden += 1
    assert hidden > len(world.selected)  # two other actors
    for stream, seq in world.selected:
        assert world.record(stream, seq)["ffaudit.metadata"]["marker"].encode() in blob


def test_stub_lines_carry_exactly_four_members(world: World) -> None:
    for line in lines(world.pristine / "links.ndjson"):
        assert sorted(orjson.loads(line)) == ["event.hash", "ffaudit.prev", "sequence", "stream"]


def test_csv_is_quoted_and_neutralises_formulas(world: World) -> None:
    text = (world.pristine / "records.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0][2] == "'@timestamp"  # even the header would start a formula
    assert len(rows) == len(world.selected) + 1
    columns = rows[0]
    failed = [row for row in rows[1:] if row[columns.index("error.message")]]
    assert failed
    for row in failed:
        assert row[columns.index("error.message")] == "'" + FORMULA
        metadata = orjson.loads(row[columns.index("ffaudit.metadata")])
        assert metadata["note"] == 'a "quoted", comma\nand newline'
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


def test_every_record_selected_is_proven_by_the_producer(world: World, tmp_path: Path) -> None:
    records = world.streams["cam-2"]
    everything = {("cam-2", r["event.sequence"]) for r in records}
    out = tmp_path / "all"
    query = {"stream": "cam-2"}
    write_export(out, records, everything, world.public_keys, query, world.service, tenant=TENANT)
    report = check(out, world)
    assert report.ok, [f.describe() for f in report.failures]
    assert lines(out / "links.ndjson") == []
    assert lines(out / "checkpoints.ndjson") == []  # selected checkpoints are records
    (summary,) = report.ranges
    assert summary.producer_signed == tuple(range(1, len(records) + 1))


def test_producer_proof_stops_at_stubs(world: World) -> None:
    report = check(world.pristine, world)
    proven = {(r.stream, seq) for r in report.ranges for seq in r.producer_signed}
    before_cp = selected_before(world, "cam-1", "checkpoint")
    before_stub = selected_before(world, "cam-1", "stub")
    assert ("cam-1", before_cp) in proven
    assert ("cam-1", before_stub) not in proven
    # Every selected record the key does not reach is named, with the reason.
    unproven = {(r.stream, seq): why for r in report.ranges for seq, why in r.unproven}
    assert "stub" in unproven["cam-1", before_stub]
    for r in report.ranges:
        assert len(r.producer_signed) + len(r.unproven) == r.records


# -- tampering ------------------------------------------------------------------------


def edit_first_record(bundle: Path) -> tuple[str, int]:
    content = lines(bundle / "records.ndjson")
    doc = orjson.loads(content[2])
    doc["event.outcome"] = "failure" if doc["event.outcome"] == "success" else "success"
    content[2] = canonicalize(doc)
    write_lines(bundle / "records.ndjson", content)
    return doc["ffaudit.stream"], doc["event.sequence"]


def test_edited_record_with_manifest_untouched(world: World, bundle: Path) -> None:
    stream, seq = edit_first_record(bundle)
    report = check(bundle, world)
    assert at(report, K.MODIFIED_RECORD) == {("records.ndjson", 3, stream, seq)}
    assert at(report, K.FILE_HASH) == {("records.ndjson", None, None, None)}
    assert at(report, K.CSV_MISMATCH) == {("records.csv", csv_lines(bundle)[2], stream, seq)}
    assert K.MANIFEST_SIGNATURE.value not in kinds(report)


def test_edited_record_with_file_hash_recomputed(world: World, bundle: Path) -> None:
    stream, seq = edit_first_record(bundle)
    refresh_file_hashes(bundle)
    report = check(bundle, world)
    assert at(report, K.MODIFIED_RECORD) == {("records.ndjson", 3, stream, seq)}
    assert at(report, K.MANIFEST_SIGNATURE) == {("manifest.json", None, None, None)}
    assert K.FILE_HASH.value not in kinds(report)


def test_dropped_record(world: World, bundle: Path) -> None:
    content = lines(bundle / "records.ndjson")
    dropped = orjson.loads(content.pop(4))
    write_lines(bundle / "records.ndjson", content)
    report = check(bundle, world)
    where = (None, None, dropped["ffaudit.stream"], dropped["event.sequence"])
    assert where in at(report, K.MISSING_RECORD)
    assert ("records.ndjson", None, None, None) in at(report, K.MISSING_RECORD)  # the count
    assert at(report, K.FILE_HASH) == {("records.ndjson", None, None, None)}
    assert K.BROKEN_LINK.value not in kinds(report)


def test_added_record_from_outside_the_range(world: World, bundle: Path) -> None:
    doc = manifest(bundle)
    cam2 = next(r for r in doc["ranges"] if r["stream"] == "cam-2")
    outsider = world.record("cam-2", cam2["last_sequence"] + 1)
    content = lines(bundle / "records.ndjson")
    # cam-2 sorts before cam-3: insert right after cam-2's records, keeping the order.
    index = max(
        i for i, line in enumerate(content) if orjson.loads(line)["ffaudit.stream"] == "cam-2"
    )
    content.insert(index + 1, canonicalize(outsider))
    write_lines(bundle / "records.ndjson", content)
    report = check(bundle, world)
    where = ("records.ndjson", index + 2, "cam-2", outsider["event.sequence"])
    assert where in at(report, K.EXTRA_RECORD)
    assert K.MALFORMED.value not in kinds(report)
    assert K.MODIFIED_RECORD.value not in kinds(report)


def test_added_fabricated_record_inside_the_range(world: World, bundle: Path) -> None:
    # A forger copies a stub's place and links and invents the content around them.
    items = elements(bundle)
    stream, seq = next(k for k, (name, _) in sorted(items.items()) if name == "links.ndjson")
    fake = dict(world.record(*sorted(world.selected)[0]))
    fake.update({"event.sequence": seq, "ffaudit.prev": items[stream, seq][1]["ffaudit.prev"]})
    fake["event.hash"] = record_hash(fake)
    content = lines(bundle / "records.ndjson")
    keys = [(orjson.loads(x)["ffaudit.stream"], orjson.loads(x)["event.sequence"]) for x in content]
    index = sum(1 for k in keys if k < (stream, seq))
    content.insert(index, canonicalize(fake))
    write_lines(bundle / "records.ndjson", content)
    report = check(bundle, world)
    assert ("records.ndjson", index + 1, stream, seq) in at(report, K.EXTRA_RECORD)
    assert K.MODIFIED_RECORD.value not in kinds(report)


def test_swapped_lines(world: World, bundle: Path) -> None:
    content = lines(bundle / "records.ndjson")
    content[1], content[2] = content[2], content[1]
    write_lines(bundle / "records.ndjson", content)
    moved = orjson.loads(content[2])
    report = check(bundle, world)
    where = ("records.ndjson", 3, moved["ffaudit.stream"], moved["event.sequence"])
    assert where in at(report, K.MALFORMED)
    assert at(report, K.FILE_HASH) == {("records.ndjson", None, None, None)}
    # Every record is still there and intact: only the order is wrong.
    assert kinds(report) <= {K.MALFORMED.value, K.FILE_HASH.value, K.CSV_MISMATCH.value}


def test_edited_stub_hash(world: World, bundle: Path) -> None:
    items = elements(bundle)
    # A stub followed by a full record: the disagreeing hash can only be the stub's.
    stream, seq = next(
        (stream, seq)
        for (stream, seq), (name, _) in sorted(items.items())
        if name == "links.ndjson"
        and (stream, seq + 1) in items
        and items[stream, seq + 1][0] != "links.ndjson"
    )
    number = line_of(bundle, "links.ndjson", stream, seq)
    content = lines(bundle / "links.ndjson")
    doc = orjson.loads(content[number - 1])
    doc["event.hash"] = "f" * 64
    content[number - 1] = canonicalize(doc)
    write_lines(bundle / "links.ndjson", content)
    report = check(bundle, world)
    assert at(report, K.BROKEN_LINK) == {("links.ndjson", number, stream, seq)}
    assert at(report, K.FILE_HASH) == {("links.ndjson", None, None, None)}


def test_dropped_stub(world: World, bundle: Path) -> None:
    content = lines(bundle / "links.ndjson")
    dropped = orjson.loads(content.pop(3))
    write_lines(bundle / "links.ndjson", content)
    report = check(bundle, world)
    assert (None, None, dropped["stream"], dropped["sequence"]) in at(report, K.MISSING_RECORD)
    assert at(report, K.FILE_HASH) == {("links.ndjson", None, None, None)}


def test_stub_with_content_is_malformed(world: World, bundle: Path) -> None:
    content = lines(bundle / "links.ndjson")
    doc = orjson.loads(content[0])
    doc["user.hash"] = "0" * 64
    content[0] = canonicalize(doc)
    write_lines(bundle / "links.ndjson", content)
    report = check(bundle, world)
    assert ("links.ndjson", 1, doc["stream"], None) in at(report, K.MALFORMED)


@pytest.mark.parametrize("field", ["last_hash", "counts"])
def test_edited_manifest_fails_its_signature(world: World, bundle: Path, field: str) -> None:
    doc = manifest(bundle)
    if field == "last_hash":
        doc["ranges"][0]["last_hash"] = "a" * 64
    else:
        doc["counts"]["records"] -= 1
    save_manifest(bundle, doc)
    report = check(bundle, world)
    assert at(report, K.MANIFEST_SIGNATURE) == {("manifest.json", None, None, None)}
    if field == "last_hash":
        r = doc["ranges"][0]
        last = line_of(bundle, "checkpoints.ndjson", r["stream"], r["last_sequence"])
        assert at(report, K.RANGE_MISMATCH) == {
            ("checkpoints.ndjson", last, r["stream"], r["last_sequence"])
        }
    else:
        assert at(report, K.EXTRA_RECORD) == {("records.ndjson", None, None, None)}


def test_other_service_key_is_wrong_key(world: World, bundle: Path) -> None:
    report = check(bundle, world, Signer.generate().verifier)
    assert ("manifest.json", None, None, None) in at(report, K.WRONG_KEY)
    assert K.MANIFEST_SIGNATURE.value not in kinds(report)


def test_bundle_resigned_by_another_service_is_wrong_key(world: World, bundle: Path) -> None:
    impostor = Signer.generate()
    doc = manifest(bundle)
    doc["service_key_fingerprint"] = impostor.verifier.fingerprint
    (bundle / "service.pub").write_bytes(impostor.verifier.pem())
    save_manifest(bundle, doc)
    refresh_file_hashes(bundle, resign_with=impostor)
    report = check(bundle, world)
    assert at(report, K.WRONG_KEY) == {
        ("manifest.json", None, None, None),
        ("service.pub", None, None, None),
    }
    assert check(bundle, world, impostor.verifier).ok  # it is a good bundle, of someone else


def test_edited_csv(world: World, bundle: Path) -> None:
    content = (bundle / "records.csv").read_bytes().split(b"\r\n")
    content[1] = content[1].replace(b"face.swapped", b"face.detected", 1)
    assert b"face.detected" in content[1]
    (bundle / "records.csv").write_bytes(b"\r\n".join(content))
    report = check(bundle, world)
    first = orjson.loads(lines(bundle / "records.ndjson")[0])
    where = ("records.csv", 2, first["ffaudit.stream"], first["event.sequence"])
    assert at(report, K.CSV_MISMATCH) == {where}
    assert "event.action" in report.of_kind(K.CSV_MISMATCH)[0].detail
    assert at(report, K.FILE_HASH) == {("records.csv", None, None, None)}


def test_rehashed_chain_fails_its_checkpoint(world: World, bundle: Path) -> None:
    seq = selected_before(world, "cam-1", "checkpoint")
    insider_rehash(bundle, world, "cam-1", seq, lambda r: r.update({"event.outcome": "failure"}))
    report = check(bundle, world)
    cp = line_of(bundle, "checkpoints.ndjson", "cam-1", seq + 1)
    assert ("checkpoints.ndjson", cp, "cam-1", seq + 1) in at(report, K.BAD_CHECKPOINT)
    # Hashes and links are all consistent again and the manifest is properly signed: only
    # the producer's signature, which the service key cannot make, gives it away.
    assert kinds(report) == {K.BAD_CHECKPOINT.value}
    proven = {s for r in report.ranges if r.stream == "cam-1" for s in r.producer_signed}
    assert seq not in proven


def test_relinking_across_a_stub_rests_on_the_service_key(world: World, bundle: Path) -> None:
    """The documented limit (spec §10.4): a stub's hash cannot be recomputed without its
    content, so a holder of the service key can re-link across one. The report never
    claims the producer proves such a record."""
    seq = selected_before(world, "cam-1", "stub")
    before = check(bundle, world)
    insider_rehash(bundle, world, "cam-1", seq, lambda r: r.update({"event.outcome": "failure"}))
    after = check(bundle, world)
    assert after.ok
    for report in (before, after):
        proven = {s for r in report.ranges if r.stream == "cam-1" for s in r.producer_signed}
        assert seq not in proven


def test_dishonest_signed_through(world: World, bundle: Path) -> None:
    doc = manifest(bundle)
    cam3 = next(r for r in doc["ranges"] if r["stream"] == "cam-3")
    cam3["signed_through"] = cam3["last_sequence"]
    save_manifest(bundle, doc, resign_with=world.service)
    report = check(bundle, world)
    assert at(report, K.BAD_CHECKPOINT) == {("manifest.json", None, "cam-3", cam3["last_sequence"])}


def test_stub_after_the_closing_checkpoint(world: World, tmp_path: Path) -> None:
    # cam-2 exported through its closing checkpoint (a caller may fetch more than needed);
    # an insider then extends the range with a stub linking to the closing checkpoint's
    # hash, which anyone can read, and re-signs the manifest.
    bundle = tmp_path / "bundle"
    selected = {(name, seq) for name, seq in world.selected if name == "cam-2"}
    first = min(seq for _, seq in selected)
    records = [r for r in world.streams["cam-2"] if r["event.sequence"] >= first]
    write_export(bundle, records, selected, world.public_keys, QUERY, world.service, tenant=TENANT)
    doc = manifest(bundle)
    cam2 = next(r for r in doc["ranges"] if r["stream"] == "cam-2")
    closing = world.streams["cam-2"][-1]
    assert cam2["last_sequence"] == closing["event.sequence"]
    late = {
        "stream": "cam-2",
        "sequence": closing["event.sequence"] + 1,
        "event.hash": "c" * 64,
        "ffaudit.prev": closing["event.hash"],
    }
    items = elements(bundle)
    items["cam-2", late["sequence"]] = ("links.ndjson", late)
    rewrite(bundle, items)
    cam2["last_sequence"], cam2["last_hash"] = late["sequence"], late["event.hash"]
    doc["counts"]["links"] += 1
    save_manifest(bundle, doc)
    refresh_file_hashes(bundle, resign_with=world.service)
    report = check(bundle, world)
    number = line_of(bundle, "links.ndjson", "cam-2", late["sequence"])
    assert at(report, K.EXTRA_RECORD) == {("links.ndjson", number, "cam-2", late["sequence"])}
    assert kinds(report) == {K.EXTRA_RECORD.value}


def test_pinned_stream_key(world: World, bundle: Path) -> None:
    right = {"cam-1": world.stream_signers["cam-1"].verifier}
    assert verify_export(bundle, world.service.verifier, stream_keys=right).ok
    wrong = {"cam-1": world.stream_signers["cam-2"].verifier}
    report = verify_export(bundle, world.service.verifier, stream_keys=wrong)
    assert at(report, K.WRONG_KEY) == {("manifest.json", None, "cam-1", None)}


def test_missing_signature_and_unlisted_files(world: World, bundle: Path) -> None:
    (bundle / "manifest.sig").unlink()
    (bundle / "checkpoints.ndjson").unlink()
    (bundle / "notes.txt").write_text("trust me")
    report = check(bundle, world)
    assert at(report, K.MANIFEST_SIGNATURE) == {("manifest.sig", None, None, None)}
    assert at(report, K.FILE_HASH) == {
        ("checkpoints.ndjson", None, None, None),
        ("notes.txt", None, None, None),
    }
    assert K.MISSING_RECORD.value in kinds(report)  # the checkpoints' sequences


def test_not_a_bundle(world: World, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        check(tmp_path / "absent", world)
    report = check(tmp_path, world)
    assert at(report, K.MALFORMED) == {("manifest.json", None, None, None)}


# -- writing --------------------------------------------------------------------------


def test_never_overwrites(world: World, tmp_path: Path) -> None:
    records = world.streams["cam-2"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (taken, empty):
        with pytest.raises(UsageError, match="already exists"):
            write_export(
                target, records, set(), world.public_keys, {}, world.service, tenant=TENANT
            )
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]  # no temp left


def broken(world: World, how: str) -> tuple[list[Record], set[tuple[str, int]], str]:
    records = [dict(r) for r in world.streams["cam-2"]]
    selected = {("cam-2", 2)}
    tenant = TENANT
    if how == "modified":  # a row edited in the store, exported as a stub
        records[3]["event.outcome"] = "failure"
    elif how == "modified_selected":
        records[3]["event.outcome"] = "failure"
        selected.add(("cam-2", 4))
    elif how == "fork":
        rival = dict(records[3], **{"trace.id": "rival"})
        records.append(dict(rival, **{"event.hash": record_hash(rival)}))
    elif how == "hole":
        del records[6]
    elif how == "relinked":
        records[3]["ffaudit.prev"] = "b" * 64
        records[3]["event.hash"] = record_hash(records[3])
    elif how == "forged_checkpoint":
        closing = records[-1]  # nothing follows it, so only its signature can tell
        closing["ffaudit.checkpoint.records"] += 1
        closing["event.hash"] = record_hash(closing)
    elif how == "after_close":
        late = dict(records[-1], **{"event.sequence": len(records) + 1})
        late.pop("ffaudit.signature")
        late["ffaudit.prev"] = records[-1]["event.hash"]
        records.append(dict(late, **{"event.hash": record_hash(late)}))
    elif how == "unknown_selection":
        selected = {("cam-2", 999)}
    elif how == "other_tenant":
        tenant = "globex"
    return records, selected, tenant


@pytest.mark.parametrize("how", ["unknown_selection", "other_tenant"])
def test_refuses_input_that_is_not_the_tenants_records(
    world: World, tmp_path: Path, how: str
) -> None:
    records, selected, tenant = broken(world, how)
    with pytest.raises(InvalidInputError):
        write_export(
            tmp_path / "out", records, selected, world.public_keys, {}, world.service, tenant=tenant
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("how", "failures", "findings", "verdict_at"),
    [
        ("modified", set(), {("modified_in_store", 4)}, None),
        ("modified_selected", {("modified_record", 4)}, set(), 4),
        ("fork", set(), {("fork", 4)}, None),
        ("hole", {("missing_record", 7)}, set(), None),
        ("relinked", {("broken_link", 4)}, set(), None),
        ("forged_checkpoint", {("bad_checkpoint", 26)}, set(), None),
        ("after_close", {("extra_record", 27), ("bad_checkpoint", 27)}, set(), None),
    ],
)
def test_a_damaged_range_is_exported_as_evidence(
    world: World,
    tmp_path: Path,
    how: str,
    failures: set[tuple[str, int]],
    findings: set[tuple[str, int]],
    verdict_at: int | None,
) -> None:
    """Issue 13: an export whose range holds a tampered row answered 409. It is evidence
    either way: the writer states every failure (found with the verifier's own walk) and
    what only the service knows (findings) in the signed manifest; the verifier finds
    exactly the declared failures and calls the bundle authentic but damaged (exit 4)."""
    records, selected, tenant = broken(world, how)
    assert len(world.streams["cam-2"]) == 26  # the locations below depend on it
    out = tmp_path / "out"
    write_export(out, records, selected, world.public_keys, QUERY, world.service, tenant=tenant)
    doc = manifest(out)
    assert {(x["kind"], x["sequence"]) for x in doc["failures"]} == failures
    assert {(x["kind"], x["sequence"]) for x in doc["findings"]} == findings

    report = check(out, world)
    assert {(x.kind.value, x.sequence) for x in report.failures} == failures
    assert all(x.declared for x in report.failures)
    assert {(x.kind.value, x.sequence) for x in report.findings} == findings
    assert report.authentic
    assert report.damaged
    assert report.ok == (not failures)

    with (out / "records.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-1] == "verdict"
    verdicts = {int(row[1]): row[-1] for row in rows[1:]}
    assert verdicts[2] == "ok"
    if verdict_at is not None:
        assert verdicts[verdict_at] == "modified_record"

    result = ffaudit(
        "verify-export", str(out), "--pubkey", str(pubkey_file(tmp_path, world.service))
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "AUTHENTIC, DAMAGED CHAIN" in result.stdout
    for kind, _ in failures:
        assert f"FAIL {kind}" in result.stdout
        assert "(declared by the service)" in result.stdout
    for kind, seq in findings:
        assert f"SERVICE STATES {kind}: seq {seq}" in result.stdout


def test_an_undeclared_failure_is_not_authentic(world: World, tmp_path: Path) -> None:
    """Whoever holds the service key and hides a failure from the manifest (re-signing it)
    makes a bundle that is not authentic (exit 1); without the key, the signature fails."""
    records, selected, tenant = broken(world, "hole")
    out = tmp_path / "out"
    write_export(out, records, selected, world.public_keys, QUERY, world.service, tenant=tenant)
    doc = manifest(out)
    doc["failures"] = []
    save_manifest(out, doc)
    report = check(out, world)
    assert not report.authentic
    assert kinds(report) == {K.MANIFEST_SIGNATURE.value, K.MISSING_RECORD.value}
    save_manifest(out, doc, resign_with=world.service)
    report = check(out, world)
    assert not report.authentic
    assert [(x.kind, x.declared) for x in report.failures] == [(K.MISSING_RECORD, False)]
    pub = pubkey_file(tmp_path, world.service)
    assert ffaudit("verify-export", str(out), "--pubkey", str(pub)).returncode == 1

    # Declaring a failure the bundle does not show is a false statement: malformed.
    doc["failures"] = [
        {
            "kind": "broken_link",
            "file": "links.ndjson",
            "line": 1,
            "stream": "cam-2",
            "sequence": 3,
            "detail": "invented",
        }
    ]
    save_manifest(out, doc, resign_with=world.service)
    report = check(out, world)
    assert ("manifest.json", None, "cam-2", 3) in at(report, K.MALFORMED)
    assert not report.authentic


def test_the_manifest_states_the_filters_with_pseudonyms_never_the_raw_actor(
    tmp_path: Path,
) -> None:
    """Spec §10.2: `query` holds the filters as applied, the raw actor id replaced by its
    pseudonyms: a bundle leaves the service and must not carry the raw id past an erasure."""
    from audit.exports.routes import ExportRequest, manifest_query

    body = ExportRequest.model_validate(
        {
            "actor": "alice@example.com",
            "action": ["job.completed"],
            "file_hash": ["c" * 64],
            "since": "2026-11-01T00:00:00",
            "q": "no face",
        }
    )
    query = manifest_query("e1", body, ("b" * 64, "a" * 64))
    assert query == {
        "export_id": "e1",
        "filters": {
            "actor_hashes": ["a" * 64, "b" * 64],
            "action": ["job.completed"],
            "file_hash": ["c" * 64],
            "since": "2026-11-01T00:00:00.000000Z",
            "q": "no face",
        },
        "order": "asc",
    }
    assert "alice" not in str(query)


def test_the_specs_own_checker_agrees(world: World, tmp_path: Path) -> None:
    """The stand-alone checker printed in spec §10.5 (run as written) accepts an intact
    bundle and stops on a damaged one, so the spec's readers and the verifier agree."""
    spec = (Path(__file__).parents[2] / "docs" / "record-spec.md").read_text(encoding="utf-8")
    section = spec[spec.index("### 10.5") : spec.index("### 10.6")]
    code = section[section.index("```python\n") + 10 : section.rindex("```")]
    script = tmp_path / "check.py"
    script.write_text(code, encoding="utf-8")
    pub = pubkey_file(tmp_path, world.service)
    run = [sys.executable, str(script)]
    intact = subprocess.run([*run, str(world.pristine), str(pub)], capture_output=True, text=True)
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.strip() == f"OK: {len(world.selected)} records"
    records, selected, tenant = broken(world, "hole")
    out = tmp_path / "out"
    write_export(out, records, selected, world.public_keys, QUERY, world.service, tenant=tenant)
    damaged = subprocess.run([*run, str(out), str(pub)], capture_output=True, text=True)
    assert damaged.returncode != 0
    assert "KeyError" in damaged.stderr  # the spec's marker for missing_record
