"""Webhook signatures: HMAC-SHA256 over the send time and the exact body (Stripe-like).

    X-FFAudit-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>

The key is the secret string exactly as the service returned it (UTF-8). Signing the
timestamp with the body lets a receiver refuse replays: a captured request cannot be
re-sent later with a fresh `t` without the secret. `verify_signature` is the receiver's
side, the reference that docs/webhooks.md describes.
"""

from __future__ import annotations

import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from audit.errors import WebhookSignatureError

SIGNATURE_HEADER = "X-FFAudit-Signature"
EVENT_ID_HEADER = "X-FFAudit-Event-Id"
DEFAULT_TOLERANCE_S = 300


def new_secret() -> str:
    # 256 random bits; the prefix makes a leaked one recognisable (e.g. by secret scanners).
    return "whsec_" + secrets.token_hex(32)


def _mac(secret: str, timestamp: int, body: bytes) -> hmac.HMAC:
    mac = hmac.HMAC(secret.encode(), hashes.SHA256())
    mac.update(f"{timestamp}.".encode())
    mac.update(body)
    return mac


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body).finalize().hex()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a received request; returns its timestamp, or raises WebhookSignatureError.

    Refuses a malformed header, a timestamp further than `tolerance_s` from `now` (either
    way: a replay, or a clock far off), and a body or timestamp that the secret did not sign.
    Several `v1=` entries are allowed; one valid is enough. The comparison is constant-time.
    """
    timestamp: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("malformed signature header")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookSignatureError("malformed signature timestamp") from None
        elif key == "v1":
            try:
                candidates.append(bytes.fromhex(value))
            except ValueError:
                raise WebhookSignatureError("malformed v1 signature") from None
    if timestamp is None or not candidates:
        raise WebhookSignatureError("the signature header needs t= and v1=")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookSignatureError(
            f"signature timestamp is {current - timestamp:.0f} s from now "
            f"(tolerance {tolerance_s:g} s): refused as a possible replay"
        )
    for candidate in candidates:
        try:
            _mac(secret, timestamp, body).verify(candidate)
        except InvalidSignature:
            continue
        return timestamp
    raise WebhookSignatureError("no v1 signature matches the body and timestamp")
