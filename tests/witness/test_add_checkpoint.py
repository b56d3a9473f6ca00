"""POST /add-checkpoint as C2SP tlog-witness specifies it, against the real app on a
loopback port: every answer the protocol names, and what the witness keeps."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
import pytest

from audit.db.session import make_engine, session_factory
from audit.integrity.merkle import EMPTY_ROOT
from audit.integrity.notes import (
    Checkpoint,
    NoteSigner,
    parse_note,
    parse_signature_lines,
    sign_checkpoint,
)
from audit.witness.repository import TreeHead, WitnessRepository
from audit.witness.schemas import SIZE_CONTENT_TYPE, encode_add_checkpoint
from tests.witness.conftest import ORIGIN, WITNESS_NAME, Log, WitnessSetup


def post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/add-checkpoint", content=body, timeout=30)


def stored(setup: WitnessSetup, origin: str = ORIGIN) -> TreeHead | None:
    engine = make_engine(setup.settings.database_url)
    try:
        with session_factory(engine)() as session:
            return WitnessRepository(session).head(origin)
    finally:
        engine.dispose()


def assert_cosigned(setup: WitnessSetup, response: httpx.Response, note: bytes) -> None:
    """200, text/plain, one cosignature line of the witness's key over the checkpoint,
    timestamped now."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content.endswith(b"\n")
    (signature,) = parse_signature_lines(response.content)
    assert signature.name == WITNESS_NAME
    text = parse_note(note).text
    timestamp = setup.verifier.verify(text, signature)
    assert timestamp is not None
    assert abs(timestamp - time.time()) < 5
    # The client's way: appended to the checkpoint, the answer makes a note that verifies.
    cosigned = parse_note(note + response.content)
    assert signature in cosigned.signatures


def assert_conflict(response: httpx.Response, size: int) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == SIZE_CONTENT_TYPE
    assert response.content == f"{size}\n".encode()


def test_first_sighting_from_zero(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    assert stored(setup) is None
    response = post(witness_url, log.body(0, 5))
    assert_cosigned(setup, response, log.note(5))
    assert stored(setup) == TreeHead(5, log.tree.root(5))


def test_empty_tree_first(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    assert_cosigned(setup, post(witness_url, log.body(0, 0)), log.note(0))
    assert stored(setup) == TreeHead(0, EMPTY_ROOT)
    assert_cosigned(setup, post(witness_url, log.body(0, 3)), log.note(3))
    assert stored(setup) == TreeHead(3, log.tree.root(3))


def test_consistent_advances(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    sizes = [1, 2, 3, 4, 7, 8, 9, 16, 17, 100, 1000]
    old = 0
    for size in sizes:
        assert_cosigned(setup, post(witness_url, log.body(old, size)), log.note(size))
        assert stored(setup) == TreeHead(size, log.tree.root(size))
        old = size


def test_same_checkpoint_again_is_cosigned_again(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    assert post(witness_url, log.body(0, 6)).status_code == 200
    assert_cosigned(setup, post(witness_url, log.body(6, 6)), log.note(6))
    assert stored(setup) == TreeHead(6, log.tree.root(6))


def test_stale_old_size_is_409_with_the_size_cosigned(
    setup: WitnessSetup, witness_url: str
) -> None:
    log = setup.log
    assert post(witness_url, log.body(0, 5)).status_code == 200
    assert_conflict(post(witness_url, log.body(0, 9)), 5)  # a client that does not know
    assert_conflict(post(witness_url, log.body(3, 9)), 5)
    assert_conflict(post(witness_url, log.body(7, 9)), 5)  # ahead of the witness
    # The client then retries from the size the witness named.
    assert_cosigned(setup, post(witness_url, log.body(5, 9)), log.note(9))


def test_old_size_above_zero_for_an_unseen_log_is_409_zero(
    witness_url: str, setup: WitnessSetup
) -> None:
    assert_conflict(post(witness_url, setup.log.body(4, 9)), 0)
    assert stored(setup) is None


def test_bad_consistency_proof_is_422(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    assert post(witness_url, log.body(0, 5)).status_code == 200
    proof = log.proof(5, 9)
    flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
    for bad in (flipped, proof[:-1], [*proof, proof[0]], list(reversed(proof))):
        response = post(witness_url, log.body(5, 9, bad))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "InconsistentCheckpointError"
    assert stored(setup) == TreeHead(5, log.tree.root(5))  # nothing moved


def test_proof_from_zero_or_between_equal_sizes_is_422(
    setup: WitnessSetup, witness_url: str
) -> None:
    log = setup.log
    some_hash = log.proof(3, 5)[0]
    assert post(witness_url, log.body(0, 5, [some_hash])).status_code == 422
    assert stored(setup) is None
    assert post(witness_url, log.body(0, 5)).status_code == 200
    assert post(witness_url, log.body(5, 5, [some_hash])).status_code == 422


def test_empty_tree_with_another_root_is_422(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    checkpoint = Checkpoint(ORIGIN, 0, b"\x07" * 32)
    note = sign_checkpoint(checkpoint, log.signer).encode()
    assert post(witness_url, encode_add_checkpoint(0, [], note)).status_code == 422
    assert stored(setup) is None


def test_fork_at_the_same_size_is_refused(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    assert post(witness_url, log.body(0, 5)).status_code == 200
    # The same key signs another tree of the same size: a split view.
    other = Log(log.signer, tag="forged")
    response = post(witness_url, other.body(5, 5))
    assert response.status_code == 422, response.text
    assert "fork" in response.json()["error"]["message"]
    assert stored(setup) == TreeHead(5, log.tree.root(5))


def test_fork_at_a_larger_size_is_refused(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    assert post(witness_url, log.body(0, 5)).status_code == 200
    other = Log(log.signer, tag="forged")
    # Its own proof, from its own 5 to its own 9: not from the tree the witness holds.
    assert post(witness_url, other.body(5, 9)).status_code == 422
    assert stored(setup) == TreeHead(5, log.tree.root(5))


def test_replayed_older_checkpoint_is_refused(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    first = log.body(0, 5)
    assert post(witness_url, first).status_code == 200
    assert post(witness_url, log.body(5, 8)).status_code == 200
    assert_conflict(post(witness_url, first), 8)  # the same request, replayed
    # From the right old size, a smaller checkpoint: the old size exceeds it (400).
    response = post(witness_url, encode_add_checkpoint(8, [], log.note(5)))
    assert response.status_code == 400, response.text
    assert_conflict(post(witness_url, log.body(5, 5)), 8)
    assert stored(setup) == TreeHead(8, log.tree.root(8))  # never rolled back


def test_signature_of_another_key_is_403(setup: WitnessSetup, witness_url: str) -> None:
    impostor = Log.new()  # the log's origin, another key
    response = post(witness_url, impostor.body(0, 5))
    assert response.status_code == 403, response.text
    assert stored(setup) is None


def test_failing_signature_of_the_log_key_is_403(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    note = parse_note(log.note(5))
    (good,) = note.signatures
    broken = type(good)(good.name, good.key_id, bytes([good.signature[0] ^ 1]) + good.signature[1:])
    # Alone, and beside a valid signature: a failing one of a known key rejects the note.
    for signatures in ((broken,), (good, broken)):
        body = encode_add_checkpoint(0, [], type(note)(note.text, signatures).encode())
        assert post(witness_url, body).status_code == 403
    assert stored(setup) is None


def test_unknown_signatures_are_ignored(setup: WitnessSetup, witness_url: str) -> None:
    log = setup.log
    note = parse_note(log.note(5))
    stranger = NoteSigner("other.example/key", Log.new().signer.key)
    with_stranger = note.with_signatures(stranger.sign(note.text)).encode()
    response = post(witness_url, encode_add_checkpoint(0, [], with_stranger))
    assert_cosigned(setup, response, with_stranger)


def test_unknown_origin_is_404(setup: WitnessSetup, witness_url: str) -> None:
    stranger = Log.new("log.example/audit/acme/unknown")
    response = post(witness_url, stranger.body(0, 3))
    assert response.status_code == 404, response.text
    assert stored(setup, "log.example/audit/acme/unknown") is None


def _note(setup: WitnessSetup) -> bytes:
    return setup.log.note(5)


MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda n: b"",
    "no old line": lambda n: b"\n" + n,
    "old without newline": lambda n: b"old 0",
    "leading zero": lambda n: b"old 00\n\n" + n,
    "negative": lambda n: b"old -1\n\n" + n,
    "plus sign": lambda n: b"old +1\n\n" + n,
    "two spaces": lambda n: b"old  0\n\n" + n,
    "hex": lambda n: b"old 0x1\n\n" + n,
    "too big": lambda n: b"old 99999999999999999999\n\n" + n,
    "over int64": lambda n: b"old 9223372036854775808\n\n" + n,
    "CRLF": lambda n: b"old 0\r\n\r\n" + n,
    "no empty line": lambda n: b"old 0\n" + n.split(b"\n\n")[0],
    "no checkpoint": lambda n: b"old 0\n\n",
    "proof not base64": lambda n: b"old 1\n!!!!\n\n" + n,
    "proof hash 31 bytes": lambda n: b"old 1\n" + base64.b64encode(b"x" * 31) + b"\n\n" + n,
    "proof hash 33 bytes": lambda n: b"old 1\n" + base64.b64encode(b"x" * 33) + b"\n\n" + n,
    "proof not canonical": lambda n: b"old 1\n" + base64.b64encode(b"x" * 32)[:-2] + b"Z=\n\n" + n,
    "proof unpadded": lambda n: b"old 1\n" + base64.b64encode(b"x" * 32)[:-1] + b"\n\n" + n,
    "64 proof lines": lambda n: b"old 1\n" + (base64.b64encode(b"x" * 32) + b"\n") * 64 + b"\n" + n,
    "not a note": lambda n: b"old 0\n\nhello\n",
    "note without signatures": lambda n: b"old 0\n\n" + n.split(b"\n\n")[0] + b"\n\n",
    "not a checkpoint": lambda n: b"old 0\n\nhello\n\n" + n.split(b"\n\n")[1],
    "not UTF-8": lambda n: b"old 0\n\n\xff" + n,
    "old above size": lambda n: b"old 6\n\n" + n,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bodies_are_400(setup: WitnessSetup, witness_url: str, case: str) -> None:
    response = post(witness_url, MALFORMED[case](_note(setup)))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "MalformedRequestError"
    assert stored(setup) is None


def test_63_proof_lines_are_read(setup: WitnessSetup, witness_url: str) -> None:
    # Parsed (63 is the most allowed), then refused as a proof that does not verify.
    body = b"old 1\n" + (base64.b64encode(b"x" * 32) + b"\n") * 63 + b"\n" + _note(setup)
    assert_conflict(post(witness_url, body), 0)


def test_body_over_the_limit_is_413(setup: WitnessSetup, witness_url: str) -> None:
    limit = setup.settings.max_body_bytes
    body = setup.log.body(0, 5)
    assert post(witness_url, body + b"\n" * (limit - len(body))).status_code == 400  # read
    assert post(witness_url, body + b"\n" * (limit - len(body) + 1)).status_code == 413
    assert stored(setup) is None


def test_only_post(witness_url: str) -> None:
    response = httpx.get(f"{witness_url}/add-checkpoint")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert httpx.get(f"{witness_url}/healthz").json() == {"status": "ok"}
