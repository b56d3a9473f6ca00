"""Write the normative test vectors of docs/record-spec.md (see README.md beside this file).

    .venv/bin/python docs/vectors/generate.py [--out DIR]

Deterministic: fixed Ed25519 seeds (Ed25519 signatures are deterministic), fixed pseudonym
secrets, fixed timestamps, fixed `event.id` prefixes and a fixed export `created_at`, so two
runs write byte-identical files (tests/integrity/test_vectors.py regenerates them into a
temporary directory and compares). The expected results are written down here by hand,
from the spec, not computed by ffaudit's verifier: the tests check the verifier against
them.

Every private key written here is public and for tests only: never sign anything real with it.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.exports import write_export
from audit.exports.bundle import manifest_message
from audit.exports.chain import Finding, FindingKind
from audit.exports.tlog import LogProof, StreamLog
from audit.integrity import record as f
from audit.integrity.canonical import canonicalize
from audit.integrity.chain import (
    ChainWriter,
    CheckpointPolicy,
    SealedRecord,
    checkpoint_message,
    record_hash,
)
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, PseudonymKey, Signer
from audit.integrity.notes import Checkpoint, NoteSigner, TlogProof, sign_checkpoint
from audit.integrity.pseudonym import PiiKind, Pseudonymizer, normalize
from audit.integrity.ratelimit import SessionRateLimiter
from audit.integrity.seal import AuditEvent, Sealer

HERE = Path(__file__).resolve().parent
GENERATED = ("keys", "chains", "exports", "tlog", "pseudonyms.json")  # what a run replaces

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TENANT = "acme"
STREAM = "cam-1"
EXPORT_CREATED_AT = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
# The stream's transparency log (§14.2): <service name>/<tenant>/<stream>.
ORIGIN = f"ffaudit/{TENANT}/{STREAM}"

# -- keys -------------------------------------------------------------------------------

# 32-byte Ed25519 seeds (RFC 8032 private keys). Public: test vectors only.
PRODUCER_SEED = bytes(range(0x00, 0x20))
ATTACKER_SEED = bytes(range(0x20, 0x40))
SERVICE_SEED = bytes(range(0x40, 0x60))
# Pseudonym keyring (§5.2): key 1 seals every chain but the rotation one, which switches to
# key 2 halfway. keys/test-only-pii.key holds both, key 2 current.
PII_KEY_1 = PseudonymKey(
    "pk-20261121-7e570001", bytes(range(0x60, 0x80)), "2026-11-21T00:00:00+00:00"
)
PII_KEY_2 = PseudonymKey(
    "pk-20261201-7e570002", bytes(range(0x80, 0xA0)), "2026-12-01T00:00:00+00:00"
)
KEYRING_1 = Keyring((PII_KEY_1,), PII_KEY_1.key_id)
KEYRING_2 = Keyring((PII_KEY_1, PII_KEY_2), PII_KEY_2.key_id)


def signer(seed: bytes) -> Signer:
    return Signer.from_key(Ed25519PrivateKey.from_private_bytes(seed))


PRODUCER = signer(PRODUCER_SEED)
ATTACKER = signer(ATTACKER_SEED)
SERVICE = signer(SERVICE_SEED)
# The log key of ORIGIN: the service key under the origin's name (§14.2).
LOG = NoteSigner(ORIGIN, SERVICE.key)

# -- sealing ----------------------------------------------------------------------------

Record = dict[str, Any]


def writer(
    stream: str = STREAM,
    *,
    every: int | None = 1000,
    interval: float | None = None,
    prefix: str = "7e57000000000001",
) -> ChainWriter:
    out = ChainWriter(stream, TENANT, PRODUCER, policy=CheckpointPolicy(every, interval))
    # event.id is "<random per-writer prefix>-<sequence>" (§2): fixed here, for determinism.
    out._id_prefix = prefix + "-"
    return out


def event(i: int, *, seconds: float | None = None, **changes: Any) -> AuditEvent:
    """Event i: three actors taking turns, a job per event."""
    actor = ("alice", "bob", "carol")[i % 3]
    values: dict[str, Any] = {
        "action": EventAction.FACE_SWAPPED,
        "outcome": Outcome.SUCCESS,
        "timestamp": T0 + timedelta(seconds=i if seconds is None else seconds),
        "actor": actor,
        "job_id": f"j-{i:04d}",
        "metadata": {"blend_ratio": 0.75},
    }
    values.update(changes)
    return AuditEvent(**values)


def seal(sealer: Sealer, events: list[AuditEvent], *, close: bool = True) -> list[Record]:
    out: list[SealedRecord] = []
    for ev in events:
        out += sealer.seal(ev)
    if close:
        out += sealer.close(events[-1].timestamp)
    return [orjson.loads(s.line) for s in out]


def line(record: Record) -> bytes:
    """How `ffaudit seal` writes a record: its RFC 8785 form."""
    return canonicalize(record)


def rehash(record: Record) -> Record:
    """What anyone can do without a key: recompute event.hash after an edit."""
    out = {k: v for k, v in record.items() if k != f.EVENT_HASH}
    out[f.EVENT_HASH] = record_hash(out)
    return out


def resign(record: Record, key: Signer) -> Record:
    """Re-sign a checkpoint (after rehash) with `key`, naming it as the signer."""
    out = {k: v for k, v in record.items() if k not in f.UNHASHED}
    out[f.CP_SIGNER] = key.verifier.fingerprint
    out = rehash(out)
    out[f.SIGNATURE] = base64.b64encode(key.sign(checkpoint_message(out[f.EVENT_HASH]))).decode()
    return out


def relink(records: list[Record], start: int, *, key: Signer | None = None) -> list[Record]:
    """Re-chain records[start:] onto records[start - 1]: each gets its predecessor's
    (possibly new) hash as ffaudit.prev and is rehashed; checkpoints are re-signed with
    `key` when one is given, else keep their (now invalid) signatures."""
    out = [dict(r) for r in records]
    for i in range(start, len(out)):
        rec = dict(out[i], **{f.PREV: out[i - 1][f.EVENT_HASH]})
        if rec[f.EVENT_ACTION] == "audit.checkpoint" and key is not None:
            out[i] = resign(rec, key)
        else:
            sig = rec.get(f.SIGNATURE)
            rec = rehash(rec)
            if sig is not None:
                rec[f.SIGNATURE] = sig
            out[i] = rec
    return out


def base_chain() -> list[Record]:
    """The intact chain every tamper vector edits: 5 events, a checkpoint every 4 records
    (sequence 4), and the closing checkpoint (sequence 7, covering 5..7)."""
    return seal(
        Sealer(writer(every=4), Pseudonymizer(KEYRING_1, TENANT)), [event(i) for i in range(5)]
    )


# -- chain vectors ----------------------------------------------------------------------

Fail = tuple[str, int | None, int | None, str | None]  # kind, line, sequence, stream


def summary(
    records: int, last: int, signed: int, closed: bool, stream: str = STREAM
) -> dict[str, Any]:
    return {
        "stream": stream,
        "tenant": TENANT,
        "records": records,
        "last_sequence": last,
        "signed_through": signed,
        "closed": closed,
    }


@dataclass
class ChainVector:
    name: str
    description: str
    lines: list[bytes]
    failures: list[Fail]
    streams: list[dict[str, Any]]
    strict: bool = True
    pubkey: str = "producer.pub"

    def expected(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "records": f"{self.name}.ndjson",
            "pubkey": f"../keys/{self.pubkey}",
            "strict": self.strict,
            "ok": not self.failures,
            "failures": [
                {"kind": k, "line": ln, "sequence": s, "stream": st}
                for k, ln, s, st in self.failures
            ],
            "streams": self.streams,
        }


def chain_vectors() -> Iterator[ChainVector]:
    base = base_chain()
    lines = [line(r) for r in base]
    intact = summary(7, 7, 7, True)

    yield ChainVector(
        "intact",
        "An intact stream: 5 events, a checkpoint every 4 records (sequence 4, first_sequence "
        "1, records 4) and the closing checkpoint (sequence 7, first_sequence 5, records 3). "
        "Every tamper vector is an edit of this file.",
        lines,
        [],
        [intact],
    )

    edited = dict(base[2], **{f.EVENT_OUTCOME: "failure"})
    yield ChainVector(
        "modified",
        "Line 3 edited (event.outcome success -> failure), event.hash left as it was: its "
        "content no longer hashes to its event.hash.",
        [*lines[:2], line(edited), *lines[3:]],
        [("modified", 3, 3, STREAM)],
        [intact],
    )

    yield ChainVector(
        "modified-rehashed",
        "Line 3 edited and its event.hash recomputed: it hashes correctly, but sequence 4 "
        "links to the original hash, so sequence 3 is blamed (an edited and re-hashed "
        "record), not its successor.",
        [*lines[:2], line(rehash(edited)), *lines[3:]],
        [("modified", 3, 3, STREAM)],
        [intact],
    )

    yield ChainVector(
        "gap",
        "Line 3 (sequence 3) deleted: the record after the hole (sequence 4, now line 3) "
        "is reported as a gap. Its link cannot be checked; the checkpoints still verify.",
        [*lines[:2], *lines[3:]],
        [("gap", 3, 4, STREAM)],
        [summary(6, 7, 7, True)],
    )

    yield ChainVector(
        "reordered",
        "Lines 2 and 3 swapped: sequence 3 arrives first and waits; sequence 2 (line 3) "
        "arrives after it and is reported as reordered. Nothing else fails.",
        [lines[0], lines[2], lines[1], *lines[3:]],
        [("reordered", 3, 2, STREAM)],
        [intact],
    )

    yield ChainVector(
        "duplicate",
        "A verbatim copy of line 2 (sequence 2) inserted after line 3: the copy (line 4) "
        "is a duplicate.",
        [*lines[:3], lines[1], *lines[3:]],
        [("duplicate", 4, 2, STREAM)],
        [summary(8, 7, 7, True)],
    )

    forged = rehash(dict(base[2], **{f.EVENT_OUTCOME: "failure", f.EVENT_ID: "forged"}))
    yield ChainVector(
        "inserted",
        "A forged sequence 3 (different content, hash recomputed, linking correctly to "
        "sequence 2) inserted before the genuine one: two records claim sequence 3, the "
        "next record (the checkpoint) links to the genuine one, so the forgery (line 3) is "
        "inserted.",
        [*lines[:2], line(forged), *lines[2:]],
        [("inserted", 3, 3, STREAM)],
        [summary(8, 7, 7, True)],
    )

    after = rehash(
        dict(base[0], **{f.EVENT_SEQUENCE: 8, f.PREV: base[-1][f.EVENT_HASH], f.EVENT_ID: "x-8"})
    )
    yield ChainVector(
        "inserted-after-close",
        "A record appended after the closing checkpoint (sequence 8, linking correctly to "
        "it): inserted, because no record may follow a closing checkpoint.",
        [*lines, line(after)],
        [("inserted", 8, 8, STREAM)],
        [summary(8, 8, 7, True)],
    )

    rewritten = relink([*base[:4], dict(base[4], **{f.EVENT_OUTCOME: "failure"}), *base[5:]], 4)
    yield ChainVector(
        "forged-chain",
        "Sequence 5 edited, then it and every later record re-hashed and re-linked without "
        "the signing key: every hash and link checks out, but the closing checkpoint's "
        "signature no longer verifies and no later one does. forged_chain at the first "
        "failing checkpoint; sequences 5..7 are unproven (signed_through stays 4). The "
        "stream still counts as closed (step 5 sets closed before checking the signature).",
        [line(r) for r in rewritten],
        [("forged_chain", 7, 7, STREAM)],
        [summary(7, 7, 4, True)],
    )

    damaged = dict(base[3])
    raw = bytearray(base64.b64decode(damaged[f.SIGNATURE]))
    raw[0] ^= 1
    damaged[f.SIGNATURE] = base64.b64encode(bytes(raw)).decode()
    yield ChainVector(
        "bad-signature",
        "One bit of the first checkpoint's signature (line 4) flipped. The closing "
        "checkpoint verifies and commits to the whole prefix, so only that signature is "
        "damaged: bad_signature, signed_through 7.",
        [*lines[:3], line(damaged), *lines[4:]],
        [("bad_signature", 4, 4, STREAM)],
        [intact],
    )

    garbled = dict(base[6], **{f.SIGNATURE: "not base64!"})
    yield ChainVector(
        "bad-signature-not-base64",
        "The closing checkpoint's signature replaced by a string that is not base64 of 64 "
        "bytes: bad_signature at once (no later checkpoint is needed to decide).",
        [*lines[:6], line(garbled)],
        [("bad_signature", 7, 7, STREAM)],
        [summary(7, 7, 4, True)],
    )

    unsigned = {k: v for k, v in base[3].items() if k != f.SIGNATURE}
    yield ChainVector(
        "missing-signature",
        "The first checkpoint's ffaudit.signature removed (it is not hashed, so the chain "
        "is otherwise intact): missing_signature. The closing checkpoint still verifies.",
        [*lines[:3], line(unsigned), *lines[4:]],
        [("missing_signature", 4, 4, STREAM)],
        [intact],
    )

    attacked = [*base[:1], rehash(dict(base[1], **{f.EVENT_OUTCOME: "failure"})), *base[2:]]
    attacked = relink(attacked, 2, key=ATTACKER)
    yield ChainVector(
        "wrong-key",
        "An attacker with a signing key of their own: sequence 2 edited, every later record "
        "re-hashed and re-linked, both checkpoints re-signed with keys/attacker.pub (naming "
        "it as ffaudit.checkpoint.signer). Verified with keys/producer.pub: wrong_key, "
        "reported once per stream (the second checkpoint is skipped silently); nothing is "
        "signed (signed_through 0).",
        [line(r) for r in attacked],
        [("wrong_key", 4, 4, STREAM)],
        [summary(7, 7, 0, True)],
    )

    partial = b'{"event.sequence":3,"ffaudit.stream":"cam-1"}'
    yield ChainVector(
        "malformed",
        "Three lines that are not records inserted into the intact chain: not JSON "
        "(line 3), an object missing required fields (line 5; its sequence and stream are "
        "readable, so they are reported), a JSON array (line 7). They take no further part; "
        "the chain itself is intact.",
        [*lines[:2], b"{not json", lines[2], partial, lines[3], b"[1,2]", *lines[4:]],
        [
            ("malformed", 3, None, None),
            ("malformed", 5, 3, STREAM),
            ("malformed", 7, None, None),
        ],
        [intact],
    )

    yield ChainVector(
        "truncated",
        "The closing checkpoint (last line) cut off. Verified with --strict: truncated, "
        "with no line and the stream's last sequence; records 5..6 follow the last "
        "checkpoint and are not authenticated. Without --strict this file verifies with no "
        "failure.",
        lines[:-1],
        [("truncated", None, 6, STREAM)],
        [summary(6, 6, 4, False)],
    )

    yield ChainVector(
        "noncanonical",
        "Line 2 re-serialised with spaces after ',' and ':' (same JSON value, so the same "
        "hash): with --strict a line must be the RFC 8785 form of its record, so it is "
        "malformed; without --strict this file verifies with no failure.",
        [lines[0], json.dumps(base[1], separators=(", ", ": ")).encode(), *lines[2:]],
        [("malformed", 2, 2, STREAM)],
        [intact],
    )

    v2 = relink([*base[:2], rehash(dict(base[2], **{f.SCHEMA: 2})), *base[3:]], 3, key=PRODUCER)
    yield ChainVector(
        "schema-2",
        'Sequence 3 carries "ffaudit.schema": 2 (an unknown schema version), sealed by the '
        "genuine producer: hashes, links and both signatures are valid (re-signed with the "
        "producer's key). A verifier of schema 1 reports it as malformed (§7 step 2, §9); "
        "the record is still placed, so nothing else fails.",
        [line(r) for r in v2],
        [("malformed", 3, 3, STREAM)],
        [intact],
    )

    yield from policy_vectors()


def policy_vectors() -> Iterator[ChainVector]:
    by_count = seal(
        Sealer(writer(every=3), Pseudonymizer(KEYRING_1, TENANT)), [event(i) for i in range(4)]
    )
    yield ChainVector(
        "checkpoints-by-count",
        "Checkpoint policy every=3 (records per segment, the checkpoint included), no "
        "interval: checkpoints at sequences 3 and 6; the closing checkpoint (sequence 7) "
        "covers only itself (first_sequence 7, records 1).",
        [line(r) for r in by_count],
        [],
        [summary(7, 7, 7, True)],
    )

    at = (0, 30, 59, 60, 90, 150, 170)
    by_time = seal(
        Sealer(writer(every=None, interval=60), Pseudonymizer(KEYRING_1, TENANT)),
        [event(i, seconds=s) for i, s in enumerate(at)],
    )
    yield ChainVector(
        "checkpoints-by-interval",
        "Checkpoint policy interval=60 s of record time, no count: events at +0, 30, 59, "
        "60, 90, 150 and 170 s. The event at +60 s is 60 s after the segment's first "
        "record, so a checkpoint follows it (sequence 5, stamped with its time); the next "
        "segment starts at +90 s and closes after +150 s (sequence 8). The closing "
        "checkpoint (sequence 10) takes the last event's time.",
        [line(r) for r in by_time],
        [],
        [summary(10, 10, 10, True)],
    )

    limiter = SessionRateLimiter(rate=1.0, burst=2, window_s=1.0)
    flood = [
        event(0, seconds=0.0, action=EventAction.FACE_DETECTED, session="s-flood"),
        event(0, seconds=0.1, action=EventAction.FACE_DETECTED, session="s-flood"),
        event(0, seconds=0.2, action=EventAction.FACE_DETECTED, session="s-flood"),
        event(0, seconds=0.3, action=EventAction.FACE_SWAPPED, session="s-flood"),
        event(0, seconds=0.4, action=EventAction.FACE_DETECTED, session="s-flood"),
        event(0, seconds=0.5, action=EventAction.JOB_COMPLETED, session="s-flood"),
        event(1, seconds=2.0, session="s-other"),
    ]
    limited = seal(Sealer(writer(), Pseudonymizer(KEYRING_1, TENANT), limiter), flood)
    yield ChainVector(
        "rate-limited",
        "Per-session rate limit rate=1/s, burst=2 (§6), session s-flood: face.detected at "
        "+0.0 and +0.1 s are admitted (sequences 1, 2); face.detected +0.2, face.swapped "
        "+0.3 and face.detected +0.4 s are dropped (window +0.2..+1.2 s); job.completed "
        "+0.5 s is critical and admitted without a token (sequence 3). The next event "
        "(+2.0 s, session s-other) emits the window's audit.rate_limited summary first "
        "(sequence 4: dropped 3, actions face.detected 2 and face.swapped 1, @timestamp = "
        "window_end), then itself (5); the closing checkpoint is 6. No holes: dropped "
        "events never got a sequence.",
        [line(r) for r in limited],
        [],
        [summary(6, 6, 6, True)],
    )

    first = writer(every=None)
    records = seal(
        Sealer(first, Pseudonymizer(KEYRING_1, TENANT)), [event(0), event(3)], close=False
    )
    records += seal(Sealer(first, Pseudonymizer(KEYRING_2, TENANT)), [event(6), event(9)])
    yield ChainVector(
        "pseudonym-key-rotation",
        "The pseudonym key rotated mid-stream (`ffaudit keys rotate`, §5.2): sequences 1-2 "
        f"are pseudonymised under {PII_KEY_1.key_id}, 3-4 under {PII_KEY_2.key_id} "
        "(ffaudit.key_id says which). Actor alice has a different user.hash on each side; "
        "integrity is unaffected. Signing keys do not rotate within a stream: a checkpoint "
        "signed by another key is wrong_key (see wrong-key).",
        [line(r) for r in records],
        [],
        [summary(5, 5, 5, True)],
    )

    a = seal(
        Sealer(writer("cam-a", prefix="7e570000000000aa"), Pseudonymizer(KEYRING_1, TENANT)),
        [event(i) for i in range(3)],
    )
    b = seal(
        Sealer(writer("cam-b", prefix="7e570000000000bb"), Pseudonymizer(KEYRING_1, TENANT)),
        [event(i, seconds=i + 0.5) for i in range(3)],
    )
    mixed = [r for pair in zip(a, b, strict=True) for r in pair]
    del mixed[3]  # cam-b sequence 2
    yield ChainVector(
        "interleaved-gap",
        "Two streams (cam-a, cam-b) interleaved in one file, each 3 events and a closing "
        "checkpoint; cam-b's sequence 2 deleted. Streams are verified independently: a gap "
        "in cam-b only, at its sequence 3 (line 5); cam-a is intact.",
        [line(r) for r in mixed],
        [("gap", 5, 3, "cam-b")],
        [summary(4, 4, 4, True, "cam-a"), summary(3, 4, 4, True, "cam-b")],
    )


# -- pseudonyms -------------------------------------------------------------------------


def pseudonym_vectors() -> dict[str, Any]:
    cases: list[tuple[str, PiiKind, str]] = [
        (TENANT, PiiKind.USER, "alice"),
        (TENANT, PiiKind.USER, "Alice"),
        (TENANT, PiiKind.PATH, "alice"),
        ("other-tenant", PiiKind.USER, "alice"),
        (TENANT, PiiKind.CLIENT_IP, "203.0.113.7"),
        (TENANT, PiiKind.CLIENT_IP, " ::ffff:203.0.113.7 "),
        (TENANT, PiiKind.CLIENT_IP, "2001:DB8:0:0::1"),
        (TENANT, PiiKind.EMAIL, " Alice@Example.COM "),
        (TENANT, PiiKind.SESSION, "s-7f3a"),
        (TENANT, PiiKind.PATH, "/data/in/alice-001.png"),
    ]
    out = []
    for keyring, key in ((KEYRING_1, PII_KEY_1), (KEYRING_2, PII_KEY_2)):
        for tenant, kind, value in cases:
            out.append(
                {
                    "key_id": key.key_id,
                    "tenant": tenant,
                    "kind": kind.value,
                    "value": value,
                    "normalized": normalize(kind, value),
                    "pseudonym": Pseudonymizer(keyring, tenant).pseudonym(kind, value),
                }
            )
    return {
        "description": "§5.1 pseudonyms under both keys of keys/test-only-pii.key: "
        "pseudonym(kind, value) = hex HMAC-SHA256(HKDF-SHA256(secret, info='ffaudit."
        "pseudonym.v1' 0x00 tenant), 'ffaudit.pseudonym.v1' 0x00 kind 0x00 "
        "normalize(kind, value)).",
        "keyring": "keys/test-only-pii.key",
        "cases": out,
    }


# -- transparency logs (§14) ------------------------------------------------------------
#
# The trees, proofs and roots are computed here from RFC 9162's recursive definitions
# (§2.1.1 MTH, §2.1.3.1 PATH, §2.1.4.1 SUBPROOF) with plain SHA-256, not with ffaudit's Merkle code
# (audit/integrity/merkle.py), which the tests check against them.


def sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def leaf(entry: bytes) -> bytes:
    return sha256(b"\x00" + entry)


def split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) over the leaf hashes."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def inclusion_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the inclusion proof of leaf m, leaf side first."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return [*inclusion_path(m, leaves[:k]), mth(leaves[k:])]
    return [*inclusion_path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = split(n)
    if m <= k:
        return [*subproof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def entries(records: list[Record]) -> list[bytes]:
    """The log's entries of a chain (§14.1): each record's event.hash, 32 raw bytes."""
    return [bytes.fromhex(r[f.EVENT_HASH]) for r in records]


def checkpoint_note(records: list[Record]) -> str:
    """The service's checkpoint of the log of `records` (a C2SP signed note, §14.3)."""
    leaves = [leaf(e) for e in entries(records)]
    return sign_checkpoint(Checkpoint(ORIGIN, len(leaves), mth(leaves)), LOG).encode().decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_tlog(out: Path) -> None:
    """tlog/: the log of chains/intact.ndjson (7 records): checkpoints at sizes 3 and 7, the
    tlog-proof of sequence 3, the consistency proof 3 -> 7, and a second, forked checkpoint
    of size 7 (the log of chains/forged-chain.ndjson, whose records 5..7 differ)."""
    records = base_chain()
    leaves = [leaf(e) for e in entries(records)]
    forged = relink(
        [*records[:4], dict(records[4], **{f.EVENT_OUTCOME: "failure"}), *records[5:]], 4
    )
    vkey = LOG.verifier.vkey()
    write(out / "log.vkey", f"{vkey}\n".encode())
    write(out / "log.policy", f"log {vkey}\nquorum none\n".encode())
    write(out / "checkpoint-3.note", checkpoint_note(records[:3]).encode())
    note7 = checkpoint_note(records)
    write(out / "checkpoint-7.note", note7.encode())
    write(out / "checkpoint-7-forked.note", checkpoint_note(forged).encode())
    proof = TlogProof(2, tuple(inclusion_path(2, leaves)), note7.encode())
    write(out / "cam-1-3.tlog-proof", proof.encode())
    consistency = {
        "stream": STREAM,
        "old_size": 3,
        "new_size": 7,
        "hashes": [b64(h) for h in subproof(3, leaves, True)],
        "checkpoint": note7,
    }
    write(out / "consistency-3-7.json", dump(consistency))
    seq3, seq4 = records[2][f.EVENT_HASH], records[3][f.EVENT_HASH]
    root3, root7 = b64(mth(leaves[:3])), b64(mth(leaves))
    after = {"origin": ORIGIN, "size": 7, "root": root7}
    write(
        out / "expected.json",
        dump(
            {
                "description": "The transparency log (§14) of chains/intact.ndjson, stream "
                f"cam-1 of tenant acme: origin {ORIGIN}, one leaf per record (entry: the "
                "record's event.hash, 32 raw bytes; leaf hash SHA-256(0x00 || entry)), "
                "checkpoints signed by keys/service.pub as the log key (key name = origin). "
                "Each case starts from an empty state, folds in the `state` checkpoints, "
                "verifies `proof` for `event_hash` under log.policy and requires the origin, "
                "then folds the proof's checkpoint into the state with `consistency` "
                "(§14.6 steps 1-4).",
                "records": "../chains/intact.ndjson",
                "service_pubkey": "../keys/service.pub",
                "origin": ORIGIN,
                "vkey": vkey,
                "key_id": LOG.verifier.key_id.hex(),
                "leaves": [
                    {
                        "index": i,
                        "sequence": r[f.EVENT_SEQUENCE],
                        "entry": r[f.EVENT_HASH],
                        "leaf_hash": leaf(e).hex(),
                    }
                    for i, (r, e) in enumerate(zip(records, entries(records), strict=True))
                ],
                "checkpoints": [
                    {"note": "checkpoint-3.note", "size": 3, "root": root3},
                    {"note": "checkpoint-7.note", "size": 7, "root": root7},
                    {
                        "note": "checkpoint-7-forked.note",
                        "size": 7,
                        "root": b64(mth([leaf(e) for e in entries(forged)])),
                    },
                ],
                "inclusion": {
                    "proof": "cam-1-3.tlog-proof",
                    "sequence": 3,
                    "index": 2,
                    "size": 7,
                    "hashes": [b64(h) for h in inclusion_path(2, leaves)],
                },
                "consistency": {
                    "file": "consistency-3-7.json",
                    "old_size": 3,
                    "new_size": 7,
                    "hashes": consistency["hashes"],
                },
                "cases": [
                    {
                        "description": "the record at sequence 3 is leaf 2 of the checkpoint "
                        "of size 7",
                        "proof": "cam-1-3.tlog-proof",
                        "event_hash": seq3,
                        "state": [],
                        "consistency": [],
                        "ok": True,
                        "state_after": after,
                    },
                    {
                        "description": "sequence 4's hash with sequence 3's proof: not the "
                        "leaf the log holds at index 2",
                        "proof": "cam-1-3.tlog-proof",
                        "event_hash": seq4,
                        "state": [],
                        "consistency": [],
                        "ok": False,
                        "kind": "not_included",
                    },
                    {
                        "description": "the checkpoint of size 3 seen before: the proof's "
                        "checkpoint (size 7) is consistent with it",
                        "proof": "cam-1-3.tlog-proof",
                        "event_hash": seq3,
                        "state": ["checkpoint-3.note"],
                        "consistency": ["consistency-3-7.json"],
                        "ok": True,
                        "state_after": after,
                    },
                    {
                        "description": "the checkpoint of size 3 seen before, no consistency "
                        "proof given",
                        "proof": "cam-1-3.tlog-proof",
                        "event_hash": seq3,
                        "state": ["checkpoint-3.note"],
                        "consistency": [],
                        "ok": False,
                        "kind": "consistency_unproven",
                    },
                    {
                        "description": "another checkpoint of size 7 seen before (the "
                        "service signed two histories): the log forked",
                        "proof": "cam-1-3.tlog-proof",
                        "event_hash": seq3,
                        "state": ["checkpoint-7-forked.note"],
                        "consistency": [],
                        "ok": False,
                        "kind": "forked",
                    },
                ],
            }
        ),
    )


def export_log(records: list[Record]) -> StreamLog:
    """The stream's log as the service hands it to the writer: every record a leaf, in
    sequence order; one checkpoint at the log's size and each record's proof against it."""
    leaves = [leaf(e) for e in entries(records)]
    proofs = {
        r[f.EVENT_SEQUENCE]: LogProof(i, tuple(inclusion_path(i, leaves)))
        for i, r in enumerate(records)
    }
    return StreamLog(ORIGIN, checkpoint_note(records), proofs)


# -- exports ----------------------------------------------------------------------------

EXPORT_EVENTS = 10  # carol is the actor of events 2, 5, 8: sequences 3, 7, 11
EXPORT_ACTOR = "carol"


def export_chain() -> list[Record]:
    return seal(
        Sealer(writer(every=4), Pseudonymizer(KEYRING_1, TENANT)),
        [event(i) for i in range(EXPORT_EVENTS)],
    )


def export_query() -> dict[str, Any]:
    actor = Pseudonymizer(KEYRING_1, TENANT).pseudonym(PiiKind.USER, EXPORT_ACTOR)
    return {"export_id": "exp-7e570001", "filters": {"actor_hashes": [actor]}, "order": "asc"}


def export_selection(records: list[Record]) -> tuple[list[Record], set[tuple[str, int]]]:
    """The actor's records, and what the service fetches for them: from the first selected
    through the first checkpoint at or after the last one (§10.1)."""
    actor = export_query()["filters"]["actor_hashes"][0]
    selected = {(STREAM, r[f.EVENT_SEQUENCE]) for r in records if r.get(f.USER_HASH) == actor}
    lo, hi = min(s for _, s in selected), max(s for _, s in selected)
    end = next(
        r[f.EVENT_SEQUENCE]
        for r in records
        if r[f.EVENT_SEQUENCE] >= hi and r[f.EVENT_ACTION] == "audit.checkpoint"
    )
    return [r for r in records if lo <= r[f.EVENT_SEQUENCE] <= end], selected


def write_exports(out: Path) -> None:
    """exports/intact, exports/damaged, exports/tlog (by write_export), exports/tampered
    and exports/tlog-tampered."""
    records = export_chain()
    fetched, selected = export_selection(records)
    keys = {STREAM: PRODUCER.verifier.pem()}
    write_export(
        out / "intact",
        fetched,
        selected,
        keys,
        export_query(),
        SERVICE,
        tenant=TENANT,
        created_at=EXPORT_CREATED_AT,
    )
    # The store as the service found it: sequence 7 (selected) and sequence 10 (exported as
    # a stub) edited in place, sequence 9 gone; and a record claiming sequence 5 was refused
    # at ingest. The bundle is still written, its damage stated in the signed manifest.
    damaged: list[Record] = []
    for r in fetched:
        seq = r[f.EVENT_SEQUENCE]
        if seq == 9:
            continue
        damaged.append(dict(r, **{f.EVENT_OUTCOME: "failure"}) if seq in (7, 10) else r)
    write_export(
        out / "damaged",
        damaged,
        selected,
        keys,
        export_query(),
        SERVICE,
        tenant=TENANT,
        findings=[
            Finding(
                FindingKind.REJECTED_AT_INGEST,
                STREAM,
                5,
                "a record claiming the sequence was kept as evidence at ingest (forged)",
            )
        ],
        created_at=EXPORT_CREATED_AT,
    )
    # The intact bundle edited after the service signed it: records.ndjson line 2
    # (sequence 7) changed, nothing else touched.
    shutil.copytree(out / "intact", out / "tampered")
    path = out / "tampered" / "records.ndjson"
    rows = path.read_bytes().splitlines()
    rows[1] = line(dict(orjson.loads(rows[1]), **{f.EVENT_OUTCOME: "failure"}))
    path.write_bytes(b"".join(row + b"\n" for row in rows))
    # v3: the intact export with the stream's transparency log (every record of the
    # stream is a leaf; one checkpoint at size 14).
    write_export(
        out / "tlog",
        fetched,
        selected,
        keys,
        export_query(),
        SERVICE,
        tenant=TENANT,
        created_at=EXPORT_CREATED_AT,
        tlog={STREAM: export_log(records)},
    )
    # ... and with one hash of sequence 7's inclusion proof (tlog.ndjson line 4) altered,
    # then the files re-hashed and the manifest re-signed, as the service key's holder can.
    shutil.copytree(out / "tlog", out / "tlog-tampered")
    tampered = out / "tlog-tampered"
    lines = [orjson.loads(row) for row in (tampered / "tlog.ndjson").read_bytes().splitlines()]
    assert lines[3]["sequence"] == 7
    raw = bytearray(base64.b64decode(lines[3]["hashes"][0]))
    raw[0] ^= 1
    lines[3]["hashes"][0] = b64(bytes(raw))
    (tampered / "tlog.ndjson").write_bytes(b"".join(canonicalize(x) + b"\n" for x in lines))
    manifest = orjson.loads((tampered / "manifest.json").read_bytes())
    manifest["files"]["tlog.ndjson"] = sha256((tampered / "tlog.ndjson").read_bytes()).hex()
    (tampered / "manifest.json").write_bytes(canonicalize(manifest) + b"\n")
    signature = SERVICE.sign(manifest_message(manifest))
    (tampered / "manifest.sig").write_bytes(base64.b64encode(signature) + b"\n")


def export_failure(
    kind: str, file: str | None, ln: int | None, stream: str | None, seq: int | None, declared: bool
) -> dict[str, Any]:
    return {
        "kind": kind,
        "file": file,
        "line": ln,
        "stream": stream,
        "sequence": seq,
        "declared": declared,
    }


def export_range(
    links: int, producer_signed: list[int], unproven: list[int], log: dict[str, Any] | None = None
) -> dict[str, Any]:
    out = {
        "stream": STREAM,
        "first_sequence": 3,
        "last_sequence": 12,
        "records": 3,
        "links": links,
        "checkpoints": 3,
        "signed_through": 12,
        "producer_signed": producer_signed,
        "unproven": unproven,
    }
    if log is not None:
        out["log"] = log
    return out


def export_log_report(proven: list[int], unproven: list[int]) -> dict[str, Any]:
    """A v3 range's log report (§10.3 step 9); `unproven` lists sequences (the reasons'
    wording is not normative)."""
    return {
        "origin": ORIGIN,
        "size": 14,
        "cosigned": False,
        "witnesses": [],
        "proven": proven,
        "unproven": unproven,
    }


EXPORTS: dict[str, dict[str, Any]] = {
    "intact": {
        "description": "carol's records (sequences 3, 7, 11) of an intact stream of 10 events "
        "with a checkpoint every 4 records, exported with what the service fetches for them: "
        "sequences 3..12, through the checkpoint after the last selected record. "
        "records.ndjson: 3, 7, 11; checkpoints.ndjson: 4, 8, 12; links.ndjson (stubs): 5, "
        "6, 9, 10. Each selected record is directly followed by a checkpoint, so each is "
        "producer-signed (§10.4). verify-export exits 0.",
        "ok": True,
        "authentic": True,
        "damaged": False,
        "failures": [],
        "findings": [],
        "ranges": [export_range(4, [3, 7, 11], [])],
    },
    "damaged": {
        "description": "The same export from a damaged store, written by write_export with "
        "its damage stated in the signed manifest (failures, findings) and the CSV's verdict "
        "column: sequence 7 (selected) edited in the store -> modified_record; sequence 9 "
        "missing -> missing_record (no file); sequence 10 (a stub) edited in the store -> "
        "finding modified_in_store; a record refused at ingest for sequence 5 -> finding "
        "rejected_at_ingest. Every failure is declared: authentic and damaged, not ok "
        "(verify-export exits 4).",
        "ok": False,
        "authentic": True,
        "damaged": True,
        "failures": [
            export_failure("modified_record", "records.ndjson", 2, STREAM, 7, True),
            export_failure("missing_record", None, None, STREAM, 9, True),
        ],
        "findings": [
            {"kind": "rejected_at_ingest", "stream": STREAM, "sequence": 5},
            {"kind": "modified_in_store", "stream": STREAM, "sequence": 10},
        ],
        "ranges": [export_range(3, [3, 11], [7])],
    },
    "tampered": {
        "description": "The intact bundle with records.ndjson line 2 (sequence 7) edited after "
        "the service signed it (event.outcome success -> failure), manifest untouched: the "
        "file no longer has its SHA-256, records.csv line 3 (the row of sequence 7) no "
        "longer says what records.ndjson says, and the record no longer hashes to its "
        "event.hash. None of it is declared: not authentic (verify-export exits 1).",
        "ok": False,
        "authentic": False,
        "damaged": True,
        "failures": [
            export_failure("file_hash", "records.ndjson", None, None, None, False),
            export_failure("csv_mismatch", "records.csv", 3, STREAM, 7, False),
            export_failure("modified_record", "records.ndjson", 2, STREAM, 7, False),
        ],
        "findings": [],
        "ranges": [export_range(4, [3, 11], [7])],
    },
    "tlog": {
        "description": "The intact export as format v3, with the stream's transparency log "
        f"({ORIGIN}): every record of the stream (sequences 1..14) is a leaf, in sequence "
        "order (leaf index = sequence - 1); tlog.ndjson holds the checkpoint of size 14 "
        "signed by keys/service.pub as the log key (no witness: cosigned false), then the "
        "inclusion proofs of the full records 3, 4, 7, 8, 11, 12 (lines 2..7); not_in_log "
        "is empty. Every selected record is producer-signed and proven by the log. "
        "verify-export exits 0, with --require-log too.",
        "ok": True,
        "authentic": True,
        "damaged": False,
        "failures": [],
        "findings": [],
        "ranges": [export_range(4, [3, 7, 11], [], export_log_report([3, 7, 11], []))],
    },
    "tlog-tampered": {
        "description": "The tlog bundle with the first hash of sequence 7's inclusion proof "
        "(tlog.ndjson line 4) altered by one bit, the files re-hashed and the manifest "
        "re-signed with the service key (keys/test-only-service-signing.key), as its holder "
        "can: every file hash, the chain and the producer's checkpoints verify, the proof "
        "does not reach the checkpoint's root -> inclusion (not declared). Not authentic "
        "(verify-export exits 1); sequence 7 is not proven by the log.",
        "ok": False,
        "authentic": False,
        "damaged": True,
        "failures": [export_failure("inclusion", "tlog.ndjson", 4, STREAM, 7, False)],
        "findings": [],
        "ranges": [export_range(4, [3, 7, 11], [], export_log_report([3, 11], [7]))],
    },
}


# -- writing ----------------------------------------------------------------------------


def dump(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_keys(out: Path) -> None:
    keys = out / "keys"
    for name, key in (("producer", PRODUCER), ("attacker", ATTACKER), ("service", SERVICE)):
        write(keys / f"{name}.pub", key.verifier.pem())
        write(keys / f"test-only-{name}-signing.key", key.pem())
    write(keys / "test-only-pii.key", KEYRING_2.dumps())
    write(
        keys / "fingerprints.json",
        dump(
            {
                name: {
                    "public_key": f"{name}.pub",
                    "private_key": f"test-only-{name}-signing.key",
                    "seed_hex": seed.hex(),
                    "fingerprint": key.verifier.fingerprint,
                }
                for name, key, seed in (
                    ("producer", PRODUCER, PRODUCER_SEED),
                    ("attacker", ATTACKER, ATTACKER_SEED),
                    ("service", SERVICE, SERVICE_SEED),
                )
            }
        ),
    )


def generate(out: Path) -> None:
    """Write every vector under `out`: this directory (its generated parts are replaced)
    or a new or empty one (nothing else is ever deleted)."""
    if out.resolve() != HERE and out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; give a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    write_keys(out)
    for v in chain_vectors():
        write(out / "chains" / f"{v.name}.ndjson", b"".join(ln + b"\n" for ln in v.lines))
        write(out / "chains" / f"{v.name}.expected.json", dump(v.expected()))
    write(out / "pseudonyms.json", dump(pseudonym_vectors()))
    exports = out / "exports"
    exports.mkdir()
    write_exports(exports)
    for name, expected in EXPORTS.items():
        doc = {
            "description": expected["description"],
            "bundle": name,
            "service_pubkey": "../keys/service.pub",
            **{k: v for k, v in expected.items() if k != "description"},
        }
        write(exports / f"{name}.expected.json", dump(doc))
    write_tlog(out / "tlog")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
