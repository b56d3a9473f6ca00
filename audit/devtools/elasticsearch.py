"""A private single-node Elasticsearch from Maven Central's integ-test-zip distribution.

The integ-test-zip is the server with a minimal set of modules and no bundled JDK: it runs
on the machine's Java 17. Since 8.x it ships the security module, which this node switches
off (plain http on loopback) instead of letting it generate TLS certificates and passwords.
The archive is verified against the SHA-512 Maven Central publishes and cached, so only the
first `up` on a machine downloads anything. Elasticsearch refuses to run as root; as root
we run it as a dedicated system user.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes

from audit.devtools import (
    ProvisioningError,
    as_user,
    cache_dir,
    chown_tree,
    ensure_system_user,
    exclusive,
    is_root,
    log,
    pid_alive,
    read_pid,
    stop_process_group,
    tail,
)
from audit.integrity.digest import file_hex

ES_VERSION = "8.19.21"
MAVEN_URL = (
    "https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/"
    "elasticsearch/{version}/elasticsearch-{version}.zip"
)
ES_USER = "ffaudit-es"
# Java majors Elasticsearch 8.19 runs on, most preferred first.
SUPPORTED_JAVA = (17, 21)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ElasticsearchConfig:
    version: str = ES_VERSION
    port: int = 9200
    runtime_dir: Path = Path("/tmp/ffaudit-es")  # noqa: S108  (a dev server's scratch space)
    cache: Path = field(default_factory=lambda: cache_dir() / "elasticsearch")
    heap: str = "512m"
    java_home: Path | None = None
    timeout_s: float = 120.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.runtime_dir / f"elasticsearch-{self.version}"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "elasticsearch.pid"

    @property
    def console_log(self) -> Path:
        return self.runtime_dir / "console.log"


def healthy(config: ElasticsearchConfig, wait_s: float = 0.0) -> bool:
    """True when the node answers cluster health with yellow or green."""
    query = f"wait_for_status=yellow&timeout={max(wait_s, 0.0):.0f}s"
    url = f"{config.url}/_cluster/health?{query}"
    try:
        # A fixed http://127.0.0.1 URL: the scheme check S310 guards against cannot fail.
        with urllib.request.urlopen(url, timeout=wait_s + 5) as response:  # noqa: S310
            body = orjson.loads(response.read())
    except (OSError, ValueError):
        return False
    return body.get("status") in ("yellow", "green") and not body.get("timed_out", False)


def up(config: ElasticsearchConfig) -> str:
    """Start the node unless it is already healthy; return its URL."""
    with exclusive(config.runtime_dir):
        return _up(config)


def _up(config: ElasticsearchConfig) -> str:
    if healthy(config):
        log(f"elasticsearch already running at {config.url}")
        return config.url
    pid = read_pid(config.pid_file)
    if pid is None:
        home = install(config)
        java_home = config.java_home or find_java_home()
        pid = _start(config, home, java_home)
    else:
        log(f"elasticsearch (pid {pid}) is starting; waiting for it")
    started = time.monotonic()
    _wait_healthy(config, pid)
    elapsed = time.monotonic() - started
    log(f"elasticsearch {config.version} healthy at {config.url} ({elapsed:.1f} s)")
    return config.url


def down(config: ElasticsearchConfig) -> bool:
    """Stop the node `up` started; False when none was running."""
    with exclusive(config.runtime_dir):
        return _down(config)


def _down(config: ElasticsearchConfig) -> bool:
    pid = read_pid(config.pid_file)
    if pid is None:
        log("elasticsearch is not running (no live pid file)")
        config.pid_file.unlink(missing_ok=True)
        return False
    log(f"stopping elasticsearch (process group {pid})")
    stop_process_group(pid)
    config.pid_file.unlink(missing_ok=True)
    return True


def install(config: ElasticsearchConfig) -> Path:
    """Download (once), verify and extract the distribution; return its home directory."""
    archive = fetch_archive(config.version, config.cache)
    if (config.home / "bin" / "elasticsearch").is_file():
        return config.home
    config.runtime_dir.mkdir(parents=True, exist_ok=True)
    staging = config.runtime_dir / f".extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    log(f"extracting {archive.name} into {config.runtime_dir}")
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = Path(zf.extract(info, staging))
            # zipfile drops Unix modes; the launcher scripts and JDK tools need theirs.
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                target.chmod(mode)
    (inner,) = list(staging.iterdir())
    inner.rename(config.home)
    staging.rmdir()
    return config.home


def fetch_archive(version: str, cache: Path) -> Path:
    """The cached, checksum-verified zip, downloading it when missing or corrupt."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"elasticsearch-{version}.zip"
    checksum_file = cache / f"elasticsearch-{version}.zip.sha512"
    if archive.is_file() and checksum_file.is_file():
        if file_hex(archive, hashes.SHA512()) == checksum_file.read_text().strip():
            return archive
        log(f"cached {archive} does not match its checksum; downloading again")
    url = MAVEN_URL.format(version=version)
    expected = _download_text(url + ".sha512").split()[0].lower()
    if not re.fullmatch(r"[0-9a-f]{128}", expected):
        raise ProvisioningError(f"unexpected checksum file at {url}.sha512")
    partial = archive.with_suffix(f".zip.{os.getpid()}.part")
    log(f"downloading {url}")
    digest = hashes.Hash(hashes.SHA512())
    try:
        # MAVEN_URL is a constant https URL.
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:  # noqa: S310
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ProvisioningError(f"download of {url} failed: {exc}") from exc
    actual = digest.finalize().hex()
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise ProvisioningError(f"{url}: SHA-512 {actual} does not match published {expected}")
    partial.rename(archive)
    checksum_file.write_text(expected + "\n")
    log(f"verified SHA-512 and cached {archive}")
    return archive


def _download_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310  (constant https URL)
            return str(response.read().decode("ascii"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisioningError(f"cannot fetch {url}: {exc}") from exc


def java_major(java_home: Path) -> int | None:
    """The major version from a JDK's `release` file, None when it is not a JDK."""
    try:
        release = (java_home / "release").read_text()
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)', release, re.MULTILINE)
    if match is None or not (java_home / "bin" / "java").is_file():
        return None
    return int(match.group(1))


def find_java_home() -> Path:
    """A JDK Elasticsearch supports: $ES_JAVA_HOME, $JAVA_HOME, then /usr/lib/jvm/*."""
    candidates = [
        Path(os.environ[name]) for name in ("ES_JAVA_HOME", "JAVA_HOME") if name in os.environ
    ]
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += sorted(p for p in jvm.iterdir() if not p.is_symlink())
    found: dict[int, Path] = {}
    for candidate in candidates:
        major = java_major(candidate)
        if major is not None and major in SUPPORTED_JAVA:
            found.setdefault(major, candidate)
    for major in SUPPORTED_JAVA:
        if major in found:
            return found[major]
    wanted = " or ".join(str(m) for m in SUPPORTED_JAVA)
    raise ProvisioningError(f"no Java {wanted} found (set ES_JAVA_HOME or pass --java-home)")


def _start(config: ElasticsearchConfig, home: Path, java_home: Path) -> int:
    rt = config.runtime_dir
    for sub in ("data", "logs", "snapshots", "tmp"):
        (rt / sub).mkdir(parents=True, exist_ok=True)
    _write_config(config, home)
    user = None
    if is_root():
        user = ES_USER
        ensure_system_user(ES_USER, rt)
        chown_tree(rt, ES_USER)
    env = {
        "ES_JAVA_HOME": str(java_home),
        "ES_JAVA_OPTS": f"-Xms{config.heap} -Xmx{config.heap}",
        "ES_TMPDIR": str(rt / "tmp"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    argv = [
        "/usr/bin/env",
        *(f"{k}={v}" for k, v in env.items()),
        str(home / "bin" / "elasticsearch"),
    ]
    log(f"starting elasticsearch {config.version} on {config.url} with Java at {java_home}")
    with config.console_log.open("ab") as console:
        process = subprocess.Popen(
            as_user(user, argv),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            # Its own session: it outlives this command and `down` can signal the group.
            start_new_session=True,
        )
    config.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def _write_config(config: ElasticsearchConfig, home: Path) -> None:
    """Replace the shipped elasticsearch.yml (rewritten on every start: options may change)."""
    rt = config.runtime_dir
    settings = {
        "cluster.name": "ffaudit-dev",
        "node.name": "ffaudit-dev-1",
        "discovery.type": "single-node",
        "network.host": "127.0.0.1",
        "http.port": str(config.port),
        "path.data": str(rt / "data"),
        "path.logs": str(rt / "logs"),
        "path.repo": str(rt / "snapshots"),
        # CI disks vary in size and fill level; a watermark must not block test indices.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    if (home / "modules" / "x-pack-security").is_dir():
        # Recent integ-test-zips ship the security module, which would otherwise switch
        # itself on with TLS and a generated password; a loopback dev node needs neither.
        settings["xpack.security.enabled"] = "false"
    # JSON strings are valid YAML double-quoted scalars.
    lines = [f"{key}: {orjson.dumps(value).decode()}" for key, value in settings.items()]
    (home / "config" / "elasticsearch.yml").write_text("\n".join(lines) + "\n")


def _wait_healthy(config: ElasticsearchConfig, pid: int) -> None:
    deadline = time.monotonic() + config.timeout_s
    while time.monotonic() < deadline:
        if healthy(config, wait_s=1.0):
            return
        if not pid_alive(pid):
            config.pid_file.unlink(missing_ok=True)
            _report_failure(config, "elasticsearch exited during startup")
        time.sleep(1.0)
    log(f"elasticsearch not healthy after {config.timeout_s:.0f} s; stopping it")
    _down(config)
    _report_failure(config, f"elasticsearch did not become healthy in {config.timeout_s:.0f} s")


def _report_failure(config: ElasticsearchConfig, message: str) -> None:
    log(f"last 50 lines of {config.console_log}:\n{tail(config.console_log, 50)}")
    raise ProvisioningError(message)


def status(config: ElasticsearchConfig) -> bool:
    ok = healthy(config)
    pid = read_pid(config.pid_file)
    state = "healthy" if ok else "not healthy"
    log(f"elasticsearch at {config.url}: {state}" + (f" (pid {pid})" if pid else ""))
    return ok


__all__ = ["ES_VERSION", "ElasticsearchConfig", "down", "find_java_home", "install", "status", "up"]
