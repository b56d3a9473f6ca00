"""The OpenAPI contract holds: schemathesis, every check on (positive and negative data,
undocumented statuses, headers, the stateful phase), finds nothing (tests/schemathesis.toml
names the few rules a JSON Schema cannot state)."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from audit.db.session import upgrade
from audit.settings import AuditSettings
from tests.apptools import schemathesis, serving

SECRET = "s" * 40


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    settings = AuditSettings(
        database_url=f"sqlite:///{tmp_path}/st.db",
        forward_enabled=False,
        jwt_hs256_secret=SECRET,
        service_keys_dir=tmp_path / "sk",
        keyrings_dir=tmp_path / "kr",
        exports_dir=tmp_path / "ex",
    )
    upgrade(settings.database_url)
    now = int(time.time())
    # Every role and a second factor: the calls reach the handlers, not just the auth check.
    token = jwt.encode(
        {
            "sub": "fuzzer",
            "tenant": "acme",
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "exp": now + 3600,
            "nbf": now - 5,
            "amr": ["otp"],
            "roles": ["auditor", "security", "engineer", "admin", "ingest"],
        },
        SECRET,
        algorithm="HS256",
    )
    with serving(settings, log_level="error") as url:
        result = schemathesis(
            f"{url}/openapi.json",
            Path(__file__).with_name("schemathesis.toml"),
            f"Authorization: Bearer {token}",
        )
    assert result.returncode == 0, result.stdout[-8000:]
    assert "passed" in result.stdout
