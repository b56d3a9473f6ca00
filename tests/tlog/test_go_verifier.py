"""Interop: what audit.integrity.merkle and audit.integrity.notes produce verifies with the
Go ecosystem's own implementations (tests/tlog/goverify: golang.org/x/mod/sumdb/note,
transparency-dev/formats and transparency-dev/merkle), and what they reject Go rejects.

Every case carries the verdict expected of it and is judged twice, by goverify and by our
Python verifiers (notes.verify_checkpoint, notes.parse_tlog_proof, merkle.verify_inclusion,
merkle.verify_consistency); one assertion per case compares both verdicts with the
expected one, so a divergence between the two implementations fails that case by name.

goverify is built once per session with the `go` on PATH; CI installs Go, so there a
missing `go` fails the tests, elsewhere it skips them.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.integrity.errors import FFAuditError
from audit.integrity.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit.integrity.notes import (
    Checkpoint,
    CosignatureSigner,
    Note,
    NoteError,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    Policy,
    TlogProof,
    parse_note,
    parse_tlog_proof,
    sign_checkpoint,
    threshold_policy,
    verify_checkpoint,
)

GOVERIFY_SRC = Path(__file__).with_name("goverify")
ORIGIN = "ffaudit/acme/cam-1"
WITNESS_NAMES = ("witness.example.org/w1", "witness.example.net/w2")
TREE_SIZE = 1000
SIZES = (1, 2, 7, 256, 257, 999, 1000)
# The fork shares the first FORK_AT entries with the tree, then differs.
FORK_AT = 256
BASE_TIME = 1_760_000_000
SEED = 6962
SWEEP_SIZE = 70


# -- goverify -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def goverify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """goverify, built from tests/tlog/goverify with the pinned go.sum."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            pytest.fail(
                "`go` is not on PATH: CI must install Go (>= 1.26, go.mod's version) "
                "for the tests/tlog Go interop verifier",
                pytrace=False,
            )
        pytest.skip("Go is not installed here (CI installs it)")
    binary = tmp_path_factory.mktemp("goverify") / "goverify"
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        # go.mod and go.sum are committed: never let the build rewrite them, and never let
        # a go.work above the checkout or a GOFLAGS from the environment change the build.
        "GOFLAGS": "-mod=readonly",
        "GOWORK": "off",
    }
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GOVERIFY_SRC,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`go build` of {GOVERIFY_SRC} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-6000:]}",
            pytrace=False,
        )
    return binary


def run_goverify(binary: Path, cases: Sequence[Case], workdir: Path) -> dict[str, GoResult]:
    """goverify's verdict on each of `cases`, in one run."""
    path = workdir / "cases.json"
    path.write_text(json.dumps({"cases": [c.go_input() for c in cases]}))
    result = subprocess.run(
        [str(binary), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"goverify failed ({result.returncode}):\n{result.stderr}", pytrace=False)
    verdicts = {}
    for line in result.stdout.splitlines():
        doc = json.loads(line)
        verdicts[doc["id"]] = GoResult(
            ok=doc["ok"],
            error=doc["error"],
            size=doc.get("size"),
            root=doc.get("root"),
            index=doc.get("index"),
            cosigners=tuple(doc.get("cosigners") or ()),
        )
    assert list(verdicts) == [c.id for c in cases], "goverify answered another set of cases"
    return verdicts


@pytest.fixture(scope="session")
def go_verdicts(goverify: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GoResult]:
    """goverify's verdict on every case of the matrix, run once."""
    return run_goverify(goverify, all_cases(), tmp_path_factory.mktemp("goverify-cases"))


@dataclass(frozen=True, slots=True)
class GoResult:
    ok: bool
    error: str
    size: int | None
    root: str | None
    index: int | None
    cosigners: tuple[str, ...]


# -- the log, its witnesses and its history -----------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _flip(data: bytes, at: int = -1) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


@dataclass(frozen=True)
class World:
    entries: tuple[bytes, ...]
    tree: MemoryTree
    fork: MemoryTree
    log: NoteSigner
    witnesses: tuple[CosignatureSigner, ...]
    impostor_log: NoteSigner  # the log's name, another key
    impostor_witness: CosignatureSigner  # the first witness's name, another key
    other_log: NoteSigner  # another log altogether

    def checkpoint(self, size: int, root: bytes | None = None) -> Checkpoint:
        return Checkpoint(ORIGIN, size, self.tree.root(size) if root is None else root)

    def cosign(self, cp: Checkpoint, *witnesses: CosignatureSigner) -> tuple[NoteSignature, ...]:
        return tuple(w.cosign(cp.text(), BASE_TIME + cp.size) for w in witnesses)

    def note(self, cp: Checkpoint, signer: NoteSigner | None = None) -> Note:
        """`cp` signed by the log (or `signer`) and cosigned by both witnesses."""
        note = sign_checkpoint(cp, signer or self.log)
        return note.with_signatures(*self.cosign(cp, *self.witnesses))

    def signed(self, size: int) -> bytes:
        return self.note(self.checkpoint(size)).encode()

    def tlog_proof(self, index: int, size: int, extra: bytes | None = None) -> bytes:
        hashes = tuple(self.tree.inclusion_proof(index, size))
        return TlogProof(index, hashes, self.signed(size), extra).encode()


def _key(rng: random.Random) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))


@functools.cache
def world() -> World:
    rng = random.Random(SEED)
    entries = tuple(rng.randbytes(32) for _ in range(TREE_SIZE))
    tree, fork = MemoryTree(), MemoryTree()
    for i, entry in enumerate(entries):
        assert tree.append_entry(entry) == i
        fork.append_entry(entry if i < FORK_AT else rng.randbytes(32))
    log_key = _key(rng)
    witnesses = tuple(CosignatureSigner(name, _key(rng)) for name in WITNESS_NAMES)
    return World(
        entries=entries,
        tree=tree,
        fork=fork,
        log=NoteSigner(ORIGIN, log_key),
        witnesses=witnesses,
        impostor_log=NoteSigner(ORIGIN, _key(rng)),
        impostor_witness=CosignatureSigner(WITNESS_NAMES[0], _key(rng)),
        other_log=NoteSigner("ffaudit/acme/cam-2", _key(rng)),
    )


# -- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """The verifier's policy: the log's key and `quorum` of `witnesses`."""

    log: NoteVerifier
    witnesses: tuple[NoteVerifier, ...]
    quorum: int

    def go(self) -> dict[str, Any]:
        return {
            "origin": self.log.name,
            "log_vkey": self.log.vkey(),
            "witness_vkeys": [w.vkey() for w in self.witnesses],
            "quorum": self.quorum,
        }

    def policy(self) -> Policy:
        named = {f"w{i}": v for i, v in enumerate(self.witnesses, 1)}
        return threshold_policy([self.log], named, self.quorum)


def trust(quorum: int = 2, witnesses: int = 2) -> Trust:
    w = world()
    return Trust(w.log.verifier, tuple(s.verifier for s in w.witnesses[:witnesses]), quorum)


@dataclass(frozen=True)
class Expect:
    """What goverify parses from an accepted checkpoint or proof."""

    size: int
    root: bytes
    index: int | None = None
    cosigners: tuple[str, ...] = WITNESS_NAMES


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # checkpoint, inclusion, consistency
    ok: bool  # the verdict expected of our verifiers, and of Go unless go_ok says otherwise
    fields: Mapping[str, Any]  # goverify's input, id and kind aside
    python: Callable[[], None]  # our verifiers; raises FFAuditError on rejection
    expect: Expect | None = None
    # Go's verdict where it knowingly differs (see stricter_than_go), and the reason.
    go_ok: bool | None = None
    why: str = ""

    def go_input(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, **self.fields}


def checkpoint_case(
    id: str, note: bytes, ok: bool, policy: Trust | None = None, expect: Expect | None = None
) -> Case:
    t = policy or trust()

    def python() -> None:
        verify_checkpoint(note, t.policy())

    return Case(
        f"checkpoint/{id}", "checkpoint", ok, {"note": _b64(note), **t.go()}, python, expect
    )


def inclusion_case(
    id: str,
    proof: bytes,
    entry: bytes,
    ok: bool,
    policy: Trust | None = None,
    expect: Expect | None = None,
) -> Case:
    t = policy or trust()

    def python() -> None:
        parsed = parse_tlog_proof(proof)
        cp = verify_checkpoint(parsed.checkpoint, t.policy()).checkpoint
        verify_inclusion(leaf_hash(entry), parsed.index, cp.size, parsed.hashes, cp.root_hash)

    fields = {"tlog_proof": _b64(proof), "entry": _b64(entry), **t.go()}
    return Case(f"inclusion/{id}", "inclusion", ok, fields, python, expect)


def consistency_case(
    id: str,
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
    ok: bool,
) -> Case:
    def python() -> None:
        verify_consistency(old_size, new_size, proof, old_root, new_root)

    fields = {
        "old_size": old_size,
        "new_size": new_size,
        "old_root": _b64(old_root),
        "new_root": _b64(new_root),
        "proof": [_b64(h) for h in proof],
    }
    return Case(f"consistency/{id}", "consistency", ok, fields, python)


def interesting_indexes(size: int) -> list[int]:
    """First, last, and every power of two and its neighbours below `size`."""
    out = {0, size - 1}
    for k in range(size.bit_length()):
        out |= {(1 << k) - 1, 1 << k, (1 << k) + 1}
    return sorted(i for i in out if 0 <= i < size)


def _with_text(note: bytes, old: str, new: str) -> bytes:
    """`note` with its body edited and its signature lines kept."""
    parsed = parse_note(note)
    assert old in parsed.text
    return Note(parsed.text.replace(old, new, 1), parsed.signatures).encode()


def _proof_lines(proof: bytes, edit: Callable[[list[str]], list[str]]) -> bytes:
    """A tlog-proof with its header lines (before the blank line) rewritten."""
    head, sep, checkpoint = proof.partition(b"\n\n")
    return "\n".join(edit(head.decode("ascii").split("\n"))).encode("ascii") + sep + checkpoint


def _non_canonical(encoded: str) -> str:
    """Padded standard base64 with its lowest padding bit set: the same bytes to a lenient
    decoder, a second encoding to a strict one."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = encoded.rstrip("=")
    assert body != encoded, "no padding, no padding bits"
    return body[:-1] + alphabet[alphabet.index(body[-1]) | 1] + encoded[len(body) :]


def valid_cases() -> Iterator[Case]:
    w = world()
    for size in SIZES:
        cp = w.checkpoint(size)
        yield checkpoint_case(
            f"size={size}", w.signed(size), True, expect=Expect(size, cp.root_hash)
        )
    # The same notes under weaker policies: one witness, no witness at all.
    yield checkpoint_case(
        "size=1000/quorum=1-of-2", w.signed(1000), True, trust(1), Expect(1000, w.tree.root())
    )
    yield checkpoint_case(
        "size=1000/no-witnesses",
        w.signed(1000),
        True,
        trust(0, 0),
        Expect(1000, w.tree.root(), cosigners=()),
    )
    for size in SIZES:
        for index in interesting_indexes(size):
            yield inclusion_case(
                f"size={size}/index={index}",
                w.tlog_proof(index, size),
                w.entries[index],
                True,
                expect=Expect(size, w.tree.root(size), index),
            )
    yield inclusion_case(
        "size=1000/index=500/extra",
        w.tlog_proof(500, 1000, extra=b"ffaudit record 500"),
        w.entries[500],
        True,
        expect=Expect(1000, w.tree.root(), 500),
    )
    for old, new in itertools.combinations_with_replacement(SIZES, 2):
        yield consistency_case(
            f"{old}->{new}",
            old,
            new,
            w.tree.consistency_proof(old, new),
            w.tree.root(old),
            w.tree.root(new),
            True,
        )
    yield from unicode_log_cases()
    yield consistency_case("0->1000", 0, 1000, [], EMPTY_ROOT, w.tree.root(), True)
    # The fork shares the first FORK_AT entries: its history extends the tree's up to there.
    yield consistency_case(
        f"fork/{FORK_AT}->1000",
        FORK_AT,
        1000,
        w.fork.consistency_proof(FORK_AT, 1000),
        w.tree.root(FORK_AT),
        w.fork.root(1000),
        True,
    )


def checkpoint_tampers() -> Iterator[Case]:
    w = world()
    cp = w.checkpoint(1000)
    good = w.signed(1000)
    log_sig = sign_checkpoint(cp, w.log).signatures
    w1, w2 = w.cosign(cp, *w.witnesses)

    yield checkpoint_case(
        "altered-root", _with_text(good, _b64(cp.root_hash), _b64(_flip(cp.root_hash))), False
    )
    yield checkpoint_case("altered-size", _with_text(good, "\n1000\n", "\n1001\n"), False)
    yield checkpoint_case("altered-origin", _with_text(good, ORIGIN, ORIGIN + "x"), False)
    yield checkpoint_case("signed-by-impostor-key", w.note(cp, w.impostor_log).encode(), False)
    other = Checkpoint(w.other_log.name, 1000, cp.root_hash)
    yield checkpoint_case("signed-by-another-log", w.note(other, w.other_log).encode(), False)
    yield checkpoint_case("no-log-signature", Note(cp.text(), (w1, w2)).encode(), False)
    bad_log = replace(log_sig[0], signature=_flip(log_sig[0].signature))
    yield checkpoint_case(
        "log-signature-flipped", Note(cp.text(), (bad_log, w1, w2)).encode(), False
    )

    later = replace(w1, signature=(BASE_TIME + 1).to_bytes(8, "big") + w1.signature[8:])
    flipped = replace(w1, signature=_flip(w1.signature))
    elsewhere = w.cosign(w.checkpoint(999), w.witnesses[0])[0]
    for label, sig in (
        ("cosignature-other-timestamp", later),
        ("cosignature-flipped", flipped),
        ("cosignature-of-another-checkpoint", elsewhere),
    ):
        tampered = Note(cp.text(), (*log_sig, sig, w2)).encode()
        yield checkpoint_case(label, tampered, False)
        # A known witness's failing cosignature rejects the note even where the quorum is
        # met without it (signed-note: a known key's bad signature rejects the whole note).
        yield checkpoint_case(f"{label}/quorum=1-of-2", tampered, False, trust(1))

    one = Note(cp.text(), (*log_sig, w2)).encode()
    yield checkpoint_case("one-witness-missing/quorum=2-of-2", one, False)
    yield checkpoint_case(
        "one-witness-missing/quorum=1-of-2",
        one,
        True,
        trust(1),
        Expect(1000, cp.root_hash, cosigners=(WITNESS_NAMES[1],)),
    )
    # A cosignature under the first witness's name and another key is no cosignature.
    impostor = w.cosign(cp, w.impostor_witness)[0]
    yield checkpoint_case(
        "impostor-witness/quorum=2-of-2", Note(cp.text(), (*log_sig, impostor, w2)).encode(), False
    )
    # Two cosignature lines by one witness count once.
    yield checkpoint_case(
        "witness-counted-once/quorum=2-of-2", Note(cp.text(), (*log_sig, w2, w2)).encode(), False
    )


def inclusion_tampers() -> Iterator[Case]:
    w = world()
    size, index = 1000, 511
    entry = w.entries[index]
    good = w.tlog_proof(index, size)
    hashes = w.tree.inclusion_proof(index, size)
    signed = w.signed(size)

    def proof(at: int = index, path: Sequence[bytes] = hashes, checkpoint: bytes = signed) -> bytes:
        # Built by hand: TlogProof refuses an index outside the checkpoint.
        lines = ["c2sp.org/tlog-proof@v1", f"index {at}", *(_b64(h) for h in path)]
        return ("\n".join(lines) + "\n\n").encode("ascii") + checkpoint

    assert proof() == good
    for i in range(len(hashes)):
        path = [*hashes]
        path[i] = _flip(path[i])
        yield inclusion_case(f"altered-proof-hash/{i}", proof(path=path), entry, False)
    yield inclusion_case("dropped-proof-hash", proof(path=hashes[:-1]), entry, False)
    yield inclusion_case("extra-proof-hash", proof(path=[*hashes, hashes[0]]), entry, False)
    yield inclusion_case("wrong-entry", good, w.entries[index + 1], False)
    yield inclusion_case("wrong-index/+1", proof(at=index + 1), entry, False)
    yield inclusion_case("wrong-index/-1", proof(at=index - 1), entry, False)
    yield inclusion_case(
        "wrong-index/neighbour-entry", proof(at=index + 1), w.entries[index + 1], False
    )
    yield inclusion_case("wrong-index/=size", proof(at=size), entry, False)
    yield inclusion_case(
        "proof-of-smaller-tree", proof(path=w.tree.inclusion_proof(index, 999)), entry, False
    )
    # A checkpoint edited after signing, and one the log signed with a wrong value.
    root = w.tree.root(size)
    yield inclusion_case(
        "altered-root/unsigned",
        proof(checkpoint=_with_text(signed, _b64(root), _b64(_flip(root)))),
        entry,
        False,
    )
    yield inclusion_case(
        "altered-size/unsigned",
        proof(checkpoint=_with_text(signed, "\n1000\n", "\n1001\n")),
        entry,
        False,
    )
    for label, cp in (
        ("altered-root/signed", w.checkpoint(size, _flip(root))),
        ("root-of-another-size/signed", w.checkpoint(size, w.tree.root(999))),
    ):
        yield inclusion_case(label, proof(checkpoint=w.note(cp).encode()), entry, False)
    last = w.tree.inclusion_proof(998, size)
    for lie in (999, 1001):
        lying = w.note(w.checkpoint(lie, root)).encode()
        # Leaf 998's path runs along the right edge, whose shape the size sets: the lie shows.
        yield inclusion_case(
            f"altered-size/signed-{lie}/index=998",
            proof(at=998, path=last, checkpoint=lying),
            w.entries[998],
            False,
        )
        # Leaf 511's path is the same in trees of 513 to 1024 leaves, and its last hash is
        # taken on trust: an inclusion proof cannot tell that size from the real one (the
        # log's signature vouches for the size; a consistency proof would expose it).
        yield inclusion_case(
            f"altered-size/signed-{lie}/index=511",
            proof(checkpoint=lying),
            entry,
            True,
            expect=Expect(lie, root, index),
        )
    yield inclusion_case(
        "signed-by-impostor-key",
        proof(checkpoint=w.note(w.checkpoint(size), w.impostor_log).encode()),
        entry,
        False,
    )
    cp = w.checkpoint(size)
    one = sign_checkpoint(cp, w.log).with_signatures(*w.cosign(cp, w.witnesses[0])).encode()
    yield inclusion_case("one-witness-missing/quorum=2-of-2", proof(checkpoint=one), entry, False)
    yield inclusion_case(
        "one-witness-missing/quorum=1-of-2",
        proof(checkpoint=one),
        entry,
        True,
        trust(1),
        Expect(size, root, index, cosigners=(WITNESS_NAMES[0],)),
    )
    # The container itself.
    yield inclusion_case(
        "malformed/header-v2",
        _proof_lines(good, lambda ls: ["c2sp.org/tlog-proof@v2", *ls[1:]]),
        entry,
        False,
    )
    yield inclusion_case(
        "malformed/index-leading-zero",
        _proof_lines(good, lambda ls: [ls[0], f"index 0{index}", *ls[2:]]),
        entry,
        False,
    )
    yield inclusion_case(
        "malformed/non-canonical-base64",
        _proof_lines(good, lambda ls: [*ls[:2], _non_canonical(_b64(hashes[0])), *ls[3:]]),
        entry,
        False,
    )
    yield inclusion_case(
        "malformed/no-blank-line",
        good.replace(b"\n\n", b"\n", 1),
        entry,
        False,
    )


def consistency_tampers() -> Iterator[Case]:
    w = world()
    t = w.tree
    for old, new in ((7, 1000), (257, 1000), (256, 999)):
        proof = t.consistency_proof(old, new)
        r_old, r_new = t.root(old), t.root(new)
        for i in range(len(proof)):
            bad = [*proof]
            bad[i] = _flip(bad[i])
            yield consistency_case(
                f"{old}->{new}/altered-proof-hash/{i}", old, new, bad, r_old, r_new, False
            )
        yield consistency_case(
            f"{old}->{new}/altered-old-root", old, new, proof, _flip(r_old), r_new, False
        )
        yield consistency_case(
            f"{old}->{new}/altered-new-root", old, new, proof, r_old, _flip(r_new), False
        )
        yield consistency_case(
            f"{old}->{new}/dropped-hash", old, new, proof[:-1], r_old, r_new, False
        )
        yield consistency_case(
            f"{old}->{new}/extra-hash", old, new, [*proof, proof[0]], r_old, r_new, False
        )
        yield consistency_case(f"{old}->{new}/swapped", new, old, proof, r_new, r_old, False)
    # A proof presented for neighbouring sizes.
    yield consistency_case(
        "256->1000-as-257", 257, 1000, t.consistency_proof(256, 1000), t.root(257), t.root(), False
    )
    yield consistency_case(
        "257->1000-as-256", 256, 1000, t.consistency_proof(257, 1000), t.root(256), t.root(), False
    )
    yield consistency_case(
        "257->1000-as-257->999",
        257,
        999,
        t.consistency_proof(257, 1000),
        t.root(257),
        t.root(999),
        False,
    )
    yield consistency_case("7->1000/empty-proof", 7, 1000, [], t.root(7), t.root(), False)
    # A forked history: the fork differs from the tree after FORK_AT entries.
    f = w.fork
    for old in (FORK_AT + 1, 999):
        yield consistency_case(
            f"fork/{old}->1000/fork's-proof",
            old,
            1000,
            f.consistency_proof(old, 1000),
            t.root(old),
            f.root(),
            False,
        )
        yield consistency_case(
            f"fork/{old}->1000/tree's-proof",
            old,
            1000,
            t.consistency_proof(old, 1000),
            t.root(old),
            f.root(),
            False,
        )
    yield consistency_case("fork/1000->1000", 1000, 1000, [], t.root(), f.root(), False)


def unicode_log_cases() -> Iterator[Case]:
    """Non-ASCII key names and origin, an extension line, extra data, and entries of 0 to
    70000 bytes: the byte-level encodings (UTF-8 key ids, leaf hashing) as Go reads them."""
    rng = random.Random(SEED + 1)
    log = NoteSigner("пример.рф/журнал-1", _key(rng))
    witnesses = (
        CosignatureSigner("wítness.example/ü", _key(rng)),
        CosignatureSigner("oid/1.3.6.1.4.1.99999.1", _key(rng)),
    )
    entries = (b"", b"\x00", rng.randbytes(70000), b"x" * 65535, rng.randbytes(1))
    tree = MemoryTree()
    for entry in entries:
        tree.append_entry(entry)
    cp = Checkpoint(log.name, len(entries), tree.root(), ("ëxtension line",))
    note = sign_checkpoint(cp, log).with_signatures(
        *(w.cosign(cp.text(), BASE_TIME) for w in witnesses)
    )
    policy = Trust(log.verifier, tuple(w.verifier for w in witnesses), 2)
    names = tuple(w.name for w in witnesses)
    yield checkpoint_case(
        "unicode", note.encode(), True, policy, Expect(cp.size, cp.root_hash, cosigners=names)
    )
    for i, entry in enumerate(entries):
        proof = TlogProof(i, tuple(tree.inclusion_proof(i)), note.encode(), rng.randbytes(40))
        yield inclusion_case(
            f"unicode/index={i}",
            proof.encode(),
            entry,
            True,
            policy,
            Expect(cp.size, cp.root_hash, i, names),
        )


def stricter_than_go() -> Iterator[Case]:
    """Inputs the C2SP specs forbid, which our verifiers reject and the Go libraries accept.

    Pinned so that neither side drifts unnoticed: goverify is only as strict as they are
    here, and our parsers must stay strict (a value that parses must re-encode to the same
    bytes, audit/integrity/notes.py)."""
    w = world()
    cp = w.checkpoint(1000)
    text = cp.text()
    root = _b64(cp.root_hash)
    w1, w2 = w.cosign(cp, *w.witnesses)
    (log_sig,) = sign_checkpoint(cp, w.log).signatures

    def log_signed(body: str) -> bytes:
        return Note(body, (w.log.sign(body),)).encode()

    def stricter(case: Case, why: str) -> Case:
        assert not case.ok
        return replace(case, id=f"stricter-than-go/{case.id}", go_ok=True, why=why)

    yield stricter(
        checkpoint_case(
            "size-leading-zero",
            log_signed(text.replace("\n1000\n", "\n01000\n")),
            False,
            trust(0, 0),
        ),
        "tlog-checkpoint: tree size has no leading zeroes; formats/log uses ParseUint",
    )
    yield stricter(
        checkpoint_case(
            "root-non-canonical-base64",
            log_signed(text.replace(root, _non_canonical(root))),
            False,
            trust(0, 0),
        ),
        "a second encoding of one root; formats/log decodes with non-strict base64",
    )
    yield stricter(
        checkpoint_case("empty-extension-line", log_signed(text + "\nx\n"), False, trust(0, 0)),
        "tlog-checkpoint: extension lines MUST be non-empty; formats/log does not look",
    )
    for ts in (2**63, 2**64 - 1):
        message = b"cosignature/v1\ntime %d\n" % ts + text.encode()
        signer = w.witnesses[0]
        late = replace(w1, signature=ts.to_bytes(8, "big") + signer.key.sign(message))
        yield stricter(
            checkpoint_case(
                f"cosignature-time={ts}", Note(text, (log_sig, late, w2)).encode(), False
            ),
            "tlog-cosignature: the timestamp MUST NOT exceed 2^63-1; formats/note does not check",
        )
    name, sig64 = w1.line()[2:-1].split(" ")
    loose = f"\u2014 {name} {_non_canonical(sig64)}\n"
    body = Note(text, (log_sig, w2)).encode().decode()
    yield stricter(
        checkpoint_case("cosignature-non-canonical-base64", (body + loose).encode(), False),
        "a second encoding of one signature; sumdb/note decodes with non-strict base64",
    )
    bad_w1 = replace(w1, signature=_flip(w1.signature))
    yield stricter(
        checkpoint_case(
            "cosignature-valid-then-invalid", Note(text, (log_sig, w1, bad_w1, w2)).encode(), False
        ),
        "signed-note: a known key's failing signature rejects the note; sumdb/note verifies "
        "only the first signature per key and skips the rest",
    )
    bad_log = replace(log_sig, signature=_flip(log_sig.signature))
    yield stricter(
        checkpoint_case(
            "log-signature-valid-then-invalid",
            Note(text, (log_sig, bad_log, w1, w2)).encode(),
            False,
        ),
        "as above, for the log's own key",
    )
    yield stricter(
        consistency_case(
            "0->1000/old-root-not-empty", 0, 1000, [], bytes(32), w.tree.root(), False
        ),
        "RFC 9162: the tree of size 0 has one root, SHA-256(''); merkle/proof ignores root1",
    )


@functools.cache
def all_cases() -> tuple[Case, ...]:
    cases = (
        *valid_cases(),
        *checkpoint_tampers(),
        *inclusion_tampers(),
        *consistency_tampers(),
        *stricter_than_go(),
    )
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "case ids are not unique"
    return cases


def python_verdict(case: Case) -> tuple[bool, str]:
    try:
        case.python()
    except (NoteError, ProofError) as exc:
        return False, f"{type(exc).__name__}({exc.kind.value}): {exc.detail}"
    except FFAuditError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.id)
def test_go_and_python_agree(case: Case, go_verdicts: dict[str, GoResult]) -> None:
    go = go_verdicts[case.id]
    py_ok, py_error = python_verdict(case)
    go_want = case.ok if case.go_ok is None else case.go_ok
    got = {"go": go.ok, "python": py_ok}
    assert got == {"go": go_want, "python": case.ok}, (
        f"{case.id}: Go: {go.error or 'accepted'}; Python: {py_error or 'accepted'}"
        + (f" (known difference: {case.why})" if case.why else "")
    )
    if case.ok and case.expect is not None:
        e = case.expect
        parsed = (go.size, go.root, go.index, go.cosigners)
        assert parsed == (e.size, _b64(e.root), e.index, e.cosigners), case.id


def sweep_cases() -> Iterator[Case]:
    """Every proof of every tree up to SWEEP_SIZE leaves, and every proof into the full
    tree: the proof planner's edge cases (ragged right edges) all at once."""
    w = world()
    t = w.tree
    for size in (*range(1, SWEEP_SIZE + 1), TREE_SIZE - 1, TREE_SIZE):
        signed = w.signed(size)
        for index in range(size):
            proof = TlogProof(index, tuple(t.inclusion_proof(index, size)), signed).encode()
            yield inclusion_case(f"{index}@{size}", proof, w.entries[index], True)
        if size <= SWEEP_SIZE or size == TREE_SIZE:
            for old in range(size + 1):
                proof_hashes = t.consistency_proof(old, size)
                yield consistency_case(
                    f"{old}->{size}", old, size, proof_hashes, t.root(old), t.root(size), True
                )


def test_sweep(goverify: Path, tmp_path: Path) -> None:
    cases = list(sweep_cases())
    verdicts = run_goverify(goverify, cases, tmp_path)
    failed = []
    for case in cases:
        py_ok, py_error = python_verdict(case)
        if not (verdicts[case.id].ok and py_ok):
            failed.append(f"{case.id}: Go: {verdicts[case.id].error}; Python: {py_error}")
    assert failed == [], f"{len(failed)} of {len(cases)} proofs fail:\n" + "\n".join(failed[:50])
