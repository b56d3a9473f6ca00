"""audit.integrity.notes against the C2SP examples, the Go reference's vectors, a
checkpoint signed and cosigned by the Go implementations, round-trip properties and a
tamper matrix in which every alteration fails with its own NoteFailure kind.

The vectors and their sources are in tests/integrity/vectors/notes/README.md.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.integrity.digest import sha256
from audit.integrity.errors import FFAuditError
from audit.integrity.notes import (
    MAX_SIGNATURES,
    QUORUM_NONE,
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Checkpoint,
    CosignatureSigner,
    Note,
    NoteError,
    NoteFailure,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    Policy,
    PolicyGroup,
    TlogProof,
    cosignature_message,
    key_id,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_policy,
    parse_signature_lines,
    parse_tlog_proof,
    parse_vkey,
    policy_text,
    sign_checkpoint,
    threshold_policy,
    verify_checkpoint,
    vkey_for,
)

VECTORS = Path(__file__).parent / "vectors" / "notes"
ORIGIN = "log.example/ffaudit"
ROOT = sha256(b"root")
F = NoteFailure


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def vkey_file(name: str) -> NoteVerifier:
    return parse_vkey(vector(name).decode().strip())


def private(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(sha256(label.encode()))


def log_signer(origin: str = ORIGIN, label: str = "log") -> NoteSigner:
    return NoteSigner(origin, private(label))


def witness(name: str) -> CosignatureSigner:
    return CosignatureSigner(f"{name}.witness.example", private(name))


def fails(kind: NoteFailure, call: Callable[..., object], *args: object) -> NoteError:
    with pytest.raises(NoteError) as caught:
        call(*args)
    assert caught.value.kind is kind, caught.value.detail
    return caught.value


def cosigned(
    checkpoint: Checkpoint, *witnesses: CosignatureSigner, ts: int = 1_800_000_000
) -> bytes:
    note = sign_checkpoint(checkpoint, log_signer(checkpoint.origin))
    sigs = [w.cosign(note.text, ts) for w in witnesses]
    return note.with_signatures(*sigs).encode()


CHECKPOINT = Checkpoint(ORIGIN, 10, ROOT)


# -- The C2SP specifications' examples ------------------------------------------------


def test_signed_note_example_verifies_and_reencodes_byte_for_byte() -> None:
    key = vkey_file("c2sp-signed-note-example.vkey")
    note = parse_note(vector("c2sp-signed-note-example.note"))
    assert note.text == "This is an example message.\n"
    assert key.key_id == bytes.fromhex("530d903a") == note.signatures[0].key_id
    assert key.verify(note.text, note.signatures[0]) == 0
    assert key.verify("This is an example message!\n", note.signatures[0]) is None
    assert note.encode() == vector("c2sp-signed-note-example.note")
    assert key.vkey() == vector("c2sp-signed-note-example.vkey").decode().strip()


def test_signed_note_poem_keeps_its_blank_line_in_the_text() -> None:
    # No key is published for this example: it checks the split at the *last* blank line.
    note = parse_note(vector("c2sp-signed-note-quasimodo.note"))
    assert note.text.endswith("raggio di sole:\n\ned è subito sera.\n")
    [sig] = note.signatures
    assert sig.name == "quasimodo.example/salvatore"
    assert len(sig.signature) == 64
    assert note.encode() == vector("c2sp-signed-note-quasimodo.note")


def test_checkpoint_example_parses_and_an_unpublished_key_is_an_unknown_log() -> None:
    data = vector("c2sp-checkpoint.note")
    note = parse_note(data)
    checkpoint = parse_checkpoint(note.text)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)
    assert checkpoint.text() == note.text
    # Same name as the signature, another key (so another key id): ignored, not "bad".
    other = log_signer("example.com/behind-the-sofa").verifier
    error = fails(F.UNKNOWN_LOG, lambda: open_checkpoint(data, [other]))
    assert error.name == "example.com/behind-the-sofa"


def test_cosignature_example_carries_the_time_of_the_specs_signed_message() -> None:
    note = parse_note(vector("c2sp-cosigned-checkpoint.note"))
    log_sig, witness_sig = note.signatures
    assert len(log_sig.signature) == 64
    assert len(witness_sig.signature) == 8 + 64
    timestamp = int.from_bytes(witness_sig.signature[:8], "big")
    assert timestamp == 1679315147
    assert cosignature_message(note.text, timestamp) == vector("c2sp-cosignature-message.txt")


def test_witness_protocol_examples_parse() -> None:
    request = vector("c2sp-witness-add-checkpoint.txt")
    checkpoint_note = parse_note(request[request.index(b"\n\n") + 2 :])
    assert [s.name for s in checkpoint_note.signatures] == ["example.com/behind-the-sofa"] * 2
    response = parse_signature_lines(vector("c2sp-witness-response.txt"))
    assert [s.name for s in response] == ["witness.example/w1"] * 2 + ["witness.example/w2"]
    assert {len(s.signature) for s in response} == {8 + 64}


def test_tlog_proof_example_header_with_a_real_checkpoint() -> None:
    example = vector("c2sp-tlog-proof.txt")
    # The example elides its signatures ("hI2DJw[...]1roloI="): not a note as printed.
    fails(F.MALFORMED_PROOF, lambda: parse_tlog_proof(example))
    header = example[: example.index(b"\n\n") + 2]
    signed = sign_checkpoint(
        Checkpoint("example.com/fancylog", 109482, ROOT), log_signer("example.com/fancylog")
    ).encode()
    proof = parse_tlog_proof(header + signed)
    assert proof.index == 73894
    assert len(proof.hashes) == 5
    assert proof.extra is not None
    assert proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert proof.checkpoint == signed
    assert proof.encode() == header + signed


def policy_example() -> tuple[str, Policy, dict[str, CosignatureSigner]]:
    """The tlog-policy example with its `<vkey>` placeholders filled in order."""
    text = vector("c2sp-policy.txt").decode()
    assert text.count("<vkey>") == 7
    signers = {n: witness(n) for n in ("X1", "X2", "X3", "Y1", "Y2", "Y3")}
    text = text.replace("<vkey>", log_signer().verifier.vkey(), 1)
    for signer in signers.values():
        text = text.replace("<vkey>", signer.verifier.vkey(), 1)
    return text, parse_policy(text), signers


def test_policy_example_as_printed_names_its_first_placeholder() -> None:
    error = fails(F.MALFORMED_POLICY, lambda: parse_policy(vector("c2sp-policy.txt")))
    assert error.line == 1


@pytest.mark.parametrize(
    ("cosigners", "met"),
    [
        ({"X1", "X2", "Y3"}, True),
        ({"X1", "X2", "X3", "Y1", "Y2", "Y3"}, True),
        ({"X1", "Y1", "Y2", "Y3"}, False),  # X-witnesses needs two
        ({"X1", "X2", "X3"}, False),  # Y-witnesses needs one
        (set(), False),
    ],
)
def test_policy_example_nested_quorum(cosigners: set[str], met: bool) -> None:
    _, policy, signers = policy_example()
    assert policy.groups["X-and-Y"] == PolicyGroup(2, ("X-witnesses", "Y-witnesses"))
    assert policy.quorum_met(cosigners) is met
    data = cosigned(CHECKPOINT, *(signers[n] for n in sorted(cosigners)))
    if met:
        assert verify_checkpoint(data, policy).cosigners == cosigners
    else:
        error = fails(F.QUORUM_NOT_MET, lambda: verify_checkpoint(data, policy))
        assert error.cosigners == cosigners
        assert error.name == "X-and-Y"


# -- The Go reference (golang.org/x/mod/sumdb/note) and other Go implementations -----


def go_seed(skey: str) -> bytes:
    private_, key_, _name, _id, encoded = skey.split("+", 4)
    raw = base64.b64decode(encoded)
    assert (private_, key_, raw[0]) == ("PRIVATE", "KEY", SIG_ED25519)
    return raw[1:]


def test_go_peter_neumann_signing_is_reproduced_byte_for_byte() -> None:
    seed = go_seed(vector("go-sumdb-peterneumann.skey").decode().strip())
    signer = NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))
    assert signer.verifier == vkey_file("go-sumdb-peterneumann.vkey")
    expected = vector("go-sumdb-peterneumann.note")
    text = parse_note(expected).text
    assert Note(text, (signer.sign(text),)).encode() == expected


def test_go_enoch_root_is_the_zero_seed_and_both_signatures_verify() -> None:
    # Go's example generates EnochRoot's key from a reader of zeros.
    enoch = vkey_for("EnochRoot", Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key())
    assert enoch == vkey_file("go-sumdb-enochroot.vkey")
    peter = vkey_file("go-sumdb-peterneumann.vkey")
    note = parse_note(vector("go-sumdb-two-signatures.note"))
    peter_sig, enoch_sig = note.signatures
    assert (peter.verify(note.text, peter_sig), enoch.verify(note.text, enoch_sig)) == (0, 0)
    assert peter.verify(note.text, enoch_sig) is None  # another key's signature: not ours
    assert key_id("PeterNeumann", SIG_ED25519, peter.public_key) == bytes.fromhex("c74f20a3")


def test_go_vkey_manglings_are_all_refused() -> None:
    vkey = vector("go-sumdb-peterneumann.vkey").decode().strip()
    mangled = {vkey[i:j] for i in range(len(vkey) + 1) for j in range(i + 1, len(vkey) + 1)}
    mangled |= {vkey[:i] + chr(ord(c) + 1) + vkey[i + 1 :] for i, c in enumerate(vkey)}
    mangled.discard(vkey)
    mangled |= {
        # From the Go tests: a wrong-length key and an unknown algorithm, key ids adjusted.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    }
    for bad in mangled:
        fails(F.MALFORMED_KEY, parse_vkey, bad)


GO_TEXT = parse_note(vector("go-sumdb-peterneumann.note")).text
GO_SIG = parse_note(vector("go-sumdb-peterneumann.note")).signatures[0].line()


@pytest.mark.parametrize(
    "message",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_SIG,
        "\r" + GO_TEXT + "\n" + GO_SIG,
        GO_TEXT + "\n" + GO_SIG.replace("PeterNeumann", "Peter Neumann"),
        GO_TEXT + "\n" + GO_SIG.replace("PeterNeumann", "Peter+Neumann"),
        GO_TEXT + "\n" + GO_SIG.replace("\u2014", "-"),
        GO_TEXT + "\n" + GO_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + GO_SIG.replace("AM=", "AN="),  # base64 that is not canonical
        GO_TEXT + "\n" + GO_SIG * (MAX_SIGNATURES + 1),
        "\n" + GO_SIG.replace("x08go/ZJ", "").replace("=", ""),
    ],
)
def test_go_malformed_messages(message: str) -> None:
    fails(F.MALFORMED_NOTE, parse_note, message)
    fails(F.MALFORMED_NOTE, parse_note, message.encode())


def test_invalid_utf8_and_surrogates_are_malformed() -> None:
    fails(F.MALFORMED_NOTE, lambda: parse_note(b"\xff" + (GO_TEXT + "\n" + GO_SIG).encode()))
    fails(F.MALFORMED_NOTE, lambda: parse_note("\ud800" + GO_TEXT + "\n" + GO_SIG))


def test_a_hundred_signatures_are_accepted() -> None:
    assert len(parse_note(GO_TEXT + "\n" + GO_SIG * MAX_SIGNATURES).signatures) == 100


def test_sum_golang_org_verifies_but_its_origin_is_not_its_key_name() -> None:
    key = vkey_file("sum-golang-org.vkey")
    data = vector("sum-golang-org-checkpoint.note")
    note = parse_note(data)
    assert key.verify(note.text, note.signatures[0]) == 0
    assert parse_checkpoint(note.text).size == 6476701
    # tlog-policy: a log's key name is its origin; "go.sum database tree" is not.
    fails(F.UNKNOWN_LOG, lambda: open_checkpoint(data, [key]))


def test_transparency_dev_vkeys_reencode() -> None:
    lines = vector("td-formats.vkeys").decode().split()
    keys = [parse_vkey(line) for line in lines]
    assert [k.sig_type for k in keys] == [SIG_COSIGNATURE_V1, SIG_ED25519]
    assert [k.vkey() for k in keys] == lines  # the second holds '+' inside its base64


def go_cosigned() -> tuple[NoteVerifier, dict[str, NoteVerifier], dict[str, bytes], bytes]:
    head, _, checkpoint = vector("go-cosigned.txt").partition(b"checkpoint\n")
    log: NoteVerifier | None = None
    witnesses: dict[str, NoteVerifier] = {}
    seeds: dict[str, bytes] = {}
    for line in head.decode().splitlines():
        kind, value, *rest = line.split()
        if kind == "log":
            log = parse_vkey(value)
        elif kind == "witness":
            witnesses[value.split("+")[0].rsplit("/")[-1]] = parse_vkey(value)
        else:
            seeds[value] = bytes.fromhex(rest[0])
    assert log is not None
    return log, witnesses, seeds, checkpoint


def test_go_cosigned_checkpoint_meets_two_of_three_not_three() -> None:
    log, witnesses, _, data = go_cosigned()
    verified = verify_checkpoint(data, threshold_policy([log], witnesses, 2))
    assert verified.cosigners == {"w1", "w2"}
    assert verified.checkpoint.extensions == ("ffaudit-extension-line",)
    note = parse_note(data)
    assert verified.timestamps == {
        name: int.from_bytes(sig.signature[:8], "big")
        for name, sig in zip(("w1", "w2"), note.signatures[1:], strict=True)
    }
    error = fails(
        F.QUORUM_NOT_MET, lambda: verify_checkpoint(data, threshold_policy([log], witnesses, 3))
    )
    assert error.cosigners == {"w1", "w2"}
    assert "2 of 3" in error.detail


def test_go_cosigned_signatures_are_reproduced_by_ours() -> None:
    log, witnesses, seeds, data = go_cosigned()
    note = parse_note(data)
    log_signer_ = NoteSigner(log.name, Ed25519PrivateKey.from_private_bytes(seeds[log.name]))
    assert log_signer_.verifier == log
    assert log_signer_.sign(note.text) == note.signatures[0]
    for sig in note.signatures[1:]:
        signer = CosignatureSigner(sig.name, Ed25519PrivateKey.from_private_bytes(seeds[sig.name]))
        assert signer.verifier in witnesses.values()
        timestamp = int.from_bytes(sig.signature[:8], "big")
        assert signer.cosign(note.text, timestamp) == sig


# -- Tamper matrix -----------------------------------------------------------------------

W = {n: witness(n) for n in ("a", "b", "c")}
TWO_OF_THREE = threshold_policy([log_signer().verifier], {n: w.verifier for n, w in W.items()}, 2)
GOOD = cosigned(CHECKPOINT, W["a"], W["b"])


def replace_signature(
    data: bytes, index: int, change: Callable[[NoteSignature], NoteSignature]
) -> bytes:
    note = parse_note(data)
    sigs = list(note.signatures)
    sigs[index] = change(sigs[index])
    return Note(note.text, tuple(sigs)).encode()


def flip_last(sig: NoteSignature) -> NoteSignature:
    return dataclasses.replace(sig, signature=sig.signature[:-1] + bytes([sig.signature[-1] ^ 1]))


def other_timestamp(sig: NoteSignature) -> NoteSignature:
    return dataclasses.replace(
        sig, signature=(1_800_000_001).to_bytes(8, "big") + sig.signature[8:]
    )


def nested_policy() -> Policy:
    text = "".join(
        [
            f"log {log_signer().verifier.vkey()}\n",
            *(f"witness {n} {w.verifier.vkey()}\n" for n, w in W.items()),
            "group ab all a b\n",
            "group top 2 ab c\n",
            "quorum top\n",
        ]
    )
    return parse_policy(text)


OTHER_ORIGIN = Checkpoint("log.example/other", 10, ROOT).text()
TAMPER: dict[str, tuple[Callable[[], bytes], Policy, NoteFailure]] = {
    "altered text": (lambda: GOOD.replace(b"\n10\n", b"\n11\n"), TWO_OF_THREE, F.BAD_SIGNATURE),
    "altered log signature byte": (
        lambda: replace_signature(GOOD, 0, flip_last),
        TWO_OF_THREE,
        F.BAD_SIGNATURE,
    ),
    "wrong key name": (
        lambda: replace_signature(
            GOOD, 0, lambda s: dataclasses.replace(s, name="log.example/other")
        ),
        TWO_OF_THREE,
        F.UNKNOWN_LOG,
    ),
    "wrong key id": (
        lambda: replace_signature(GOOD, 0, lambda s: dataclasses.replace(s, key_id=b"\0\0\0\0")),
        TWO_OF_THREE,
        F.UNKNOWN_LOG,
    ),
    "unknown log": (
        lambda: sign_checkpoint(CHECKPOINT, log_signer(label="another log key")).encode(),
        TWO_OF_THREE,
        F.UNKNOWN_LOG,
    ),
    "trusted log key, another origin": (
        lambda: Note(OTHER_ORIGIN, (log_signer().sign(OTHER_ORIGIN),)).encode(),
        TWO_OF_THREE,
        F.UNKNOWN_LOG,
    ),
    "altered cosignature byte": (
        lambda: replace_signature(GOOD, 1, flip_last),
        TWO_OF_THREE,
        F.BAD_COSIGNATURE,
    ),
    "cosignature over another timestamp": (
        lambda: replace_signature(GOOD, 2, other_timestamp),
        TWO_OF_THREE,
        F.BAD_COSIGNATURE,
    ),
    "cosignature of another checkpoint": (
        lambda: replace_signature(
            GOOD, 1, lambda s: W["a"].cosign(Checkpoint(ORIGIN, 11, ROOT).text(), 5)
        ),
        TWO_OF_THREE,
        F.BAD_COSIGNATURE,
    ),
    "plain Ed25519 signature under a witness's key id": (
        lambda: replace_signature(
            GOOD, 1, lambda s: dataclasses.replace(s, signature=s.signature[8:])
        ),
        TWO_OF_THREE,
        F.BAD_COSIGNATURE,
    ),
    "timestamp past 2^63-1": (
        lambda: replace_signature(
            GOOD, 1, lambda s: dataclasses.replace(s, signature=b"\x80" + s.signature[1:])
        ),
        TWO_OF_THREE,
        F.BAD_COSIGNATURE,
    ),
    "too few cosigners for 2 of 3": (
        lambda: cosigned(CHECKPOINT, W["c"]),
        TWO_OF_THREE,
        F.QUORUM_NOT_MET,
    ),
    "cosigners of unknown witnesses": (
        lambda: cosigned(CHECKPOINT, W["a"], witness("stranger")),
        TWO_OF_THREE,
        F.QUORUM_NOT_MET,
    ),
    "nested groups: one of an all-group": (
        lambda: cosigned(CHECKPOINT, W["a"], W["c"]),
        nested_policy(),
        F.QUORUM_NOT_MET,
    ),
    "no blank line": (lambda: GOOD.replace(b"=\n\n", b"=\n"), TWO_OF_THREE, F.MALFORMED_NOTE),
    "signed body is no checkpoint": (
        lambda: Note(
            "log.example/ffaudit\n010\nroot\n",
            (log_signer().sign("log.example/ffaudit\n010\nroot\n"),),
        ).encode(),
        TWO_OF_THREE,
        F.MALFORMED_CHECKPOINT,
    ),
}


def test_the_untampered_checkpoint_verifies() -> None:
    verified = verify_checkpoint(GOOD, TWO_OF_THREE)
    assert verified.cosigners == {"a", "b"}
    assert verified.timestamps == {"a": 1_800_000_000, "b": 1_800_000_000}
    assert verified.checkpoint == CHECKPOINT
    everyone = cosigned(CHECKPOINT, *W.values())
    assert verify_checkpoint(everyone, nested_policy()).cosigners == {"a", "b", "c"}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tamper(case: str) -> None:
    make, policy, kind = TAMPER[case]
    error = fails(kind, verify_checkpoint, make(), policy)
    assert isinstance(error, FFAuditError)
    assert (error.exit_code, error.http_status) == (1, 422)
    assert error.detail == str(error)
    assert error.detail


def test_bad_signatures_name_their_key() -> None:
    error = fails(
        F.BAD_SIGNATURE, lambda: verify_checkpoint(GOOD.replace(b"\n10\n", b"\n11\n"), TWO_OF_THREE)
    )
    assert error.name == ORIGIN
    error = fails(
        F.BAD_COSIGNATURE,
        lambda: verify_checkpoint(replace_signature(GOOD, 2, other_timestamp), TWO_OF_THREE),
    )
    assert error.name == W["b"].name


def test_a_bad_second_signature_by_the_log_rejects_the_note() -> None:
    # Go keeps the first signature per key; signed-note asks that every one be checked.
    note = parse_note(GOOD)
    doubled = Note(note.text, (note.signatures[0], flip_last(note.signatures[0]))).encode()
    fails(F.BAD_SIGNATURE, lambda: open_checkpoint(doubled, [log_signer().verifier]))


def test_a_cosignature_key_cannot_serve_as_a_log_key() -> None:
    as_log = vkey_for(ORIGIN, private("log").public_key(), SIG_COSIGNATURE_V1)
    fails(F.MALFORMED_KEY, lambda: open_checkpoint(GOOD, [as_log]))


def test_no_single_byte_change_of_a_cosigned_checkpoint_is_accepted() -> None:
    for i in range(len(GOOD)):
        for flip in (0x01, 0x20):
            changed = GOOD[:i] + bytes([GOOD[i] ^ flip]) + GOOD[i + 1 :]
            with pytest.raises(NoteError):
                verify_checkpoint(changed, TWO_OF_THREE)


def test_quorum_none_accepts_a_log_signature_alone_yet_checks_known_cosignatures() -> None:
    policy = threshold_policy([log_signer().verifier], {n: w.verifier for n, w in W.items()}, 0)
    assert policy.quorum == QUORUM_NONE
    assert (
        verify_checkpoint(sign_checkpoint(CHECKPOINT, log_signer()).encode(), policy).cosigners
        == frozenset()
    )
    fails(
        F.BAD_COSIGNATURE, lambda: verify_checkpoint(replace_signature(GOOD, 1, flip_last), policy)
    )


def test_with_signatures_replaces_a_keys_earlier_signature() -> None:
    note = parse_note(GOOD)
    again = W["a"].cosign(note.text, 1_900_000_000)
    updated = note.with_signatures(again)
    assert updated.signatures == (note.signatures[0], note.signatures[2], again)
    assert verify_checkpoint(updated.encode(), TWO_OF_THREE).timestamps["a"] == 1_900_000_000


def test_signers_refuse_what_no_note_could_carry() -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        sign_checkpoint(CHECKPOINT, log_signer("log.example/other"))
    fails(F.MALFORMED_NOTE, lambda: log_signer().sign("no final newline"))
    fails(F.MALFORMED_NOTE, lambda: log_signer().sign("tab\there\n"))
    fails(F.MALFORMED_CHECKPOINT, lambda: W["a"].cosign("not a checkpoint\n", 1))
    with pytest.raises(ValueError, match="timestamp"):
        W["a"].cosign(CHECKPOINT.text(), -1)
    with pytest.raises(ValueError, match="timestamp"):
        cosignature_message(CHECKPOINT.text(), 2**63)
    fails(F.MALFORMED_KEY, lambda: NoteSigner("two words", private("x")))


# -- Malformed keys, checkpoints, proofs and policies -----------------------------------

KEY = log_signer().verifier.vkey()
NAME, HEX, B64 = KEY.split("+", 2)


@pytest.mark.parametrize(
    "vkey",
    [
        f"{NAME}+{HEX.upper()}+{B64}",
        f"{NAME}+00000000+{B64}",
        f"{NAME}+{HEX}+{B64}\n",
        f"{NAME}+{HEX}",
        f"{NAME}+{HEX}+",
        f"+{HEX}+{B64}",
        "log example+" + key_id("log example", 1, base64.b64decode(B64)[1:]).hex() + "+" + B64,
        f"{NAME}+{HEX}+" + base64.b64encode(b"\x02" + base64.b64decode(B64)[1:]).decode(),
        f"{NAME}+{HEX}+" + base64.b64encode(base64.b64decode(B64)[:-1]).decode(),
    ],
)
def test_malformed_vkeys(vkey: str) -> None:
    fails(F.MALFORMED_KEY, parse_vkey, vkey)


def test_vkeys_of_unsupported_types_are_refused_even_with_a_right_key_id() -> None:
    raw = base64.b64decode(B64)[1:]
    for sig_type in (0x02, 0x05, 0x06, 0xFF):
        vkey = (
            f"{NAME}+{key_id(NAME, sig_type, raw).hex()}+"
            + base64.b64encode(bytes([sig_type]) + raw).decode()
        )
        assert "unsupported" in fails(F.MALFORMED_KEY, parse_vkey, vkey).detail


ROOT64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n10\n{ROOT64}",
        f"{ORIGIN}\n10\n",
        f"\n10\n{ROOT64}\n",
        f"{ORIGIN}\n010\n{ROOT64}\n",
        f"{ORIGIN}\n+10\n{ROOT64}\n",
        f"{ORIGIN}\n-1\n{ROOT64}\n",
        f"{ORIGIN}\n 10\n{ROOT64}\n",
        f"{ORIGIN}\n\u0661\u0660\n{ROOT64}\n",  # Arabic-Indic digits: int() would take them
        f"{ORIGIN}\n{2**63}\n{ROOT64}\n",
        f"{ORIGIN}\n{'9' * 5000}\n{ROOT64}\n",
        f"{ORIGIN}\n10\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n10\n{ROOT64[:-2]}9=\n",  # non-canonical trailing bits
        f"{ORIGIN}\n10\n{ROOT64}\n\n",
        f"{ORIGIN}\n10\n{ROOT64}\next\n\nmore\n",
        f"{ORIGIN}\r\n10\n{ROOT64}\n",
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    fails(F.MALFORMED_CHECKPOINT, parse_checkpoint, text)


def test_checkpoint_size_bounds() -> None:
    assert parse_checkpoint(f"{ORIGIN}\n0\n{ROOT64}\n").size == 0
    assert parse_checkpoint(f"{ORIGIN}\n{2**63 - 1}\n{ROOT64}\n").size == 2**63 - 1
    fails(F.MALFORMED_CHECKPOINT, lambda: Checkpoint(ORIGIN, -1, ROOT))
    fails(F.MALFORMED_CHECKPOINT, lambda: Checkpoint(ORIGIN, 1, ROOT, ("two\nlines",)))


SIGNED = sign_checkpoint(CHECKPOINT, log_signer()).encode()
H64 = base64.b64encode(sha256(b"h")).decode()


@pytest.mark.parametrize(
    "data",
    [
        b"index 0\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v2\nindex 0\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\r\nindex 0\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 01\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex -1\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 10\n\n" + SIGNED,  # not below the tree size
        b"c2sp.org/tlog-proof@v1\nindex 99999999999999999999\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nextra YQ=\nindex 0\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nextra YR==\nindex 0\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 0\nindex 0\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 0\n" + base64.b64encode(bytes(31)) + b"\n\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 0\n" + (H64 + "\n").encode() * 64 + b"\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 0\n" + H64.encode() + b"\n" + SIGNED,
        b"c2sp.org/tlog-proof@v1\nindex 0\n\n",
        b"c2sp.org/tlog-proof@v1\nindex 0",
        b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + SIGNED.replace(b"\n10\n", b"\nten\n"),
        b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + SIGNED[:-1],
    ],
)
def test_malformed_proofs(data: bytes) -> None:
    fails(F.MALFORMED_PROOF, parse_tlog_proof, data)


def test_proof_extra_may_be_empty_and_hashes_absent() -> None:
    proof = parse_tlog_proof(b"c2sp.org/tlog-proof@v1\nextra \nindex 9\n\n" + SIGNED)
    assert (proof.extra, proof.index, proof.hashes) == (b"", 9, ())
    assert TlogProof(9, (), SIGNED).encode() == b"c2sp.org/tlog-proof@v1\nindex 9\n\n" + SIGNED


LOG = log_signer().verifier.vkey()
WA, WB = W["a"].verifier.vkey(), W["b"].verifier.vkey()
HEAD = f"log {LOG}\nwitness A {WA}\nwitness B {WB}\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (HEAD + f"log {LOG}\nquorum A\n", 4),  # duplicate log
        (HEAD + f"witness C {WA}\nquorum A\n", 4),  # duplicate witness key
        (
            HEAD
            + "witness C "
            + vkey_for("renamed", private("a").public_key(), SIG_COSIGNATURE_V1).vkey()
            + "\nquorum A\n",
            4,
        ),
        (
            HEAD
            + "witness L "
            + vkey_for(ORIGIN, private("log").public_key(), SIG_COSIGNATURE_V1).vkey()
            + "\nquorum A\n",
            4,
        ),
        (HEAD + f"witness A {witness('c').verifier.vkey()}\nquorum A\n", 4),  # name reused
        (HEAD + "group A any B\nquorum A\n", 4),  # group named as a witness
        (HEAD + f"witness none {witness('c').verifier.vkey()}\nquorum A\n", 4),
        (HEAD + "group g any A none\nquorum g\n", 4),
        (HEAD + "group g any A C\nquorum g\n", 4),  # C undefined
        (HEAD + "group g any A A\nquorum g\n", 4),
        (HEAD + "group g any A\ngroup h any A B\nquorum h\n", 5),  # A is in g already
        (HEAD + "group g 0 A B\nquorum g\n", 4),
        (HEAD + "group g 3 A B\nquorum g\n", 4),
        (HEAD + "group g 02 A B\nquorum g\n", 4),
        (HEAD + "group g -1 A B\nquorum g\n", 4),
        (HEAD + "group g all\nquorum g\n", 4),
        (HEAD + "quorum g\ngroup g all A B\n", 4),  # quorum before its group
        (HEAD + "quorum A\nquorum B\n", 5),
        (HEAD, 4),  # no quorum
        (HEAD + "quorum A B\n", 4),
        (HEAD + "threshold 2\nquorum A\n", 4),
        (HEAD + "Quorum A\n", 4),
        (f"log {WA}\nquorum none\n", 1),  # a cosignature key as log key
        (f"witness A {LOG}\nquorum none\n", 1),  # a log key as witness key
        (f"log {LOG} https://log.example/ extra\nquorum none\n", 1),
        (f"log {LOG}\nquorum none\r\n", 2),
        (f"log {LOG}\nquorum none", 2),  # cut short: no final newline
        (f"quorum none\nlog {LOG}", 2),
        (f"log {LOG}\x7f\nquorum none\n", 1),
        (f"log {LOG[:-2]}\nquorum none\n", 1),
        (HEAD + "quorum A # trailing comment\n", 4),
    ],
)
def test_malformed_policies(text: str, line: int) -> None:
    error = fails(F.MALFORMED_POLICY, parse_policy, text)
    assert error.line == line
    assert error.detail.startswith(f"line {line}:")


def test_policy_whitespace_comments_and_urls() -> None:
    text = (
        "# ffaudit\n\n"
        f"  log\t{LOG}  https://log.example/\t\n"
        f"\twitness  A {WA} https://a.example/add\n"
        f"witness B {WB}\n"
        "   # indented comment\n"
        "group\tg any A B\n"
        "quorum g\n"
    )
    policy = parse_policy(text.encode())
    assert policy.log_urls == {LOG: "https://log.example/"}
    assert policy.witness_urls == {"A": "https://a.example/add"}
    assert policy.groups == {"g": PolicyGroup(1, ("A", "B"))}
    assert parse_policy(policy_text(policy)) == policy


def test_policies_built_in_code_obey_the_same_rules() -> None:
    fails(F.MALFORMED_POLICY, lambda: threshold_policy([], {"A": W["a"].verifier}, 2))
    fails(F.MALFORMED_POLICY, lambda: Policy((), {"A": W["a"].verifier, "B": W["a"].verifier}, "A"))
    fails(F.MALFORMED_POLICY, lambda: Policy((), {}, "A"))
    fails(
        F.MALFORMED_POLICY, lambda: Policy((), {"A": W["a"].verifier}, "A", witness_urls={"Z": "u"})
    )


# -- Round-trip properties ----------------------------------------------------------------

# signed-note key names: no Unicode space (categories Z*, and the Cc spaces), no '+'.
key_names = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="+"),
    min_size=1,
    max_size=20,
)
note_lines = st.text(
    st.characters(codec="utf-8", exclude_characters=[chr(c) for c in range(32)]),
    max_size=30,
)
signatures = st.builds(
    NoteSignature, key_names, st.binary(min_size=4, max_size=4), st.binary(min_size=1, max_size=80)
)
seeds = st.binary(min_size=32, max_size=32)


@given(st.lists(note_lines, min_size=1, max_size=6), st.lists(signatures, min_size=1, max_size=5))
def test_notes_round_trip(lines: list[str], sigs: list[NoteSignature]) -> None:
    note = Note("\n".join(lines) + "\n", tuple(sigs))
    data = note.encode()
    assert parse_note(data) == note == parse_note(data.decode())
    assert parse_note(data).encode() == data


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    key_names,
    st.integers(0, 2**63 - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(note_lines.filter(bool), max_size=3),
    seeds,
    st.integers(0, 2**63 - 1),
)
def test_checkpoints_round_trip_and_verify(
    origin: str, size: int, root: bytes, extensions: list[str], seed: bytes, timestamp: int
) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint(checkpoint.text()) == checkpoint
    signer = NoteSigner(origin, Ed25519PrivateKey.from_private_bytes(seed))
    cosigner = CosignatureSigner("w.example", Ed25519PrivateKey.from_private_bytes(sha256(seed)))
    note = sign_checkpoint(checkpoint, signer)
    note = note.with_signatures(cosigner.cosign(note.text, timestamp))
    policy = Policy((parse_vkey(signer.verifier.vkey()),), {"w": cosigner.verifier}, "w")
    verified = verify_checkpoint(note.encode(), policy)
    assert (verified.checkpoint, verified.timestamps) == (checkpoint, {"w": timestamp})


@settings(deadline=None)
@given(
    st.integers(1, 2**63 - 1).flatmap(
        lambda size: st.tuples(st.just(size), st.integers(0, size - 1))
    ),
    st.lists(st.binary(min_size=32, max_size=32), max_size=63),
    st.none() | st.binary(max_size=64),
)
def test_proofs_round_trip(
    size_index: tuple[int, int], hashes: list[bytes], extra: bytes | None
) -> None:
    size, index = size_index
    signed = sign_checkpoint(Checkpoint(ORIGIN, size, ROOT), log_signer()).encode()
    proof = TlogProof(index, tuple(hashes), signed, extra)
    assert parse_tlog_proof(proof.encode()) == proof


policy_names = st.text(
    st.characters(codec="utf-8", exclude_characters=[*map(chr, range(33)), "\x7f"]),
    min_size=1,
    max_size=8,
).filter(lambda n: n != QUORUM_NONE)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    keys = draw(st.lists(seeds, min_size=1, max_size=9, unique=True))
    n_logs = draw(st.integers(0, min(3, len(keys))))
    logs = tuple(
        vkey_for(f"log{i}.example", Ed25519PrivateKey.from_private_bytes(s).public_key())
        for i, s in enumerate(keys[:n_logs])
    )
    names = draw(
        st.lists(policy_names, min_size=len(keys) + 4, max_size=len(keys) + 4, unique=True)
    )
    witnesses = {
        names[i]: vkey_for(
            f"w{i}.example",
            Ed25519PrivateKey.from_private_bytes(s).public_key(),
            SIG_COSIGNATURE_V1,
        )
        for i, s in enumerate(keys[n_logs:])
    }
    free = list(witnesses)  # names not yet a group member
    groups: dict[str, PolicyGroup] = {}
    for name in names[len(keys) : len(keys) + draw(st.integers(0, 4))]:
        if not free:
            break
        members = draw(st.lists(st.sampled_from(free), min_size=1, unique=True))
        groups[name] = PolicyGroup(draw(st.integers(1, len(members))), tuple(members))
        free = [n for n in free if n not in members] + [name]
    quorum = draw(st.sampled_from([QUORUM_NONE, *witnesses, *groups]))
    log_urls = {
        log.vkey(): f"https://{i}.log.example/" for i, log in enumerate(logs) if draw(st.booleans())
    }
    witness_urls = {
        n: f"https://{i}.w.example/" for i, n in enumerate(witnesses) if draw(st.booleans())
    }
    return Policy(logs, witnesses, quorum, groups, log_urls, witness_urls)


@settings(deadline=None)
@given(policies(), st.data())
def test_policies_round_trip_and_quorums_are_monotonic(policy: Policy, data: st.DataObject) -> None:
    assert parse_policy(policy_text(policy)) == policy
    everyone = set(policy.witnesses)
    assert policy.quorum_met(everyone)
    assert policy.quorum_met(set()) is (policy.quorum == QUORUM_NONE)
    some = data.draw(
        st.sets(st.sampled_from(sorted(everyone))) if everyone else st.just(set[str]())
    )
    more = some | data.draw(
        st.sets(st.sampled_from(sorted(everyone))) if everyone else st.just(set[str]())
    )
    assert not policy.quorum_met(some) or policy.quorum_met(more)


@given(st.binary(max_size=400))
def test_parsers_fail_only_with_note_errors(data: bytes) -> None:
    # Anything else (an IndexError, a UnicodeError...) fails the test.
    for parse in (parse_note, parse_tlog_proof, parse_policy, parse_signature_lines):
        with contextlib.suppress(NoteError):
            parse(data)
    text = data.decode("utf-8", "replace")
    for parse_text in (parse_checkpoint, parse_vkey, parse_policy):
        with contextlib.suppress(NoteError):
            parse_text(text)
