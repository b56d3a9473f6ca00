"""Pseudonyms: keyed, domain-separated, tenant-separated, stable, rotatable, reproducible."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from audit.errors import InvalidInputError, KeyMaterialError
from audit.integrity.keys import Keyring
from audit.integrity.pseudonym import PiiKind, Pseudonymizer


def test_matches_the_documented_construction() -> None:
    ring = Keyring.generate()
    key = HKDF(hashes.SHA256(), 32, None, b"ffaudit.pseudonym.v1\x00acme").derive(
        ring.keys[0].secret
    )
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(b"ffaudit.pseudonym.v1\x00client_ip\x00192.0.2.1")
    assert Pseudonymizer(ring, "acme").pseudonym(PiiKind.CLIENT_IP, "192.0.2.1") == (
        mac.finalize().hex()
    )


def test_domain_and_tenant_separation() -> None:
    ring = Keyring.generate()
    acme, other = Pseudonymizer(ring, "acme"), Pseudonymizer(ring, "other")
    user = acme.pseudonym(PiiKind.USER, "10.0.0.1")
    assert user != acme.pseudonym(PiiKind.CLIENT_IP, "10.0.0.1")
    assert user != other.pseudonym(PiiKind.USER, "10.0.0.1")
    assert user != Pseudonymizer(Keyring.generate(), "acme").pseudonym(PiiKind.USER, "10.0.0.1")
    assert user == Pseudonymizer(ring, "acme").pseudonym(PiiKind.USER, "10.0.0.1")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:DB8::0:1", "2001:db8::1"),
        (" 192.0.2.1", "192.0.2.1"),
    ],
)
def test_one_pseudonym_per_address(a: str, b: str) -> None:
    p = Pseudonymizer(Keyring.generate(), "t")
    assert p.pseudonym(PiiKind.CLIENT_IP, a) == p.pseudonym(PiiKind.CLIENT_IP, b)


def test_invalid_ip_is_a_clear_error_without_the_value() -> None:
    p = Pseudonymizer(Keyring.generate(), "t")
    with pytest.raises(InvalidInputError, match="client_ip is not an IP address") as info:
        p.pseudonym(PiiKind.CLIENT_IP, "secret-host.example")
    assert "secret-host" not in str(info.value)


def test_rotation_and_keyring_file_round_trip() -> None:
    ring = Keyring.generate()
    rotated = Keyring.loads(ring.rotate().dumps())
    assert len(rotated.active) == 2
    assert rotated.current != ring.current
    old = Pseudonymizer(ring, "t").pseudonym(PiiKind.SESSION, "s-1")
    assert old in Pseudonymizer(rotated, "t").candidates(PiiKind.SESSION, "s-1").values()


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"format": "something-else"}',
        b'{"format": "ffaudit.pii-keyring.v1", "current": "k", "keys": []}',
        b'{"format": "ffaudit.pii-keyring.v1", "current": "k", "keys": '
        b'[{"id": "k", "secret": "c2hvcnQ=", "created": "x", "active": true}]}',
    ],
)
def test_bad_keyrings_are_refused(data: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        Keyring.loads(data)
