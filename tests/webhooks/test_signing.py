"""The signature header: what a receiver must accept, and everything it must refuse."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, hmac

from audit.errors import WebhookSignatureError
from audit.webhooks.signing import new_secret, sign, verify_signature

BODY = b'{"type":"alert.opened","event_id":"e-1"}'
T = 1_800_000_000


def test_a_signed_body_verifies_and_the_signing_string_is_t_dot_body() -> None:
    secret = new_secret()
    header = sign(secret, BODY, T)
    assert verify_signature(secret, header, BODY, 300, now=T + 299) == T
    # The documented construction, recomputed independently of the module's own helper.
    mac = hmac.HMAC(secret.encode(), hashes.SHA256())
    mac.update(f"{T}.".encode() + BODY)
    assert header == f"t={T},v1={mac.finalize().hex()}"


def test_secrets_are_random_and_long() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(a) == len("whsec_") + 64


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b"e-1", b"e-2"),
        BODY + b" ",
        b"",
    ],
)
def test_a_tampered_body_is_refused(body: bytes) -> None:
    secret = new_secret()
    with pytest.raises(WebhookSignatureError, match="no v1 signature matches"):
        verify_signature(secret, sign(secret, BODY, T), body, 300, now=T)


def test_another_secret_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="no v1 signature matches"):
        verify_signature(new_secret(), sign(new_secret(), BODY, T), BODY, 300, now=T)


def test_a_stale_timestamp_is_refused_as_a_replay_even_with_a_valid_mac() -> None:
    secret = new_secret()
    header = sign(secret, BODY, T)
    with pytest.raises(WebhookSignatureError, match="replay"):
        verify_signature(secret, header, BODY, 300, now=T + 301)
    with pytest.raises(WebhookSignatureError, match="replay"):
        verify_signature(secret, header, BODY, 300, now=T - 301)  # from the future


def test_a_replayed_body_with_a_fresh_timestamp_is_refused() -> None:
    secret = new_secret()
    old = sign(secret, BODY, T)
    forged = old.replace(f"t={T}", f"t={T + 3600}")
    with pytest.raises(WebhookSignatureError, match="no v1 signature matches"):
        verify_signature(secret, forged, BODY, 300, now=T + 3600)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", f"t={T}", "v1=00", f"t=soon,v1={'0' * 64}", f"t={T},v1=zz", f"t={T},v1"],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(WebhookSignatureError):
        verify_signature(new_secret(), header, BODY, 300, now=T)


def test_any_one_of_several_v1_signatures_is_enough() -> None:
    old, new = new_secret(), new_secret()
    header = sign(new, BODY, T) + "," + sign(old, BODY, T).split(",")[1]
    assert verify_signature(old, header, BODY, 300, now=T) == T
    assert verify_signature(new, header, BODY, 300, now=T) == T
