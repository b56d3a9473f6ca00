"""Export bundles with transparency-log proofs (format v3), end to end.

The real service (SQLite control database and event store; PostgreSQL and Elasticsearch in
one test) ingests a sealed stream, its checkpointer signs the stream's log and a real
witness (`ffaudit witness serve`'s app on a loopback port) cosigns it; exports are made
through POST /v1/exports and downloaded file by file, then checked offline. Every tamper
test starts from a fresh copy of that bundle and changes it as someone holding the service
key would (re-hashing the files and re-signing the manifest), so that the failure left is
the one the transparency log alone catches.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.db.session import upgrade
from audit.errors import InvalidInputError
from audit.exports import ExportFailureKind, ExportReport, verify_export, write_export
from audit.exports.bundle import FORMAT, csv_header, csv_row, manifest_message
from audit.exports.logproofs import Placed, stream_log
from audit.exports.tlog import TLOG, LogProof, StreamLog
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy, record_hash
from audit.integrity.digest import sha256_hex
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import SIGNING_PUB, Keyring, Signer, keygen
from audit.integrity.merkle import EMPTY_ROOT, MemoryTree
from audit.integrity.notes import (
    Checkpoint,
    CosignatureSigner,
    Note,
    NoteSigner,
    NoteVerifier,
    Policy,
    parse_checkpoint,
    parse_note,
    parse_policy,
    sign_checkpoint,
    vkey_for,
)
from audit.integrity.pseudonym import PiiKind, Pseudonymizer
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from audit.settings import AuditSettings
from audit.tlog.service import Inclusion, TlogService
from audit.witness.app import create_app as create_witness_app
from audit.witness.settings import WitnessSettings
from tests.apptools import app_settings, bearer

K = ExportFailureKind
TENANT, STREAM = "acme", "cam-1"
ORIGIN = f"ffaudit/{TENANT}/{STREAM}"
WITNESS = "witness.example/w1"
ACTORS = ("alice", "bob", "carol")
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
Doc = dict[str, Any]
Location = tuple[str | None, int | None, str | None, int | None]


# -- the service, a witness, and what they export ------------------------------------------


def event(i: int) -> AuditEvent:
    actor = ACTORS[i % len(ACTORS)]
    return AuditEvent(
        action=EventAction.FACE_SWAPPED,
        outcome=Outcome.SUCCESS,
        timestamp=T0 + timedelta(seconds=i),
        actor=actor,
        session=f"s-{actor}",
        target=f"/in/{i}.png",
        job_id=f"job-{i}",
        metadata={"frame": i},
    )


@dataclass
class Stream:
    """A producer's sealed stream, continued batch by batch."""

    signer: Signer
    keyring: Keyring
    sealer: Sealer
    sent: int = 0

    @classmethod
    def new(cls) -> Stream:
        signer, keyring = Signer.generate(), Keyring.generate()
        sealer = Sealer(
            ChainWriter(STREAM, TENANT, signer, policy=CheckpointPolicy(5, None)),
            Pseudonymizer(keyring, TENANT),
        )
        return cls(signer, keyring, sealer)

    def batch(self, n: int) -> list[Doc]:
        out = [
            r.record for i in range(self.sent, self.sent + n) for r in self.sealer.seal(event(i))
        ]
        self.sent += n
        return out


def start(client: TestClient, stream: Stream, settings: AuditSettings) -> None:
    """Register the stream and give the tenant's keyring to the service (actor queries)."""
    client.post(
        "/v1/streams",
        headers=bearer(sub="root", roles=["admin"]),
        json={
            "stream": STREAM,
            "tenant": TENANT,
            "public_key_pem": stream.signer.verifier.pem().decode(),
        },
    ).raise_for_status()
    TenantKeyrings(settings.keyrings_dir).import_keyring(TENANT, stream.keyring.dumps())


def ingest(client: TestClient, records: list[Doc]) -> None:
    client.post(
        f"/v1/streams/{STREAM}/records",
        content=orjson.dumps(records),
        headers={**bearer(roles=["ingest"]), "content-type": "application/json"},
    ).raise_for_status()


def export(client: TestClient, out: Path, body: Doc) -> Path:
    """POST /v1/exports, then every file downloaded into `out`, as an auditor would."""
    made = client.post("/v1/exports", json=body, headers=bearer())
    assert made.status_code == 201, made.text
    answer = made.json()
    assert TLOG in answer["files"]
    out.mkdir(parents=True)
    for name in answer["files"]:
        got = client.get(f"/v1/exports/{answer['export_id']}/{name}", headers=bearer())
        assert got.status_code == 200, got.text
        (out / name).write_bytes(got.content)
    return out


def wait_cosigned(client: TestClient, size: int) -> str:
    """The cosigned checkpoint at `size` once the checkpointer has it from the witness."""
    deadline = time.monotonic() + 60
    while True:
        got = client.get(f"/v1/tlog/{STREAM}/checkpoint", headers=bearer())
        if got.status_code == 200 and parse_checkpoint(parse_note(got.text).text).size >= size:
            return str(got.text)
        assert time.monotonic() < deadline, f"no cosigned checkpoint at size {size}: {got.text}"
        time.sleep(0.1)


class WitnessServer:
    """A witness of one log, as `ffaudit witness serve` runs it, on a loopback port."""

    def __init__(self, tmp: Path, log: NoteVerifier) -> None:
        key = Signer.generate()
        (tmp / "witness.key").write_bytes(key.pem())
        (tmp / "witness-logs.policy").write_text(f"log {log.vkey()}\n")
        database = f"sqlite:///{tmp}/witness.db"
        upgrade(database)
        settings = WitnessSettings(
            name=WITNESS,
            key_file=tmp / "witness.key",
            logs_file=tmp / "witness-logs.policy",
            database_url=database,
        )
        self.cosigner = CosignatureSigner(WITNESS, key.key)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_witness_app(settings), host="127.0.0.1", port=port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive(), "the witness did not start"
            assert time.monotonic() < deadline, "the witness did not start in 30 s"
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@dataclass(frozen=True)
class Made:
    cosigned: Path  # bob's records, every proof against the witness-cosigned checkpoint
    signed_now: Path  # after more records, the witness down: a checkpoint signed for it
    service: Signer  # the service key, to play the insider who holds it
    pubkey: Path
    witness: NoteVerifier
    policy: Path  # requires the witness
    stream: Stream


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    tmp = tmp_path_factory.mktemp("tlog-exports")
    settings = app_settings(
        tmp, tlog_policy_file=tmp / "service.policy", tlog_checkpoint_interval_s=0.2
    )
    service = keygen(settings.service_keys_dir).signer
    log = vkey_for(ORIGIN, service.verifier.key)
    witness = WitnessServer(tmp, log)
    try:
        policy = f"log {log.vkey()}\nwitness w1 {witness.cosigner.verifier.vkey()} {witness.url}\n"
        (tmp / "service.policy").write_text(policy + "quorum w1\n")
        (tmp / "verifier.policy").write_text(
            f"witness w1 {witness.cosigner.verifier.vkey()}\nquorum w1\n"
        )
        stream = Stream.new()
        with TestClient(create_app(settings)) as client:
            start(client, stream, settings)
            records = stream.batch(30)
            ingest(client, records)
            wait_cosigned(client, len(records))
            cosigned = export(client, tmp / "cosigned", {"actor": "bob"})
            witness.stop()
            ingest(client, stream.batch(7))
            signed_now = export(client, tmp / "signed-now", {"actor": "bob"})
    finally:
        witness.stop()
    return Made(
        cosigned,
        signed_now,
        service,
        settings.service_keys_dir / SIGNING_PUB,
        witness.cosigner.verifier,
        tmp / "verifier.policy",
        stream,
    )


@pytest.fixture
def bundle(made: Made, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(made.cosigned, copy)
    return copy


# -- helpers ---------------------------------------------------------------------------------


def check(
    bundle: Path, made: Made, *, policy: bool = False, require_log: bool = False
) -> ExportReport:
    witnesses = parse_policy(made.policy.read_bytes()) if policy else None
    return verify_export(bundle, made.service.verifier, policy=witnesses, require_log=require_log)


def at(report: ExportReport, kind: ExportFailureKind) -> set[Location]:
    return {(x.file, x.line, x.stream, x.sequence) for x in report.of_kind(kind)}


def manifest(bundle: Path) -> Doc:
    doc: Doc = orjson.loads((bundle / "manifest.json").read_bytes())
    return doc


def ndjson(bundle: Path, name: str) -> list[Doc]:
    return [orjson.loads(line) for line in (bundle / name).read_bytes().splitlines()]


def write_ndjson(bundle: Path, name: str, docs: list[Doc]) -> None:
    (bundle / name).write_bytes(b"".join(canonicalize(d) + b"\n" for d in docs))


def resign(bundle: Path, service: Signer, edit: Callable[[Doc], None] | None = None) -> None:
    """What the service key's holder can do: rewrite records.csv from records.ndjson,
    re-hash every file, edit the manifest and sign it again."""
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\r\n")
    rows.writerow(csv_header(FORMAT))
    for record in ndjson(bundle, "records.ndjson"):
        rows.writerow(csv_row(record, "ok"))
    (bundle / "records.csv").write_bytes(text.getvalue().encode())
    doc = manifest(bundle)
    if edit is not None:
        edit(doc)
    doc["files"] = {name: sha256_hex((bundle / name).read_bytes()) for name in doc["files"]}
    (bundle / "manifest.json").write_bytes(canonicalize(doc) + b"\n")
    signature = service.sign(manifest_message(doc))
    (bundle / "manifest.sig").write_bytes(base64.b64encode(signature) + b"\n")


def proof_at(bundle: Path, seq: int) -> tuple[int, Doc]:
    """The 1-based line and object of the inclusion proof of `seq`."""
    for number, doc in enumerate(ndjson(bundle, TLOG), start=1):
        if doc["type"] == "inclusion" and doc["sequence"] == seq:
            return number, doc
    raise AssertionError(f"no proof of sequence {seq}")


def selected(bundle: Path) -> list[int]:
    return [r["event.sequence"] for r in ndjson(bundle, "records.ndjson")]


def full(bundle: Path) -> list[int]:
    """The sequences the bundle carries in full, selected or checkpoints."""
    names = ("records.ndjson", "checkpoints.ndjson")
    return sorted(r["event.sequence"] for name in names for r in ndjson(bundle, name))


def follower(bundle: Path, kind: str) -> int:
    """A selected sequence whose successor is a stub ("stub") or a checkpoint."""
    stubs = {s["sequence"] for s in ndjson(bundle, "links.ndjson")}
    checkpoints = {c["event.sequence"] for c in ndjson(bundle, "checkpoints.ndjson")}
    after = stubs if kind == "stub" else checkpoints
    return next(seq for seq in selected(bundle) if seq + 1 in after)


def only(report: ExportReport, kind: ExportFailureKind) -> None:
    assert set(report.counts) == {kind.value}, [x.describe() for x in report.failures]
    assert not report.authentic


def log_of(report: ExportReport) -> Any:
    [r] = report.ranges
    assert r.log is not None
    return r.log


def ffaudit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


# -- an export through the API ---------------------------------------------------------------


def test_every_selected_record_is_proven_by_the_cosigned_log(made: Made) -> None:
    report = check(made.cosigned, made, policy=True)
    assert report.ok, [x.describe() for x in report.failures]
    assert report.format == FORMAT == "ffaudit.export.v3"
    log = log_of(report)
    assert log.origin == ORIGIN
    assert log.cosigned
    assert log.witnesses == ("w1",)
    assert log.proven == tuple(selected(made.cosigned))
    assert len(log.proven) == 10  # bob: events 1, 4, ..., 28
    assert log.unproven == ()
    doc = manifest(made.cosigned)
    [entry] = doc["tlog"]
    assert entry["cosigned"] is True
    assert entry["not_in_log"] == []
    assert entry["origin"] == ORIGIN
    # One checkpoint, then a proof for every full record: the selection and the
    # checkpoints of the range, all against that checkpoint.
    lines = ndjson(made.cosigned, TLOG)
    assert lines[0]["type"] == "checkpoint"
    assert lines[0]["size"] == entry["size"]
    assert [p["sequence"] for p in lines[1:]] == full(made.cosigned)
    assert doc["counts"]["proofs"] == len(full(made.cosigned))
    assert doc["counts"]["not_in_log"] == 0
    note = parse_note(lines[0]["note"])
    assert {s.name for s in note.signatures} == {ORIGIN, WITNESS}


def test_a_checkpoint_is_signed_when_the_cosigned_one_does_not_cover_the_export(
    made: Made,
) -> None:
    """The witness was down when the second export was made: the newest cosigned
    checkpoint does not cover the new records, so the service signed one at the log's
    size and says it is not cosigned; a verifier requiring the witness refuses it."""
    [entry] = manifest(made.signed_now)["tlog"]
    assert entry["cosigned"] is False
    first = manifest(made.cosigned)["tlog"][0]["size"]
    assert entry["size"] > first
    report = check(made.signed_now, made)
    assert report.ok, [x.describe() for x in report.failures]
    assert log_of(report).proven == tuple(selected(made.signed_now))
    assert len(selected(made.signed_now)) > len(selected(made.cosigned))
    strict = check(made.signed_now, made, policy=True)
    only(strict, K.LOG_QUORUM)
    assert at(strict, K.LOG_QUORUM) == {(TLOG, 1, STREAM, None)}
    assert log_of(strict).proven == ()


def test_cli_reports_what_the_log_proves(made: Made) -> None:
    pub, policy = str(made.pubkey), str(made.policy)
    text = ffaudit("verify-export", str(made.cosigned), "--pubkey", pub, "--policy", policy)
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"transparency log {ORIGIN} (size " in text.stdout
    assert "cosigned by w1): 10 of 10 records proven by the log" in text.stdout
    as_json = ffaudit(
        "verify-export", str(made.cosigned), "--pubkey", pub, "--policy", policy, "--json"
    )
    assert as_json.returncode == 0
    [r] = orjson.loads(as_json.stdout)["ranges"]
    assert r["log"]["proven"] == selected(made.cosigned)
    assert r["log"]["witnesses"] == ["w1"]
    refused = ffaudit("verify-export", str(made.signed_now), "--pubkey", pub, "--policy", policy)
    assert refused.returncode == 1
    assert "FAIL log_quorum: tlog.ndjson, line 1, stream cam-1: quorum_not_met" in refused.stdout
    bad = made.policy.parent / "bad.policy"
    bad.write_text("quorum nobody\n")
    usage = ffaudit("verify-export", str(made.cosigned), "--pubkey", pub, "--policy", str(bad))
    assert usage.returncode == 2
    assert "not a C2SP tlog-policy" in usage.stderr


# -- the tamper matrix ------------------------------------------------------------------------


def test_edited_record_relinked_across_a_stub_fails_its_proof(made: Made, bundle: Path) -> None:
    """What §10.4 of the v2 spec could not catch: the holder of the service key edits a
    selected record, recomputes its event.hash, re-links the stub after it and re-signs
    the manifest. The chain walks and the producer's checkpoints still verify; the log's
    leaf, recomputed from the content, does not."""
    seq = follower(bundle, "stub")
    records = ndjson(bundle, "records.ndjson")
    record = next(r for r in records if r["event.sequence"] == seq)
    record["event.outcome"] = "failure"
    record["event.hash"] = record_hash(record)
    write_ndjson(bundle, "records.ndjson", records)
    stubs = ndjson(bundle, "links.ndjson")
    next(s for s in stubs if s["sequence"] == seq + 1)["ffaudit.prev"] = record["event.hash"]
    write_ndjson(bundle, "links.ndjson", stubs)
    resign(bundle, made.service)
    report = check(bundle, made)
    only(report, K.INCLUSION)
    line, _ = proof_at(bundle, seq)
    assert at(report, K.INCLUSION) == {(TLOG, line, STREAM, seq)}
    log = log_of(report)
    assert seq not in log.proven
    assert (seq, "its inclusion proof does not verify") in log.unproven


def test_edited_record_with_manifest_untouched(made: Made, bundle: Path) -> None:
    seq = selected(bundle)[2]
    records = ndjson(bundle, "records.ndjson")
    next(r for r in records if r["event.sequence"] == seq)["event.outcome"] = "failure"
    write_ndjson(bundle, "records.ndjson", records)
    report = check(bundle, made)
    assert at(report, K.MODIFIED_RECORD) == {("records.ndjson", 3, STREAM, seq)}
    assert set(report.counts) == {"file_hash", "csv_mismatch", "modified_record"}
    # One damage, one failure: a record that does not hash to its own event.hash is not
    # also checked against the log, and the log does not prove it.
    assert (seq, "its content does not hash to its event.hash") in log_of(report).unproven


def alter_proof(bundle: Path, made: Made, change: Callable[[Doc], None]) -> tuple[int, int]:
    seq = selected(bundle)[1]
    lines = ndjson(bundle, TLOG)
    line, _ = proof_at(bundle, seq)
    change(lines[line - 1])
    write_ndjson(bundle, TLOG, lines)
    resign(bundle, made.service)
    return line, seq


def test_altered_proof_hash(made: Made, bundle: Path) -> None:
    def flip(doc: Doc) -> None:
        raw = bytearray(base64.b64decode(doc["hashes"][0]))
        raw[0] ^= 1
        doc["hashes"][0] = base64.b64encode(bytes(raw)).decode()

    line, seq = alter_proof(bundle, made, flip)
    report = check(bundle, made)
    only(report, K.INCLUSION)
    assert at(report, K.INCLUSION) == {(TLOG, line, STREAM, seq)}
    assert "root_mismatch" in report.of_kind(K.INCLUSION)[0].detail


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_index(made: Made, bundle: Path, delta: int) -> None:
    line, seq = alter_proof(bundle, made, lambda doc: doc.update(index=doc["index"] + delta))
    report = check(bundle, made)
    only(report, K.INCLUSION)
    assert at(report, K.INCLUSION) == {(TLOG, line, STREAM, seq)}


def replace_note(bundle: Path, made: Made, note: bytes, **line: Any) -> None:
    lines = ndjson(bundle, TLOG)
    lines[0].update(note=note.decode(), **line)
    write_ndjson(bundle, TLOG, lines)
    resign(bundle, made.service)


def test_checkpoint_resigned_by_another_key(made: Made, bundle: Path) -> None:
    """The note's text and its cosignature kept, the log's signature made by another key
    under the same origin: no signature by the service key as the log."""
    original = parse_note(ndjson(bundle, TLOG)[0]["note"])
    impostor = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    cosignatures = [s for s in original.signatures if s.name != ORIGIN]
    forged = Note(original.text, (impostor.sign(original.text), *cosignatures))
    replace_note(bundle, made, forged.encode())
    report = check(bundle, made)
    only(report, K.LOG_CHECKPOINT)
    assert at(report, K.LOG_CHECKPOINT) == {(TLOG, 1, STREAM, None)}
    assert "unknown_log" in report.of_kind(K.LOG_CHECKPOINT)[0].detail
    log = log_of(report)
    assert log.proven == ()
    assert {why for _, why in log.unproven} == {"the stream's checkpoint does not verify"}


def test_checkpoint_of_another_origin(made: Made, bundle: Path) -> None:
    """A checkpoint genuinely signed by the service key, of the same tree, but of another
    stream's log: it proves nothing about this stream."""
    body = parse_checkpoint(parse_note(ndjson(bundle, TLOG)[0]["note"]).text)
    other = f"ffaudit/{TENANT}/cam-2"
    note = sign_checkpoint(
        Checkpoint(other, body.size, body.root_hash), NoteSigner(other, made.service.key)
    )
    replace_note(bundle, made, note.encode())
    report = check(bundle, made)
    only(report, K.LOG_ORIGIN)
    assert at(report, K.LOG_ORIGIN) == {(TLOG, 1, STREAM, None)}
    assert log_of(report).proven == ()


def test_log_of_another_tenant_named_in_the_manifest(made: Made, bundle: Path) -> None:
    """The manifest, the line and the note all made consistent for another tenant's log
    by the service key's holder: the origin is not <name>/<tenant>/<stream> of the range."""
    body = parse_checkpoint(parse_note(ndjson(bundle, TLOG)[0]["note"]).text)
    other = f"ffaudit/globex/{STREAM}"
    note = sign_checkpoint(
        Checkpoint(other, body.size, body.root_hash), NoteSigner(other, made.service.key)
    )
    lines = ndjson(bundle, TLOG)
    lines[0].update(note=note.encode().decode(), origin=other)
    write_ndjson(bundle, TLOG, lines)
    resign(bundle, made.service, lambda doc: doc["tlog"][0].update(origin=other, cosigned=False))
    report = check(bundle, made)
    only(report, K.LOG_ORIGIN)
    assert at(report, K.LOG_ORIGIN) == {("manifest.json", None, STREAM, None)}


def test_dropped_proof_line(made: Made, bundle: Path) -> None:
    seq = selected(bundle)[3]
    line, _ = proof_at(bundle, seq)
    lines = ndjson(bundle, TLOG)
    del lines[line - 1]
    write_ndjson(bundle, TLOG, lines)
    resign(
        bundle, made.service, lambda doc: doc["counts"].update(proofs=doc["counts"]["proofs"] - 1)
    )
    report = check(bundle, made)
    only(report, K.NOT_IN_LOG)
    assert at(report, K.NOT_IN_LOG) == {(TLOG, None, STREAM, seq)}
    assert (seq, "no inclusion proof in the bundle") in log_of(report).unproven


def test_dropped_proof_line_with_counts_untouched(made: Made, bundle: Path) -> None:
    seq = selected(bundle)[3]
    line, _ = proof_at(bundle, seq)
    lines = ndjson(bundle, TLOG)
    del lines[line - 1]
    write_ndjson(bundle, TLOG, lines)
    resign(bundle, made.service)
    report = check(bundle, made)
    only(report, K.NOT_IN_LOG)
    assert at(report, K.NOT_IN_LOG) == {(TLOG, None, STREAM, seq), (TLOG, None, None, None)}


def test_extra_proof_line(made: Made, bundle: Path) -> None:
    """A proof for a record that is only a stub in the bundle (valid: the log holds it),
    inserted in order: it proves nothing the bundle carries."""
    stub = ndjson(bundle, "links.ndjson")[0]["sequence"]
    lines = ndjson(bundle, TLOG)
    before = next(i for i, doc in enumerate(lines) if doc.get("sequence", 0) > stub)
    extra = dict(lines[before], sequence=stub)
    lines.insert(before, extra)
    write_ndjson(bundle, TLOG, lines)
    resign(
        bundle, made.service, lambda doc: doc["counts"].update(proofs=doc["counts"]["proofs"] + 1)
    )
    report = check(bundle, made)
    only(report, K.INCLUSION)
    assert at(report, K.INCLUSION) == {(TLOG, before + 1, STREAM, stub)}
    assert "proves no full record" in report.of_kind(K.INCLUSION)[0].detail


def test_policy_requiring_a_witness_that_did_not_cosign(made: Made, bundle: Path) -> None:
    stranger = CosignatureSigner("witness.example/w2", Ed25519PrivateKey.generate())
    policy = Policy((), {"w2": stranger.verifier}, "w2")
    report = verify_export(bundle, made.service.verifier, policy=policy)
    only(report, K.LOG_QUORUM)
    assert at(report, K.LOG_QUORUM) == {(TLOG, 1, STREAM, None)}
    assert "quorum_not_met" in report.of_kind(K.LOG_QUORUM)[0].detail
    log = log_of(report)
    assert log.proven == ()
    assert {why for _, why in log.unproven} == {"its checkpoint lacks the policy's witness quorum"}
    # Either of two witnesses: the one that cosigned is enough.
    group = parse_policy(
        f"witness w1 {made.witness.vkey()}\nwitness w2 {stranger.verifier.vkey()}\n"
        "group any1 any w1 w2\nquorum any1\n"
    )
    assert verify_export(bundle, made.service.verifier, policy=group).ok


def test_a_forged_cosignature_fails_the_policy(made: Made, bundle: Path) -> None:
    """The witness's cosignature line replaced by one its name and key id claim, made by
    another key: the policy's witness did not sign it."""
    original = parse_note(ndjson(bundle, TLOG)[0]["note"])
    forger = CosignatureSigner(WITNESS, Ed25519PrivateKey.generate())
    forged_sig = forger.cosign(original.text, 1_800_000_000)
    [theirs] = [s for s in original.signatures if s.name == WITNESS]
    forged = Note(
        original.text,
        tuple(
            type(s)(s.name, s.key_id, forged_sig.signature) if s is theirs else s
            for s in original.signatures
        ),
    )
    replace_note(bundle, made, forged.encode())
    assert check(bundle, made).ok  # without a policy nobody checks a witness's signature
    report = check(bundle, made, policy=True)
    only(report, K.LOG_QUORUM)
    assert "bad_cosignature" in report.of_kind(K.LOG_QUORUM)[0].detail


def test_cosigned_claim_must_match_the_note(made: Made, bundle: Path) -> None:
    resign(bundle, made.service, lambda doc: doc["tlog"][0].update(cosigned=False))
    report = check(bundle, made)
    only(report, K.LOG_CHECKPOINT)
    assert at(report, K.LOG_CHECKPOINT) == {(TLOG, 1, STREAM, None)}


def test_manifest_tree_must_be_the_notes(made: Made, bundle: Path) -> None:
    resign(
        bundle,
        made.service,
        lambda doc: doc["tlog"][0].update(root=base64.b64encode(bytes(32)).decode()),
    )
    report = check(bundle, made)
    only(report, K.LOG_CHECKPOINT)


def test_a_record_declared_not_in_the_log(made: Made, bundle: Path) -> None:
    """The service key's holder may instead state that a record is not in the log: the
    bundle stays authentic, the report says the log does not prove it and why, and a
    verifier requiring the log refuses it."""
    seq = selected(bundle)[4]
    line, _ = proof_at(bundle, seq)
    lines = ndjson(bundle, TLOG)
    del lines[line - 1]
    write_ndjson(bundle, TLOG, lines)

    def declare(doc: Doc) -> None:
        doc["tlog"][0]["not_in_log"] = [{"sequence": seq, "reason": "stored before the log"}]
        doc["counts"].update(proofs=doc["counts"]["proofs"] - 1, not_in_log=1)

    resign(bundle, made.service, declare)
    report = check(bundle, made, policy=True)
    assert report.ok, [x.describe() for x in report.failures]
    log = log_of(report)
    assert (seq, "not in the log (the service states: stored before the log)") in log.unproven
    assert len(log.proven) == len(selected(bundle)) - 1
    strict = check(bundle, made, require_log=True)
    only(strict, K.NOT_IN_LOG)
    assert at(strict, K.NOT_IN_LOG) == {(TLOG, None, STREAM, seq)}


def test_tlog_file_is_hashed_and_listed(made: Made, bundle: Path) -> None:
    lines = (bundle / TLOG).read_bytes().splitlines()
    (bundle / TLOG).write_bytes(b"".join(line + b"\n" for line in lines[:-1]))
    report = check(bundle, made)
    assert at(report, K.FILE_HASH) == {(TLOG, None, None, None)}
    doc = manifest(bundle)
    del doc["files"][TLOG]
    (bundle / "manifest.json").write_bytes(canonicalize(doc) + b"\n")
    (bundle / "manifest.sig").write_bytes(
        base64.b64encode(made.service.sign(manifest_message(doc))) + b"\n"
    )
    report = check(bundle, made)
    only(report, K.MALFORMED)
    assert "files does not list tlog.ndjson" in report.failures[0].detail


def test_downgrade_to_v2_fails_a_policy(made: Made, bundle: Path) -> None:
    """Re-signed as a v2 bundle without its log, by the service key's holder: v2 still
    verifies on its own, but not when the caller requires the log or its witnesses."""
    (bundle / TLOG).unlink()

    def v2(doc: Doc) -> None:
        doc["format"] = "ffaudit.export.v2"
        del doc["tlog"], doc["files"][TLOG], doc["counts"]["proofs"], doc["counts"]["not_in_log"]

    resign(bundle, made.service, v2)
    report = check(bundle, made)
    assert report.ok, [x.describe() for x in report.failures]
    assert report.ranges[0].log is None
    assert "log" not in report.ranges[0].as_dict()
    only(check(bundle, made, policy=True), K.LOG_QUORUM)
    only(check(bundle, made, require_log=True), K.NOT_IN_LOG)


# -- records the log does not hold --------------------------------------------------------


def test_records_from_before_the_log_are_listed_as_not_in_it(tmp_path: Path) -> None:
    """A stream ingested while the log was off, then on: the earlier records have no leaf
    and the manifest lists each with the service's reason; the later ones are proven."""
    stream = Stream.new()
    settings = app_settings(tmp_path, tlog_enabled=False)
    with TestClient(create_app(settings)) as client:
        start(client, stream, settings)
        before = stream.batch(9)
        ingest(client, before)
    last_before = before[-1]["event.sequence"]
    settings = app_settings(tmp_path, database_url=settings.database_url)
    with TestClient(create_app(settings)) as client:
        ingest(client, stream.batch(9))
        bundle = export(client, tmp_path / "bundle", {"actor": "bob"})
    [entry] = manifest(bundle)["tlog"]
    absent = {x["sequence"] for x in entry["not_in_log"]}
    early = {seq for seq in full(bundle) if seq <= last_before}
    assert absent == early
    first = last_before + 1  # the log's first leaf
    assert {x["reason"] for x in entry["not_in_log"]} == {
        f"accepted before the stream's log existed (its first leaf is the record at "
        f"sequence {first})"
    }
    assert manifest(bundle)["counts"]["not_in_log"] == len(early)
    report = verify_export(bundle, Signer.load(settings.service_keys_dir / "signing.key").verifier)
    assert report.ok, [x.describe() for x in report.failures]
    log = log_of(report)
    assert set(log.proven) == {seq for seq in selected(bundle) if seq > last_before}
    assert {seq for seq, _ in log.unproven} == {
        seq for seq in selected(bundle) if seq <= last_before
    }


def test_a_stream_with_no_log_at_all(tmp_path: Path) -> None:
    stream = Stream.new()
    settings = app_settings(tmp_path, tlog_enabled=False)
    with TestClient(create_app(settings)) as client:
        start(client, stream, settings)
        ingest(client, stream.batch(6))
        bundle = export(client, tmp_path / "bundle", {"actor": "bob"})
    [entry] = manifest(bundle)["tlog"]
    assert entry["size"] == 0
    assert entry["root"] == base64.b64encode(EMPTY_ROOT).decode()
    assert (bundle / TLOG).read_bytes() == b""
    key = Signer.load(settings.service_keys_dir / "signing.key").verifier
    report = verify_export(bundle, key)
    assert report.ok, [x.describe() for x in report.failures]
    assert log_of(report).proven == ()
    witness = CosignatureSigner(WITNESS, Ed25519PrivateKey.generate()).verifier
    strict = verify_export(bundle, key, policy=Policy((), {"w1": witness}, "w1"))
    assert at(strict, K.LOG_QUORUM) == {("manifest.json", None, STREAM, None)}


# -- on PostgreSQL and Elasticsearch -------------------------------------------------------


def test_export_through_the_api_on_postgres_and_elasticsearch(
    tmp_path: Path, fresh_postgres_url: str, elasticsearch_url: str, fresh_es_prefix: str
) -> None:
    stream = Stream.new()
    settings = app_settings(
        tmp_path,
        fresh_postgres_url,
        elasticsearch_url=elasticsearch_url,
        elasticsearch_index_prefix=fresh_es_prefix,
    )
    with TestClient(create_app(settings)) as client:
        start(client, stream, settings)
        ingest(client, stream.batch(20))
        bundle = export(client, tmp_path / "bundle", {"actor": "bob"})
    pub = settings.service_keys_dir / SIGNING_PUB
    result = ffaudit("verify-export", str(bundle), "--pubkey", str(pub), "--require-log")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 of 7 records proven by the log" in result.stdout
    [entry] = manifest(bundle)["tlog"]
    assert entry["not_in_log"] == []
    assert entry["cosigned"] is False


# -- the writer, against a log it is given -------------------------------------------------


def memory_log(
    service: Signer, records: list[Doc], order: list[int] | None = None
) -> tuple[StreamLog, dict[int, int]]:
    """A log of `records` (leaves in `order` of sequences, chain order by default), its
    checkpoint signed by the service key, and a proof for every record."""
    tree = MemoryTree()
    by_seq = {r["event.sequence"]: r for r in records}
    index = {}
    for seq in order or sorted(by_seq):
        index[seq] = tree.append_entry(bytes.fromhex(by_seq[seq]["event.hash"]))
    note = sign_checkpoint(
        Checkpoint(ORIGIN, tree.size, tree.root()), NoteSigner(ORIGIN, service.key)
    )
    proofs = {s: LogProof(i, tuple(tree.inclusion_proof(i))) for s, i in index.items()}
    return StreamLog(ORIGIN, note.encode().decode(), proofs), index


def write(
    out: Path, service: Signer, stream: Stream, records: list[Doc], log: StreamLog | None
) -> set[tuple[str, int]]:
    bob = Pseudonymizer(stream.keyring, TENANT).pseudonym(PiiKind.USER, "bob")
    chosen = {(STREAM, r["event.sequence"]) for r in records if r.get("user.hash") == bob}
    write_export(
        out,
        records,
        chosen,
        {STREAM: stream.signer.verifier.pem()},
        {"export_id": "x", "filters": {}, "order": "asc"},
        service,
        tenant=TENANT,
        tlog=None if log is None else {STREAM: log},
    )
    return chosen


def test_a_record_edited_in_the_store_is_declared_against_the_log(tmp_path: Path) -> None:
    """The store's copy of a logged record edited, event.hash and all (whoever can write
    to the store can recompute it): the writer finds the log's leaf is another, and says
    so in the signed manifest and the record's verdict; the bundle is authentic evidence
    of the damage."""
    service, stream = Signer.generate(), Stream.new()
    records = stream.batch(12)
    log, _ = memory_log(service, records)
    bob = Pseudonymizer(stream.keyring, TENANT).pseudonym(PiiKind.USER, "bob")
    victim = next(r for r in records if r.get("user.hash") == bob and r["event.sequence"] > 2)
    seq = victim["event.sequence"]
    victim["event.outcome"] = "failure"
    victim["event.hash"] = record_hash(victim)
    successor = next(r for r in records if r["event.sequence"] == seq + 1)
    successor["ffaudit.prev"] = victim["event.hash"]
    out = tmp_path / "bundle"
    write(out, service, stream, records, log)
    doc = manifest(out)
    declared = {(x["kind"], x["sequence"]) for x in doc["failures"]}
    assert ("inclusion", seq) in declared
    report = verify_export(out, service.verifier)
    assert report.authentic
    assert report.damaged
    line, _ = proof_at(out, seq)
    assert (TLOG, line, STREAM, seq) in at(report, K.INCLUSION)
    assert all(x.declared for x in report.failures)
    row = next(
        r
        for r in csv.DictReader(io.StringIO((out / "records.csv").read_text()))
        if r["event.sequence"] == str(seq)
    )
    assert "inclusion" in row["verdict"].split()
    pub = tmp_path / "service.pub"
    pub.write_bytes(service.verifier.pem())
    assert ffaudit("verify-export", str(out), "--pubkey", str(pub)).returncode == 4


def test_leaves_out_of_chain_order_are_declared(tmp_path: Path) -> None:
    service, stream = Signer.generate(), Stream.new()
    records = stream.batch(12)
    seqs = sorted(r["event.sequence"] for r in records)
    bob = Pseudonymizer(stream.keyring, TENANT).pseudonym(PiiKind.USER, "bob")
    first, second = sorted(r["event.sequence"] for r in records if r.get("user.hash") == bob)[:2]
    order = [s for s in seqs if s != first]
    order.insert(order.index(second) + 1, first)  # logged after its successor
    log, _ = memory_log(service, records, order)
    out = tmp_path / "bundle"
    write(out, service, stream, records, log)
    report = verify_export(out, service.verifier)
    assert report.authentic
    failures = report.of_kind(K.INCLUSION)
    # Proofs are checked in chain order: every full record after `first` up to its
    # successor `second` has an index below first's, out of the chain's order.
    assert {x.sequence for x in failures} == {seq for seq in full(out) if first < seq <= second}
    assert all(x.declared for x in failures)
    assert all("the log's order is not the chain's" in x.detail for x in failures)


def test_without_a_log_the_writer_writes_v2(tmp_path: Path) -> None:
    service, stream = Signer.generate(), Stream.new()
    out = tmp_path / "bundle"
    write(out, service, stream, stream.batch(9), None)
    assert manifest(out)["format"] == "ffaudit.export.v2"
    assert "tlog" not in manifest(out)
    assert not (out / TLOG).exists()
    report = verify_export(out, service.verifier)
    assert report.ok
    assert report.ranges[0].log is None


def test_the_writer_needs_every_streams_log(tmp_path: Path) -> None:
    service, stream = Signer.generate(), Stream.new()
    records = stream.batch(9)
    with pytest.raises(InvalidInputError, match="no transparency-log evidence"):
        write_export(
            tmp_path / "bundle",
            records,
            {(STREAM, 2)},
            {STREAM: stream.signer.verifier.pem()},
            {},
            service,
            tenant=TENANT,
            tlog={},
        )
    assert not (tmp_path / "bundle").exists()


def test_proofs_built_from_tiles_are_the_services_own(tmp_path: Path) -> None:
    """The service builds an export's proofs from the log's tiles (one call per few hundred
    leaves, not per record): over several tiles, and where the store misleads it (a
    record whose stored hash is not its leaf, a verdict that does not say it is logged),
    every proof is the one TlogService.inclusion gives."""
    stream = Stream.new()
    settings = app_settings(tmp_path, tlog_checkpointer_enabled=False)
    with TestClient(create_app(settings)) as client:
        start(client, stream, settings)
        records = stream.batch(700)
        ingest(client, records)
        tlog: TlogService = client.app.state.services.tlog  # type: ignore[attr-defined]
        placed = [
            Placed(r["event.sequence"], r["event.hash"], "ok", None, full=i % 3 != 1)
            for i, r in enumerate(records)
        ]
        placed[10] = dataclasses.replace(placed[10], event_hash="00" * 32)
        placed[20] = dataclasses.replace(placed[20], verdict="broken", failure="gap")
        asked: list[int | None] = []
        inclusion = tlog.inclusion

        def counted(*args: Any, **kwargs: Any) -> Inclusion:
            asked.append(kwargs.get("sequence"))
            return inclusion(*args, **kwargs)

        tlog.inclusion = counted  # type: ignore[method-assign]
        got = stream_log(tlog, settings, TENANT, STREAM, placed)
        del tlog.inclusion
        # The first leaf, the anchor, the two records the store misleads about and the
        # one after the mislabelled record (re-anchored there): never one call a record.
        assert len(asked) <= 5, asked
        assert got.note is not None
        size = parse_checkpoint(parse_note(got.note).text).size
        assert size == len(records) > 3 * 256  # signed now: no checkpoint covered them
        assert got.absent == {}
        assert sorted(got.proofs) == [p.sequence for p in placed if p.full]
        for seq, proof in got.proofs.items():
            want = tlog.inclusion(TENANT, STREAM, sequence=seq, size=size)
            assert proof == LogProof(want.index, tuple(want.hashes)), seq


def test_export_command_checks_a_policy_only_with_the_service_key(made: Made) -> None:
    result = ffaudit(
        "export",
        "--policy",
        str(made.policy),
        "--service",
        "http://127.0.0.1:9",
        "--tenant",
        "acme",
    )
    assert result.returncode == 2
    assert "give --pubkey too" in result.stderr


def test_the_specs_own_checker_accepts_a_v3_bundle(made: Made, tmp_path: Path) -> None:
    """Spec §10.5's stand-alone checker, run as written, accepts the bundle made through the
    API and checks its log: an altered proof (index or hash) or a dropped one stops it."""
    spec = (Path(__file__).parents[2] / "docs" / "record-spec.md").read_text(encoding="utf-8")
    section = spec[spec.index("### 10.5") : spec.index("### 10.6")]
    code = section[section.index("```python\n") + 10 : section.rindex("```")]
    assert TLOG in code, "the spec's checker does not read the log"
    script = tmp_path / "check.py"
    script.write_text(code, encoding="utf-8")
    run = [sys.executable, str(script)]
    intact = subprocess.run(
        [*run, str(made.cosigned), str(made.pubkey)], capture_output=True, text=True
    )
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.strip() == f"OK: {len(selected(made.cosigned))} records"

    def flip(doc: Doc) -> None:
        raw = bytearray(base64.b64decode(doc["hashes"][0]))
        raw[0] ^= 1
        doc["hashes"][0] = base64.b64encode(bytes(raw)).decode()

    changes: dict[str, Callable[[Doc], None]] = {
        "index": lambda doc: doc.update(index=doc["index"] + 1),
        "hash": flip,
    }
    for name, change in changes.items():
        altered = tmp_path / name
        shutil.copytree(made.cosigned, altered)
        alter_proof(altered, made, change)
        got = subprocess.run([*run, str(altered), str(made.pubkey)], capture_output=True, text=True)
        assert got.returncode != 0, name
        assert "inclusion" in got.stderr, (name, got.stderr)
    dropped = tmp_path / "dropped"
    shutil.copytree(made.cosigned, dropped)
    seq = selected(dropped)[1]
    line, _ = proof_at(dropped, seq)
    lines = ndjson(dropped, TLOG)
    del lines[line - 1]
    write_ndjson(dropped, TLOG, lines)
    resign(dropped, made.service)
    got = subprocess.run([*run, str(dropped), str(made.pubkey)], capture_output=True, text=True)
    assert got.returncode != 0
    assert "KeyError" in got.stderr  # the spec's marker for not_in_log


def test_a_bundle_claiming_no_checkpoint_proves_nothing(made: Made, bundle: Path) -> None:
    """The service key's holder drops the checkpoint and says size 0 but keeps the proof
    lines: no proof counts, and a verifier that requires the log refuses every record."""
    docs = [d for d in ndjson(bundle, "tlog.ndjson") if d["type"] != "checkpoint"]
    write_ndjson(bundle, "tlog.ndjson", docs)

    def no_checkpoint(doc: Doc) -> None:
        for entry in doc["tlog"]:
            entry.update(size=0, root=base64.b64encode(EMPTY_ROOT).decode(), cosigned=False)

    resign(bundle, made.service, no_checkpoint)
    report = check(bundle, made)
    assert {x.sequence for x in report.of_kind(K.INCLUSION)} == {d["sequence"] for d in docs}
    required = check(bundle, made, require_log=True)
    refused = {x.sequence for x in required.of_kind(K.NOT_IN_LOG)}
    assert refused >= set(selected(bundle))
    assert refused == {seq for seq, _ in log_of(required).unproven}
    assert log_of(required).proven == ()
