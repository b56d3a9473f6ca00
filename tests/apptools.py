"""The audit service as the API and CLI suites run it: bearer tokens signed with a test
secret, settings that accept them, and the real app listening on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from starlette.types import ASGIApp

from audit.app import create_app
from audit.cli.service import uvicorn_options
from audit.db.session import upgrade
from audit.settings import AuditSettings

SECRET = "t" * 40
ISS, AUD = "https://idp.example", "ffaudit"


def jwt_token(**overrides: Any) -> str:
    """A token the settings of `app_settings` accept: by default auditor-1 of tenant acme,
    an auditor, with a second factor; `overrides` replace claims."""
    now = int(time.time())
    claims = {
        "sub": "auditor-1",
        "tenant": "acme",
        "roles": ["auditor"],
        "iss": ISS,
        "aud": AUD,
        "exp": now + 600,
        "nbf": now - 5,
        "amr": ["pwd", "otp"],
    }
    claims.update(overrides)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(**overrides: Any) -> dict[str, str]:
    """The authorization header of jwt_token(**overrides)."""
    return {"authorization": f"Bearer {jwt_token(**overrides)}"}


def app_settings(tmp_path: Path, database_url: str | None = None, **extra: Any) -> AuditSettings:
    """Settings with bearer tokens required (those of `jwt_token`) and every directory under
    `tmp_path`. Without `database_url`, a SQLite control database there, built by the
    migrations (a given one must be migrated already)."""
    if database_url is None:
        database_url = f"sqlite:///{tmp_path}/audit.db"
        upgrade(database_url)
    values: dict[str, Any] = {"forward_enabled": False, **extra}
    return AuditSettings(
        database_url=database_url,
        jwt_hs256_secret=SECRET,
        jwt_issuer=ISS,
        jwt_audience=AUD,
        service_keys_dir=tmp_path / "service-keys",
        keyrings_dir=tmp_path / "keyrings",
        exports_dir=tmp_path / "exports",
        **values,
    )


@contextlib.contextmanager
def running(app: ASGIApp, *, port: int | None = None, **config: Any) -> Iterator[str]:
    """`app` under uvicorn on loopback (a free port unless given), in a thread; yields its
    base URL and stops it on exit. `config`: more uvicorn.Config options."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def serving(settings: AuditSettings, *, log_level: str = "warning") -> Iterator[str]:
    """The real app on a free loopback port (for the CLI and other HTTP clients); yields
    its base URL and stops it on exit."""
    with running(create_app(settings), log_level=log_level, **uvicorn_options(settings)) as url:
        yield url


def schemathesis(schema_url: str, config: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    """Schemathesis with every check on (the config file enables them all) against a running
    server (the contract tests): fixed seed and example count, so a run is reproducible."""
    args = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run"]
    args.append(schema_url)
    for header in headers:
        args += ["--header", header]
    args += ["--max-examples", "30", "--seed", "1"]  # checks: all, set in the config file
    args += ["--request-timeout", "30"]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
