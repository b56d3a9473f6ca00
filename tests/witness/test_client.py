"""WitnessClient against the real witness (cosigned, conflict, refused), against servers
that answer what no honest witness would, and against nothing at all."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.types import ASGIApp, Receive, Scope, Send

from audit.integrity.notes import CosignatureSigner, NoteSignature, parse_note
from audit.witness.client import MAX_REPLY_BYTES, WitnessClient, WitnessOutcome, WitnessReply
from tests.witness.conftest import WITNESS_NAME, WitnessSetup, serving


def submit(
    setup: WitnessSetup, url: str, old: int, size: int, proof: list[bytes] | None = None
) -> WitnessReply:
    log = setup.log
    proof = log.proof(old, size) if proof is None else proof

    async def go() -> WitnessReply:
        async with WitnessClient("w1", url, setup.verifier) as client:
            return await client.add_checkpoint(old, proof, log.note(size))

    return asyncio.run(go())


def test_cosigned(setup: WitnessSetup, witness_url: str) -> None:
    reply = submit(setup, witness_url, 0, 5)
    assert reply.outcome is WitnessOutcome.COSIGNED
    (signature,) = reply.signatures
    text = parse_note(setup.log.note(5)).text
    timestamp = setup.verifier.verify(text, signature)
    assert timestamp is not None
    assert abs(timestamp - time.time()) < 5
    assert reply.size is None
    reply = submit(setup, witness_url, 5, 12)
    assert reply.outcome is WitnessOutcome.COSIGNED


def test_conflict_carries_the_witness_size(setup: WitnessSetup, witness_url: str) -> None:
    assert submit(setup, witness_url, 0, 5).outcome is WitnessOutcome.COSIGNED
    reply = submit(setup, witness_url, 0, 9)
    assert reply.outcome is WitnessOutcome.CONFLICT
    assert reply.size == 5
    assert reply.signatures == ()
    assert submit(setup, witness_url, reply.size, 9).outcome is WitnessOutcome.COSIGNED


def test_refusals_are_rejected(setup: WitnessSetup, witness_url: str) -> None:
    assert submit(setup, witness_url, 0, 5).outcome is WitnessOutcome.COSIGNED
    proof = setup.log.proof(5, 9)
    reply = submit(setup, witness_url, 5, 9, [proof[-1], *proof[:-1]])
    assert reply.outcome is WitnessOutcome.REJECTED
    assert "HTTP 422" in reply.detail
    assert reply.detail.startswith("w1: ")


def test_cosignature_of_another_key_is_rejected(setup: WitnessSetup, witness_url: str) -> None:
    other = CosignatureSigner(WITNESS_NAME, Ed25519PrivateKey.generate()).verifier

    async def go() -> WitnessReply:
        async with WitnessClient("w1", witness_url, other) as client:
            return await client.add_checkpoint(0, [], setup.log.note(5))

    reply = asyncio.run(go())
    assert reply.outcome is WitnessOutcome.REJECTED
    assert "no cosignature" in reply.detail


def test_unreachable_on_a_closed_port(setup: WitnessSetup) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    reply = submit(setup, f"http://127.0.0.1:{port}", 0, 5)
    assert reply.outcome is WitnessOutcome.UNREACHABLE
    assert reply.signatures == ()


def _fixed(status: int, body: bytes, content_type: str, delay_s: float = 0.0) -> ASGIApp:
    """A server that answers every request the same way (not a witness: what one might be
    impersonated by, or broken into)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(delay_s)
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def genuine(setup: WitnessSetup) -> NoteSignature:
    """A cosignature the witness's key made over the log's checkpoint of size 5."""
    text = parse_note(setup.log.note(5)).text
    return setup.cosigner.cosign(text, int(time.time()))


def _reply_of(setup: WitnessSetup, app: ASGIApp, timeout_s: float = 5.0) -> WitnessReply:
    async def go(url: str) -> WitnessReply:
        async with httpx.AsyncClient() as http:
            client = WitnessClient("w1", url, setup.verifier, timeout_s=timeout_s, client=http)
            return await client.add_checkpoint(0, [], setup.log.note(5))

    with serving(app) as url:
        return asyncio.run(go(url))


def test_genuine_cosignature_from_any_server(setup: WitnessSetup, genuine: NoteSignature) -> None:
    stranger = CosignatureSigner("other.example/w", Ed25519PrivateKey.generate())
    text = parse_note(setup.log.note(5)).text
    extra = stranger.cosign(text, int(time.time())).line()
    body = (extra + genuine.line()).encode()  # lines of other keys are ignored
    reply = _reply_of(setup, _fixed(200, body, "text/plain; charset=utf-8"))
    assert reply.outcome is WitnessOutcome.COSIGNED
    assert reply.signatures == (genuine,)


def test_bad_cosignature_is_rejected(setup: WitnessSetup, genuine: NoteSignature) -> None:
    forged = NoteSignature(
        genuine.name, genuine.key_id, genuine.signature[:-1] + bytes([genuine.signature[-1] ^ 1])
    )
    for lines in ((forged,), (genuine, forged)):
        body = "".join(s.line() for s in lines).encode()
        reply = _reply_of(setup, _fixed(200, body, "text/plain"))
        assert reply.outcome is WitnessOutcome.REJECTED
        assert "does not verify" in reply.detail
        assert reply.signatures == ()


def test_cosignature_over_another_checkpoint_is_rejected(setup: WitnessSetup) -> None:
    text = parse_note(setup.log.note(6)).text
    other = setup.cosigner.cosign(text, int(time.time()))
    reply = _reply_of(setup, _fixed(200, other.line().encode(), "text/plain"))
    assert reply.outcome is WitnessOutcome.REJECTED


def test_cosignature_without_timestamp_is_rejected(setup: WitnessSetup) -> None:
    text = parse_note(setup.log.note(5)).text
    zero = setup.cosigner.cosign(text, 0)
    reply = _reply_of(setup, _fixed(200, zero.line().encode(), "text/plain"))
    assert reply.outcome is WitnessOutcome.REJECTED
    assert "timestamp" in reply.detail


@pytest.mark.parametrize(
    ("status", "body", "content_type", "outcome"),
    [
        (200, b"", "text/plain", WitnessOutcome.REJECTED),
        (200, b"hello\n", "text/plain", WitnessOutcome.REJECTED),
        (200, b"x" * (MAX_REPLY_BYTES + 1), "text/plain", WitnessOutcome.REJECTED),
        (409, b"12\n", "text/plain", WitnessOutcome.REJECTED),  # not text/x.tlog.size
        (409, b"012\n", "text/x.tlog.size", WitnessOutcome.REJECTED),
        (409, b"12", "text/x.tlog.size", WitnessOutcome.REJECTED),
        (404, b"unknown log\n", "text/plain", WitnessOutcome.REJECTED),
        (403, b"", "text/plain", WitnessOutcome.REJECTED),
        (500, b"oops", "text/plain", WitnessOutcome.UNREACHABLE),
        (503, b"", "text/plain", WitnessOutcome.UNREACHABLE),
    ],
)
def test_answers_that_are_not_cosignatures(
    setup: WitnessSetup, status: int, body: bytes, content_type: str, outcome: WitnessOutcome
) -> None:
    reply = _reply_of(setup, _fixed(status, body, content_type))
    assert reply.outcome is outcome, reply.detail
    assert reply.signatures == ()
    assert reply.size is None


def test_conflict_with_parameters_in_the_type(setup: WitnessSetup) -> None:
    reply = _reply_of(setup, _fixed(409, b"42\n", "text/x.tlog.size; charset=utf-8"))
    assert reply.outcome is WitnessOutcome.CONFLICT
    assert reply.size == 42


def test_slow_witness_is_unreachable(setup: WitnessSetup) -> None:
    async def go(url: str) -> tuple[WitnessReply, float]:
        async with WitnessClient("w1", url, setup.verifier, timeout_s=0.5) as client:
            started = time.monotonic()
            reply = await client.add_checkpoint(0, [], setup.log.note(5))
            return reply, time.monotonic() - started

    with serving(_fixed(200, b"", "text/plain", delay_s=3.0)) as url:
        reply, elapsed = asyncio.run(go(url))
    assert reply.outcome is WitnessOutcome.UNREACHABLE
    assert elapsed < 2.0


def test_arguments_no_witness_could_accept(setup: WitnessSetup, witness_url: str) -> None:
    async def go() -> None:
        async with WitnessClient("w1", witness_url, setup.verifier) as client:
            with pytest.raises(ValueError, match="signed note"):
                await client.add_checkpoint(0, [], b"not a note")
            with pytest.raises(ValueError, match="63"):
                await client.add_checkpoint(1, [b"x" * 32] * 64, setup.log.note(5))

    asyncio.run(go())
    with pytest.raises(ValueError, match="cosignature key"):
        WitnessClient("w1", witness_url, setup.log.verifier)
