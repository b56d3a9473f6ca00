"""Submitting checkpoints to a witness (C2SP tlog-witness add-checkpoint): what the audit
service uses to get its checkpoints cosigned.

One `WitnessClient` per witness. `add_checkpoint` never raises for what the network or the
witness does: every answer is a `WitnessReply` whose `outcome` says what to do next —
attach the cosignatures (COSIGNED), retry from the witness's size (CONFLICT), give up on
this checkpoint and look into it (REJECTED), or try again later (UNREACHABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

import httpx

from audit.integrity.notes import (
    SIG_COSIGNATURE_V1,
    NoteError,
    NoteSignature,
    NoteVerifier,
    parse_note,
    parse_signature_lines,
)
from audit.witness.schemas import (
    ADD_CHECKPOINT_PATH,
    SIZE_CONTENT_TYPE,
    encode_add_checkpoint,
    parse_size,
)

# A witness answers a few signature lines (an ML-DSA-44 one is about 3.3 kB): anything
# much longer is not an answer, and is not read whole.
MAX_REPLY_BYTES = 64 * 1024
_DETAIL_CHARS = 300


class WitnessOutcome(StrEnum):
    COSIGNED = "cosigned"  # signatures holds the witness's verified cosignature(s)
    CONFLICT = "conflict"  # the witness has cosigned another size (`size`): resubmit from it
    REJECTED = "rejected"  # refused (4xx), or answered something that does not verify
    UNREACHABLE = "unreachable"  # no answer: network error, timeout, 5xx


@dataclass(frozen=True, slots=True)
class WitnessReply:
    outcome: WitnessOutcome
    signatures: tuple[NoteSignature, ...] = ()
    size: int | None = None  # CONFLICT: the size the witness last cosigned
    detail: str = ""


class WitnessClient:
    """The witness `name` (a label for messages), its submission prefix `url` and its
    cosignature key `verifier`: only cosignatures that verify against it are returned.

    With `client`, requests go through that httpx client (shared connections; the caller
    closes it); without, the WitnessClient opens its own, closed by `aclose` or on leaving
    `async with`. `timeout_s` bounds each whole call, connection to last byte."""

    def __init__(
        self,
        name: str,
        url: str,
        verifier: NoteVerifier,
        *,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if verifier.sig_type != SIG_COSIGNATURE_V1:
            raise ValueError(f"{verifier.vkey()} is not a cosignature key (type 0x04)")
        self.name = name
        self.url = url
        self.verifier = verifier
        self._endpoint = url.rstrip("/") + ADD_CHECKPOINT_PATH
        self._timeout_s = timeout_s
        self._owned = client is None
        self._client = client if client is not None else httpx.AsyncClient()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> WitnessClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: bytes
    ) -> WitnessReply:
        """Submit `note` (a signed checkpoint) with a consistency proof from `old_size`,
        the size this witness last cosigned (0 the first time, or when unknown: a CONFLICT
        then tells it). Raises ValueError only for arguments no witness could accept (a
        note that is not one, a proof of more than 63 hashes or of hashes not 32 bytes)."""
        try:
            text = parse_note(note).text
        except NoteError as exc:
            raise ValueError(f"not a signed note: {exc}") from None
        body = encode_add_checkpoint(old_size, proof, note)
        try:
            async with asyncio.timeout(self._timeout_s):
                status, media_type, data = await self._post(body)
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            return self._reply(WitnessOutcome.UNREACHABLE, f"no answer: {reason}")
        if data is None:
            return self._reply(
                WitnessOutcome.REJECTED, f"HTTP {status}: answer over {MAX_REPLY_BYTES} bytes"
            )
        if status == 200:
            return self._cosigned(text, data)
        if status == 409:
            return self._conflict(media_type, data)
        outcome = WitnessOutcome.UNREACHABLE if status >= 500 else WitnessOutcome.REJECTED
        answer = data[:_DETAIL_CHARS].decode("utf-8", "replace").strip()
        return self._reply(outcome, f"HTTP {status}: {answer}")

    async def _post(self, body: bytes) -> tuple[int, str, bytes | None]:
        """(status, media type, body; None when the body is over MAX_REPLY_BYTES)."""
        async with self._client.stream(
            "POST",
            self._endpoint,
            content=body,
            headers={"content-type": "text/plain; charset=utf-8"},
            timeout=self._timeout_s,
        ) as response:
            media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    return response.status_code, media_type, None
                chunks.append(chunk)
            return response.status_code, media_type, b"".join(chunks)

    def _cosigned(self, text: str, data: bytes) -> WitnessReply:
        """The answer's signature lines of this witness's key, every one verified."""
        try:
            lines = parse_signature_lines(data)
        except NoteError as exc:
            return self._reply(WitnessOutcome.REJECTED, f"malformed signature lines: {exc}")
        # Lines of other keys are ignored (tlog-witness); every one of this key must verify.
        mine = [s for s in lines if self.verifier.matches(s)]
        if not mine:
            return self._reply(
                WitnessOutcome.REJECTED, f"no cosignature of {self.verifier.name} in the answer"
            )
        for signature in mine:
            timestamp = self.verifier.verify(text, signature)
            if timestamp is None:
                return self._reply(
                    WitnessOutcome.REJECTED,
                    f"a cosignature of {self.verifier.name} does not verify",
                )
            if timestamp == 0:  # tlog-witness: the timestamp MUST NOT be zero
                return self._reply(WitnessOutcome.REJECTED, "a cosignature without a timestamp")
        return WitnessReply(WitnessOutcome.COSIGNED, signatures=tuple(mine))

    def _conflict(self, media_type: str, data: bytes) -> WitnessReply:
        if media_type != SIZE_CONTENT_TYPE:
            return self._reply(WitnessOutcome.REJECTED, f"HTTP 409 of type {media_type!r}")
        try:
            size = parse_size(data)
        except ValueError:
            return self._reply(WitnessOutcome.REJECTED, "HTTP 409 without a tree size")
        return WitnessReply(
            WitnessOutcome.CONFLICT, size=size, detail=f"{self.name} has cosigned size {size}"
        )

    def _reply(self, outcome: WitnessOutcome, detail: str) -> WitnessReply:
        return WitnessReply(outcome, detail=f"{self.name}: {detail}")
