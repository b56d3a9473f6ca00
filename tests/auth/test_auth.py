"""Authentication and authorisation: tokens that must fail, roles, tenants."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.auth.tokens import Role, TokenVerifier
from audit.db.session import upgrade
from audit.errors import AuthenticationError
from audit.integrity.keys import Signer
from audit.settings import AuditSettings
from audit.store.protocol import EventStore
from tests.ingest.conftest import make_records

SECRET = "x" * 40
ISS, AUD = "https://idp.example", "ffaudit"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "alice",
        "tenant": "acme",
        "roles": ["auditor"],
        "iss": ISS,
        "aud": AUD,
        "exp": now + 300,
        "nbf": now - 5,
        "amr": ["pwd"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def settings(tmp_path: Path, **extra: Any) -> AuditSettings:
    return AuditSettings(
        database_url=f"sqlite:///{tmp_path}/auth.db",
        forward_enabled=False,
        jwt_issuer=ISS,
        jwt_audience=AUD,
        **extra,
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (jwt.encode(claims(), "y" * 40, algorithm="HS256"), "Signature verification failed"),
        (hs(exp=int(time.time()) - 10), "expired"),
        (hs(nbf=int(time.time()) + 600), "not yet valid"),
        (hs(iss="https://evil.example"), "issuer"),
        (hs(aud="other"), "audience"),
        (hs(exp=None), "exp"),
        (hs(tenant=None), "names no tenant"),
        (jwt.encode(claims(), "", algorithm="none"), "alg"),
        ("not.a.jwt", "invalid token"),
    ],
)
def test_bad_tokens_are_refused(tmp_path: Path, token: str, message: str) -> None:
    verifier = TokenVerifier(settings(tmp_path, jwt_hs256_secret=SECRET))
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token)
    assert message.lower() in info.value.message.lower()


def test_rs256_from_pem_and_algorithm_confusion(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    verifier = TokenVerifier(settings(tmp_path, jwt_public_key_file=tmp_path / "idp.pem"))
    good = jwt.encode(claims(roles=["admin"], amr=["otp"]), key, algorithm="RS256")
    principal = verifier.verify(good)
    assert (principal.subject, principal.tenant, principal.roles) == (
        "alice",
        "acme",
        frozenset({Role.ADMIN}),
    )
    # The classic confusion attack: an HS256 token keyed with the public key's PEM.
    # (PyJWT will not even encode one, so it is built by hand.)
    from cryptography.hazmat.primitives import hashes, hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(orjson.dumps(claims()))
    mac = hmac.HMAC(pem, hashes.SHA256())
    mac.update(signing_input)
    forged = (signing_input + b"." + b64(mac.finalize())).decode()
    with pytest.raises(AuthenticationError, match="alg"):
        verifier.verify(forged)


def test_eddsa_from_jwks(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "EdDSA", "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    verifier = TokenVerifier(settings(tmp_path, jwks_file=tmp_path / "jwks.json"))
    token = jwt.encode(claims(), key, algorithm="EdDSA", headers={"kid": "k1"})
    assert verifier.verify(token).tenant == "acme"
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AuthenticationError):
        verifier.verify(jwt.encode(claims(), other, algorithm="EdDSA"))


@pytest.fixture(params=["sqlite", "elasticsearch"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The service on each event store: roles and tenants must hold on both."""
    store: dict[str, Any] = {}
    if request.param == "elasticsearch":
        store = {
            "elasticsearch_url": request.getfixturevalue("elasticsearch_url"),
            "elasticsearch_index_prefix": request.getfixturevalue("fresh_es_prefix"),
        }
    s = settings(tmp_path, jwt_hs256_secret=SECRET, **store)
    upgrade(s.database_url)
    with TestClient(create_app(s)) as client:
        yield client


def bearer(**overrides: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {hs(**overrides)}"}


def register(client: TestClient, signer: Signer, tenant: str = "acme", **who: Any) -> int:
    body = {
        "stream": f"cam-{tenant}",
        "tenant": tenant,
        "public_key_pem": signer.verifier.pem().decode(),
    }
    status: int = client.post("/v1/streams", json=body, headers=bearer(**who)).status_code
    return status


def test_role_and_tenant_matrix(client: TestClient) -> None:
    signer = Signer.generate()
    assert client.post("/v1/streams", json={}).status_code == 401  # no token at all
    assert register(client, signer, roles=["auditor"]) == 403
    assert register(client, signer, roles=["admin"], amr=["pwd"]) == 403  # no second factor
    assert register(client, signer, tenant="other", roles=["admin"], amr=["otp"]) == 403
    assert register(client, signer, roles=["admin"], amr=["pwd", "otp"]) == 201

    assert client.get("/v1/streams/cam-acme", headers=bearer()).status_code == 200
    assert client.get("/v1/streams/cam-acme", headers=bearer(tenant="other")).status_code == 404
    assert client.get("/v1/streams/cam-acme", headers=bearer(roles=["subject"])).status_code == 403

    records = orjson.dumps(make_records(signer, 3, stream="cam-acme"))
    url = "/v1/streams/cam-acme/records"
    headers = {"content-type": "application/json"}
    assert client.post(url, content=records, headers={**headers, **bearer()}).status_code == 403
    assert (
        client.post(
            url, content=records, headers={**headers, **bearer(roles=["ingest"], tenant="other")}
        ).status_code
        == 403
    )
    ok = client.post(url, content=records, headers={**headers, **bearer(roles=["ingest"])})
    assert ok.status_code == 200, ok.text


def test_admin_reads_the_full_log_only_with_a_second_factor(client: TestClient) -> None:
    # Admin is one of several roles allowed to read: it must still need MFA there.
    for path in ("/v1/events", "/v1/stats", "/v1/alerts", "/v1/retention/policies"):
        weak = client.get(path, headers=bearer(roles=["admin"], amr=["pwd"]))
        assert weak.status_code == 403, (path, weak.text)
        assert "second factor" in weak.json()["error"]["message"]
        strong = client.get(path, headers=bearer(roles=["admin"], amr=["pwd", "otp"]))
        assert strong.status_code == 200, (path, strong.text)
    # Another role on the same token still counts on its own.
    both = bearer(roles=["admin", "auditor"], amr=["pwd"])
    assert client.get("/v1/events", headers=both).status_code == 200


def test_open_mode_refuses_a_public_address(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "audit", "serve", "--host", "0.0.0.0", "--no-migrate"],  # noqa: S104
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"FFAUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "open mode is for loopback only" in result.stderr


def test_admin_actions_land_in_the_log_of_the_logs(client: TestClient) -> None:
    signer = Signer.generate()
    assert register(client, signer, roles=["admin"], amr=["otp"], sub="root-admin") == 201
    servicelog = client.app.state.services.servicelog  # type: ignore[attr-defined]
    stream = servicelog.stream_for("acme")
    head = client.get(f"/v1/streams/{stream}", headers=bearer()).json()
    assert head["head_sequence"] == 1
    store: EventStore = client.app.state.services.store  # type: ignore[attr-defined]

    async def read() -> list[Any]:
        return [e async for e in store.scan("acme", stream)]

    # The app's store lives on the TestClient's event loop: read through its portal.
    (event,) = client.portal.call(read)  # type: ignore[union-attr]
    assert event.verdict == "ok"  # verified at ingest like any producer's record
    record = event.record
    assert record["event.action"] == "stream.registered"
    assert record["ffaudit.metadata"]["stream"] == "cam-acme"
    assert "root-admin" not in orjson.dumps(record).decode()  # the admin is pseudonymised
    assert len(record["user.hash"]) == 64


@pytest.mark.parametrize(
    "claims",
    [
        {"tenant": "TenantB"},
        {"tenant": "tenantb "},
        {"tenant": "tenantb\x00"},
        {"tenant": "%"},
        {"tenant": "*"},
        {"tenant": "a" * 64},
        {"sub": ""},
        {"sub": " alice"},
        {"sub": "alice\n"},
        {"sub": 42},
        {"sub": "x" * 257},
    ],
)
def test_malformed_claims_are_401_not_500(client: TestClient, claims: dict[str, Any]) -> None:
    """Validated once at authentication; the review saw 500s from these tenants wherever the
    log of the logs (which names a stream after the tenant) was written."""
    who = bearer(roles=["auditor", "admin"], amr=["otp"], **claims)
    for path in ("/v1/events", "/v1/retention/checkpoints", "/v1/stats"):
        answer = client.get(path, headers=who)
        assert answer.status_code == 401, (path, claims, answer.text)
        assert answer.json()["error"]["message"].startswith("invalid token")
