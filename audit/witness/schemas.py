"""The add-checkpoint exchange of C2SP tlog-witness, as bytes on the wire, and the witness's
refusals.

Shared by the server (routes parse, the service decides) and the client (which encodes
the same body and reads the same answers), so that the two cannot drift apart.

    POST <prefix>/add-checkpoint
    old <size>\\n
    <base64 consistency-proof hash>\\n      (0 to 63 lines)
    \\n
    <checkpoint note>
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from audit.errors import ConflictError, InvalidInputError, UsageError

ADD_CHECKPOINT_PATH = "/add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63
HASH_BYTES = 32
MAX_TREE_SIZE = 2**63 - 1  # witness_logs.size is a signed 64-bit column

_OLD_LINE = re.compile(rb"old (0|[1-9][0-9]{0,18})")
_SIZE = re.compile(rb"(0|[1-9][0-9]{0,18})\n")
_HASH_LINE = re.compile(rb"[A-Za-z0-9+/]{43}=")  # 32 bytes in standard, padded base64


class MalformedRequestError(UsageError):
    """The body is not an add-checkpoint request, or its numbers contradict each other
    (400 Bad Request)."""


class InconsistentCheckpointError(InvalidInputError):
    """The checkpoint does not extend what the witness has cosigned: a proof that does not
    verify, a proof where none is due, another root at the same size, a non-empty root for
    the empty tree (422 Unprocessable Entity)."""


class SizeConflictError(ConflictError):
    """The request's old size is not the size the witness last cosigned for the log (409
    Conflict, whose body is that size: `text/x.tlog.size`)."""

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    note: bytes  # the checkpoint, a signed note, as sent


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """The request body, read strictly: canonical decimal, standard padded base64 of 32-byte
    hashes, every line ending in a newline, at most 63 proof lines."""
    old_line, sep, rest = body.partition(b"\n")
    if not sep:
        raise MalformedRequestError("the body must start with an `old <size>` line")
    match = _OLD_LINE.fullmatch(old_line)
    if match is None:
        raise MalformedRequestError(
            "the first line must be `old <size>`, the size in decimal without leading zeroes"
        )
    old_size = int(match.group(1))
    if old_size > MAX_TREE_SIZE:
        raise MalformedRequestError("the old size is out of range")
    proof: list[bytes] = []
    while True:
        line, sep, rest = rest.partition(b"\n")
        if not sep:
            raise MalformedRequestError("no empty line between the proof and the checkpoint")
        if not line:
            break
        if len(proof) == MAX_PROOF_LINES:
            raise MalformedRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
        digest = _hash(line)
        if digest is None:
            raise MalformedRequestError(
                f"consistency proof line {len(proof) + 1} is not a base64 SHA-256 hash"
            )
        proof.append(digest)
    if not rest:
        raise MalformedRequestError("no checkpoint after the empty line")
    return AddCheckpoint(old_size, tuple(proof), rest)


def _hash(line: bytes) -> bytes | None:
    """A 32-byte hash in canonical standard base64 (the one encoding of its bytes)."""
    if _HASH_LINE.fullmatch(line) is None:
        return None
    try:
        digest = base64.b64decode(line, validate=True)
    except binascii.Error:
        return None
    return digest if base64.b64encode(digest) == line else None


def encode_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """The request body for `note` (a signed checkpoint) with a proof from `old_size`."""
    if not 0 <= old_size <= MAX_TREE_SIZE:
        raise ValueError(f"old size {old_size} is out of range")
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"more than {MAX_PROOF_LINES} consistency proof hashes")
    if any(len(h) != HASH_BYTES for h in proof):
        raise ValueError("consistency proof hashes are 32 bytes")
    lines = [f"old {old_size}\n".encode()]
    lines += [base64.b64encode(h) + b"\n" for h in proof]
    return b"".join(lines) + b"\n" + note


def encode_size(size: int) -> bytes:
    """The body of a 409 answer."""
    return f"{size}\n".encode()


def parse_size(body: bytes) -> int:
    """The size in a 409 answer's body; ValueError when it is not one."""
    match = _SIZE.fullmatch(body)
    if match is None:
        raise ValueError("not a tree size followed by a newline")
    return int(match.group(1))
