"""Real backends shared by every suite: Elasticsearch and PostgreSQL.

URLs come from FFAUDIT_TEST_ELASTICSEARCH_URL / FFAUDIT_TEST_POSTGRES_URL (CI exports them);
when unset, the fixtures run `ffaudit dev ... up` themselves. A backend that cannot be
provisioned fails the tests that need it: nothing here skips or mocks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from elasticsearch import Elasticsearch
from psycopg import sql
from sqlalchemy.engine import make_url

from audit.db.session import upgrade


def _provision(kind: str) -> str:
    """`ffaudit dev <kind> up` (idempotent); its stdout is the URL."""
    result = subprocess.run(
        [sys.executable, "-m", "audit", "dev", kind, "up"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        pytest.fail(
            f"`ffaudit dev {kind} up` failed ({result.returncode}):\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def elasticsearch_url() -> str:
    return os.environ.get("FFAUDIT_TEST_ELASTICSEARCH_URL") or _provision("elasticsearch")


@pytest.fixture(scope="session")
def es_prefix(elasticsearch_url: str) -> Iterator[str]:
    """An index prefix of this test session only; its indices and templates go at the end."""
    prefix = f"ffaudit-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    drop_prefix(elasticsearch_url, prefix)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    return os.environ.get("FFAUDIT_TEST_POSTGRES_URL") or _provision("postgres")


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A throwaway database on `server`, schema built by the migrations."""
    base = make_url(server)
    name = f"ffaudit_test_{uuid.uuid4().hex[:12]}"
    params: dict[str, Any] = {
        "host": base.host,
        "port": base.port,
        "user": base.username,
        "password": base.password,
        "dbname": base.database,
        "autocommit": True,
    }
    with psycopg.connect(**params) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = base.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(**params) as admin:
        for attempt in range(20):
            try:
                admin.execute(drop)
                break
            except psycopg.errors.InsufficientPrivilege:
                # FORCE cannot end an autovacuum worker (a superuser's backend) busy in the
                # database; it finishes within moments on a test database.
                if attempt == 19:
                    raise
                time.sleep(0.5)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test session (tests that share it use their own tenants)."""
    with postgres_database(postgres_server) as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test alone."""
    with postgres_database(postgres_server) as url:
        yield url


def drop_prefix(url: str, prefix: str) -> None:
    """Remove a prefix's indices and templates (ES 8 refuses wildcard deletes: name them)."""
    with Elasticsearch(url) as client:
        names = client.options(ignore_status=404).indices.get(index=f"{prefix}-*")
        for name in names.body if isinstance(names.body, dict) else {}:
            client.indices.delete(index=name)
        client.options(ignore_status=404).indices.delete_index_template(name=prefix)
        for part in ("settings", "mappings"):
            client.options(ignore_status=404).cluster.delete_component_template(
                name=f"{prefix}-{part}"
            )


@pytest.fixture
def fresh_es_prefix(elasticsearch_url: str) -> Iterator[str]:
    """An index prefix of this test alone, removed afterwards."""
    prefix = f"ffaudit-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    drop_prefix(elasticsearch_url, prefix)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for localhost/127.0.0.1 (TLS tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def register_stream(base_url: str, stream: str, tenant: str, public_key_pem: str) -> None:
    """Register a stream with a running service (open mode) over its HTTP API."""
    import httpx

    httpx.post(
        f"{base_url}/v1/streams",
        json={"stream": stream, "tenant": tenant, "public_key_pem": public_key_pem},
    ).raise_for_status()
