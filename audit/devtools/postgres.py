"""A private PostgreSQL cluster from Debian's packages, on loopback and its own port.

The cluster lives in its own runtime directory (not Debian's `main` cluster), so it never
touches a system database and `down` removes nothing but the server process. Local socket
connections (directory mode 0700) are trusted for the superuser that creates the role and
database; TCP connections need the password.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from audit.devtools import (
    ProvisioningError,
    as_user,
    chown_tree,
    exclusive,
    is_root,
    log,
    read_pid,
    run,
    tail,
)

OS_USER = "postgres"
SUPERUSER = "postgres"


@dataclass(frozen=True)
class PostgresConfig:
    port: int = 55432
    runtime_dir: Path = Path("/tmp/ffaudit-pg")  # noqa: S108  (a dev server's scratch space)
    user: str = "ffaudit"
    password: str = "ffaudit"  # noqa: S105  (a loopback-only development server)
    database: str = "ffaudit"
    timeout_s: float = 60.0

    @property
    def url(self) -> str:
        return (
            f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.database}"
        )

    @property
    def data_dir(self) -> Path:
        return self.runtime_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.runtime_dir / "postgres.log"


def healthy(config: PostgresConfig) -> bool:
    """True when the application role can log in to its database over TCP."""
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=config.port,
            user=config.user,
            password=config.password,
            dbname=config.database,
            connect_timeout=3,
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def up(config: PostgresConfig) -> str:
    """Start the cluster (creating it, and installing PostgreSQL, when needed); return its URL."""
    with exclusive(config.runtime_dir):
        return _up(config)


def _up(config: PostgresConfig) -> str:
    if healthy(config):
        log(f"postgresql already running on 127.0.0.1:{config.port}")
        return config.url
    bindir = find_bindir() or _install_packages()
    user = OS_USER if is_root() else None
    _prepare_runtime_dir(config)
    if not (config.data_dir / "PG_VERSION").is_file():
        _initdb(config, bindir, user)
    if read_pid(config.data_dir / "postmaster.pid") is None:
        _start(config, bindir, user)
    _ensure_role_and_database(config)
    if not healthy(config):
        raise ProvisioningError(f"postgresql on port {config.port} refuses the {config.user} role")
    log(f"postgresql healthy on 127.0.0.1:{config.port}, database {config.database}")
    return config.url


def down(config: PostgresConfig) -> bool:
    """Stop the cluster `up` started (its postmaster.pid); False when it was not running."""
    with exclusive(config.runtime_dir):
        return _down(config)


def _down(config: PostgresConfig) -> bool:
    if read_pid(config.data_dir / "postmaster.pid") is None:
        log("postgresql is not running (no live postmaster.pid)")
        return False
    bindir = find_bindir()
    if bindir is None:
        raise ProvisioningError("pg_ctl not found")
    user = OS_USER if is_root() else None
    log(f"stopping postgresql in {config.data_dir}")
    run(
        as_user(
            user, [str(bindir / "pg_ctl"), "-D", str(config.data_dir), "-m", "fast", "-w", "stop"]
        )
    )
    return True


def status(config: PostgresConfig) -> bool:
    ok = healthy(config)
    log(f"postgresql on 127.0.0.1:{config.port}: {'healthy' if ok else 'not healthy'}")
    return ok


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin with the server tools."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = [p for p in root.iterdir() if p.name.isdigit() and (p / "bin" / "pg_ctl").is_file()]
    if not versions:
        return None
    return max(versions, key=lambda p: int(p.name)) / "bin"


def _install_packages() -> Path:
    if not is_root():
        raise ProvisioningError(
            "PostgreSQL server binaries not found; install Debian's `postgresql` package "
            "(or run this command as root to have it installed)"
        )
    log("installing PostgreSQL from Debian's packages (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ProvisioningError(f"{' '.join(argv)} failed: {result.stderr.strip()[-2000:]}")
    bindir = find_bindir()
    if bindir is None:
        raise ProvisioningError("apt-get installed postgresql but no server binaries were found")
    return bindir


def _prepare_runtime_dir(config: PostgresConfig) -> None:
    config.runtime_dir.mkdir(parents=True, exist_ok=True)
    # The socket directory doubles as the access control for the trusted superuser login.
    config.runtime_dir.chmod(0o700)
    if is_root():
        chown_tree(config.runtime_dir, OS_USER)


def _initdb(config: PostgresConfig, bindir: Path, user: str | None) -> None:
    log(f"creating a cluster in {config.data_dir}")
    run(
        as_user(
            user,
            [
                str(bindir / "initdb"),
                "-D",
                str(config.data_dir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                # The C locale exists everywhere; the database still stores UTF-8.
                "--no-locale",
            ],
        )
    )


def _start(config: PostgresConfig, bindir: Path, user: str | None) -> None:
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={config.port}",
            f"-c unix_socket_directories={shlex.quote(str(config.runtime_dir))}",
        ]
    )
    argv = [
        str(bindir / "pg_ctl"),
        "-D",
        str(config.data_dir),
        "-l",
        str(config.log_file),
        "-o",
        options,
        "-w",
        "-t",
        str(int(config.timeout_s)),
        "start",
    ]
    log(f"starting postgresql on 127.0.0.1:{config.port}")
    # A session of its own, so a Ctrl-C in the terminal that ran `up` does not reach it.
    result = subprocess.run(
        as_user(user, argv), capture_output=True, text=True, check=False, start_new_session=True
    )
    if result.returncode != 0:
        log(f"last 50 lines of {config.log_file}:\n{tail(config.log_file, 50)}")
        raise ProvisioningError(f"pg_ctl start failed: {(result.stderr or result.stdout).strip()}")


def _ensure_role_and_database(config: PostgresConfig) -> None:
    try:
        with psycopg.connect(
            host=str(config.runtime_dir),
            port=config.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            role = sql.Identifier(config.user)
            password = sql.Literal(config.password)
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (config.user,)
            ).fetchone()
            # CREATEDB lets the test suite make a throwaway database per session.
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN CREATEDB PASSWORD {}").format(verb, role, password)
            )
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (config.database,)
            ).fetchone():
                log(f"creating database {config.database}")
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(config.database), role
                    )
                )
    except psycopg.Error as exc:
        raise ProvisioningError(f"cannot create role/database: {exc}") from exc


__all__ = ["PostgresConfig", "down", "find_bindir", "status", "up"]
