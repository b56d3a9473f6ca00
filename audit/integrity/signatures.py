"""The one checkpoint-signature verdict, used by every verifier (offline, ingest, exports).

The checks run in one order, so that every verifier names the same failure for the same
checkpoint: no signature → `missing_signature`; another signer → `wrong_key`; not a base64
Ed25519 signature → `bad_signature` (undecodable); a signature that does not verify over
the checkpoint message → `bad_signature`. (Before, a checkpoint with neither a signature
nor the stream's signer was `missing_signature` at ingest and "signed by another key" in
the export verifier.)
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum

from audit.integrity.contexts import checkpoint_message
from audit.integrity.keys import Verifier


class SignatureFailure(StrEnum):
    """The failure kinds a checkpoint signature can have; their values are the verifiers'
    failure kinds of the same name."""

    MISSING_SIGNATURE = "missing_signature"
    WRONG_KEY = "wrong_key"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True, slots=True)
class SignatureProblem:
    kind: SignatureFailure
    detail: str
    # True when the bytes were an Ed25519 signature that failed to verify: a later
    # verified checkpoint may prove the chain through it (spec §7 step 5).
    decodable: bool = False


def checkpoint_signature(
    signature: object, signer: object, event_hash: str, key: Verifier
) -> SignatureProblem | None:
    """None when `signature` is `key`'s Ed25519 signature over the checkpoint message of
    `event_hash` and `signer` names `key`; otherwise what is wrong, in the fixed order."""
    if not isinstance(signature, str):
        return SignatureProblem(SignatureFailure.MISSING_SIGNATURE, "checkpoint has no signature")
    if signer != key.fingerprint:
        return SignatureProblem(
            SignatureFailure.WRONG_KEY,
            f"signed by key {str(signer)[:16]}…, not the stream's key {key.fingerprint[:16]}…",
        )
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        return SignatureProblem(
            SignatureFailure.BAD_SIGNATURE, "signature is not a base64 Ed25519 signature"
        )
    if not key.verify(raw, checkpoint_message(event_hash)):
        return SignatureProblem(
            SignatureFailure.BAD_SIGNATURE, "signature does not verify", decodable=True
        )
    return None
