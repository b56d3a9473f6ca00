"""A private single-node Elasticsearch from Maven Central's integ-test-zip distribution.

The integ-test-zip is the server with a minimal set of modules and no bundled JDK: it runs
on the machine's Java 17. Since 8.x it ships the security module, which this node switches
off (plain http on loopback) instead of letting it generate TLS certificates and passwords.
The archive is verified against the SHA-512 Maven Central publishes and cached, so only the
first `up` on a machine downloads anything. Elasticsearch refuses to run as root; as root
we run it as a dedicated system user.

`nodes` > 1 makes a cluster of that many nodes instead, every one master-eligible and a data
node, on consecutive http ports from `port` and transport ports from `transport_port`
(`port + 100` unless given), each with its own directory `<runtime>/node-<n>` (data, logs,
temporary files, config, pid file) and one shared installation and snapshot directory.
`up` waits for green; `stop_node`, `kill_node` (SIGKILL, a crash) and `start_node` act on one
node, for fault tests. The layout is recorded in `<runtime>/cluster.json` so that later
commands (`down`, `node stop 2`) act on what `up` started (`recorded`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
    kill_process_group,
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


# The heap of a node when none is given: a cluster's nodes share one machine.
SINGLE_NODE_HEAP = "512m"
CLUSTER_NODE_HEAP = "256m"
LAYOUT_FILE = "cluster.json"


@dataclass(frozen=True)
class Node:
    """One node of a configuration: where it listens and keeps its files."""

    number: int  # 1-based, as in its name and in `ffaudit dev elasticsearch node stop 2`
    name: str
    http_port: int
    transport_port: int | None  # None: Elasticsearch's own choice (single node)
    dir: Path
    config_dir: Path
    pid_file: Path
    console_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass(frozen=True)
class ElasticsearchConfig:
    version: str = ES_VERSION
    port: int = 9200
    runtime_dir: Path = Path("/tmp/ffaudit-es")  # noqa: S108  (a dev server's scratch space)
    cache: Path = field(default_factory=lambda: cache_dir() / "elasticsearch")
    heap: str | None = None  # None: SINGLE_NODE_HEAP, or CLUSTER_NODE_HEAP per cluster node
    java_home: Path | None = None
    timeout_s: float = 120.0
    nodes: int = 1
    transport_port: int | None = None  # the first cluster node's; None: port + 100

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ProvisioningError("an Elasticsearch cluster needs at least one node")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        """Every node's http URL, the first node's (`url`) first."""
        return [node.url for node in self.all_nodes]

    @property
    def jvm_heap(self) -> str:
        if self.heap is not None:
            return self.heap
        return SINGLE_NODE_HEAP if self.nodes == 1 else CLUSTER_NODE_HEAP

    @property
    def cluster_name(self) -> str:
        # A cluster's own name: its nodes can never join another dev cluster on this machine.
        return "ffaudit-dev" if self.nodes == 1 else f"ffaudit-dev-{self.port}"

    @property
    def home(self) -> Path:
        return self.runtime_dir / f"elasticsearch-{self.version}"

    @property
    def pid_file(self) -> Path:
        return self.node(1).pid_file

    @property
    def console_log(self) -> Path:
        return self.node(1).console_log

    @property
    def all_nodes(self) -> list[Node]:
        return [self.node(number) for number in range(1, self.nodes + 1)]

    def node(self, number: int) -> Node:
        if not 1 <= number <= self.nodes:
            raise ProvisioningError(f"no node {number}: the configuration has {self.nodes}")
        if self.nodes == 1:
            # The single node's layout, as it always was: directly under the runtime dir.
            return Node(
                number=1,
                name="ffaudit-dev-1",
                http_port=self.port,
                transport_port=None,
                dir=self.runtime_dir,
                config_dir=self.home / "config",
                pid_file=self.runtime_dir / "elasticsearch.pid",
                console_log=self.runtime_dir / "console.log",
            )
        base = self.runtime_dir / f"node-{number}"
        first_transport = self.port + 100 if self.transport_port is None else self.transport_port
        return Node(
            number=number,
            name=f"ffaudit-dev-{number}",
            http_port=self.port + number - 1,
            transport_port=first_transport + number - 1,
            dir=base,
            config_dir=base / "config",
            pid_file=base / "elasticsearch.pid",
            console_log=base / "console.log",
        )


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


def cluster_health(
    config: ElasticsearchConfig,
    *,
    wait_for_status: str | None = None,
    wait_for_nodes: str | None = None,
    wait_s: float = 0.0,
    urls: list[str] | None = None,
) -> dict[str, Any] | None:
    """`_cluster/health` from the first of `urls` (default: every node's) that answers it
    and whose wait did not time out, else the last answer that timed out; None when no node
    answers (all down, or none has found a master)."""
    params = {"timeout": f"{max(wait_s, 0.0):.0f}s"}
    if wait_for_status is not None:
        params["wait_for_status"] = wait_for_status
    if wait_for_nodes is not None:
        params["wait_for_nodes"] = wait_for_nodes
    query = urllib.parse.urlencode(params)
    answer: dict[str, Any] | None = None
    for base in config.urls if urls is None else urls:
        body = _get_json(f"{base}/_cluster/health?{query}", timeout_s=wait_s + 5)
        if body is None or "status" not in body:
            continue
        if not body.get("timed_out", False):
            return body
        answer = body
    return answer


def _get_json(url: str, timeout_s: float) -> dict[str, Any] | None:
    """The JSON body of a GET (also of a 408: a health wait that timed out); None when the
    node does not answer or answers an error (503 before it has found a master)."""
    try:
        # Only http://127.0.0.1 URLs of our own nodes reach here.
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 408:
            return None
        try:
            body = orjson.loads(exc.read())
        except (OSError, ValueError):
            return None
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def up(config: ElasticsearchConfig) -> str:
    """Start the node (every node of a cluster) unless it is already healthy; return the
    (first node's) URL. A single node is waited for until yellow or green, a cluster until
    every node has joined and it is green."""
    with exclusive(config.runtime_dir):
        if config.nodes > 1:
            return _up_cluster(config)
        return _up(config)


def _up(config: ElasticsearchConfig) -> str:
    if healthy(config):
        log(f"elasticsearch already running at {config.url}")
        return config.url
    pid = read_pid(config.pid_file)
    if pid is None:
        home = install(config)
        java_home = config.java_home or find_java_home()
        pid = _start(config, config.node(1), home, java_home)
    else:
        log(f"elasticsearch (pid {pid}) is starting; waiting for it")
    started = time.monotonic()
    _wait_healthy(config, pid)
    elapsed = time.monotonic() - started
    log(f"elasticsearch {config.version} healthy at {config.url} ({elapsed:.1f} s)")
    return config.url


def _up_cluster(config: ElasticsearchConfig) -> str:
    _refuse_other_layout(config)
    pids = {node.number: read_pid(node.pid_file) for node in config.all_nodes}
    if all(pids.values()):
        health = cluster_health(config, wait_for_nodes=str(config.nodes))
        if health is not None and health["status"] == "green" and not health["timed_out"]:
            log(f"elasticsearch cluster of {config.nodes} nodes already running (green)")
            return config.url
    for node in config.all_nodes:
        if pids[node.number] is None:
            _check_ports_free(node)
    home = install(config)
    java_home = config.java_home or find_java_home()
    _record_layout(config)
    started = time.monotonic()
    launched: dict[int, int] = {}
    for node in config.all_nodes:
        pid = pids[node.number]
        if pid is None:
            launched[node.number] = _start(config, node, home, java_home)
        else:
            log(f"{node.name} (pid {pid}) is running")
    _wait_cluster(
        config,
        {**{n: p for n, p in pids.items() if p is not None}, **launched},
        launched,
        wait_for_status="green",
        wait_for_nodes=str(config.nodes),
    )
    elapsed = time.monotonic() - started
    log(
        f"elasticsearch {config.version}: {config.nodes} nodes green at "
        f"{', '.join(config.urls)} ({elapsed:.1f} s)"
    )
    return config.url


def _refuse_other_layout(config: ElasticsearchConfig) -> None:
    """A runtime directory holds one deployment: a cluster does not start beside a single
    node (or another cluster layout) that still runs from it."""
    others: list[ElasticsearchConfig] = [replace(config, nodes=1)]
    previous = recorded(replace(config, nodes=1))
    if previous.nodes > 1:
        others.append(previous)
    for other in others:
        if _ports(other) == _ports(config):
            continue
        running = [node.name for node in other.all_nodes if read_pid(node.pid_file)]
        if running:
            raise ProvisioningError(
                f"{config.runtime_dir} runs another Elasticsearch layout ({other.nodes} "
                f"node(s) from port {other.port}); `down` it or use another --runtime-dir"
            )


def _ports(config: ElasticsearchConfig) -> list[tuple[int, int | None]]:
    return [(node.http_port, node.transport_port) for node in config.all_nodes]


def recorded(config: ElasticsearchConfig) -> ElasticsearchConfig:
    """`config` with the cluster layout `up` recorded in its runtime directory (node count,
    ports, heap, version), so `down` or `node stop 2` act on what was started; `config`
    itself when none is recorded (a single node)."""
    try:
        layout = orjson.loads((config.runtime_dir / LAYOUT_FILE).read_bytes())
    except (OSError, ValueError):
        return config
    return replace(
        config,
        nodes=int(layout["nodes"]),
        port=int(layout["port"]),
        transport_port=int(layout["transport_port"]),
        heap=str(layout["heap"]),
        version=str(layout["version"]),
    )


def _record_layout(config: ElasticsearchConfig) -> None:
    layout = {
        "nodes": config.nodes,
        "port": config.port,
        "transport_port": config.node(1).transport_port,
        "heap": config.jvm_heap,
        "version": config.version,
    }
    config.runtime_dir.mkdir(parents=True, exist_ok=True)
    (config.runtime_dir / LAYOUT_FILE).write_bytes(orjson.dumps(layout) + b"\n")


def _check_ports_free(node: Node) -> None:
    for port in (node.http_port, node.transport_port):
        if port is None:
            continue
        with socket.socket() as probe:
            # As Elasticsearch binds: a port only in TIME_WAIT (a node just killed) is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise ProvisioningError(
                    f"port {port} of {node.name} is in use ({exc.strerror}): another "
                    "Elasticsearch? choose other ports (--port, --transport-port)"
                ) from exc


def down(config: ElasticsearchConfig) -> bool:
    """Stop the node (every node of a cluster) `up` started; False when none was running."""
    with exclusive(config.runtime_dir):
        if config.nodes > 1:
            return _down_cluster(config)
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


def _down_cluster(config: ElasticsearchConfig) -> bool:
    running = {node: read_pid(node.pid_file) for node in config.all_nodes}
    live = {node: pid for node, pid in running.items() if pid is not None}
    if not live:
        log("no node of the elasticsearch cluster is running")
    # All at once (a node stopping alone would first watch its peers go).
    for node, pid in live.items():
        log(f"stopping {node.name} (process group {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    for pid in live.values():
        stop_process_group(pid)
    for node in running:
        node.pid_file.unlink(missing_ok=True)
    return bool(live)


def node_pid(config: ElasticsearchConfig, number: int) -> int | None:
    """The process group of node `number` when it runs (its launcher's pid)."""
    return read_pid(config.node(number).pid_file)


def kill_node(config: ElasticsearchConfig, number: int, timeout_s: float = 30.0) -> int | None:
    """SIGKILL node `number`'s whole process group (a crash: no clean shutdown, no goodbye
    to the cluster) and wait until it is gone; its pid, None when it was not running."""
    with exclusive(config.runtime_dir):
        node = config.node(number)
        pid = read_pid(node.pid_file)
        if pid is None:
            log(f"{node.name} is not running")
            return None
        log(f"killing {node.name} (SIGKILL to process group {pid})")
        kill_process_group(pid, timeout_s)
        node.pid_file.unlink(missing_ok=True)
        return pid


def stop_node(config: ElasticsearchConfig, number: int) -> bool:
    """Stop node `number` cleanly (SIGTERM); False when it was not running."""
    with exclusive(config.runtime_dir):
        node = config.node(number)
        pid = read_pid(node.pid_file)
        if pid is None:
            log(f"{node.name} is not running")
            return False
        log(f"stopping {node.name} (process group {pid})")
        stop_process_group(pid)
        node.pid_file.unlink(missing_ok=True)
        return True


def start_node(config: ElasticsearchConfig, number: int, *, wait: bool = True) -> str:
    """Start node `number` again (unless it runs) with the configuration it had; with `wait`,
    until it has joined the cluster (every live node counted; not until green: its shards
    recover after). Returns its URL. A cluster none of whose other nodes runs has no quorum
    to join: restart it whole with `up`."""
    with exclusive(config.runtime_dir):
        node = config.node(number)
        pid = read_pid(node.pid_file)
        if pid is not None:
            log(f"{node.name} (pid {pid}) is running")
            launched: dict[int, int] = {}
        else:
            home = config.home if (config.home / "bin" / "elasticsearch").is_file() else None
            home = home or install(config)
            java_home = config.java_home or find_java_home()
            if config.nodes > 1:
                _check_ports_free(node)
            pid = _start(config, node, home, java_home)
            launched = {number: pid}
        if wait:
            started = time.monotonic()
            live = sum(1 for other in config.all_nodes if read_pid(other.pid_file) is not None)
            _wait_cluster(
                config, {number: pid}, launched, wait_for_nodes=f">={live}", urls=[node.url]
            )
            log(f"{node.name} joined at {node.url} ({time.monotonic() - started:.1f} s)")
        return node.url


def wait_for_status(
    config: ElasticsearchConfig, status: str = "green", timeout_s: float | None = None
) -> dict[str, Any]:
    """Wait until the cluster (every configured node joined) is at least `status`; its
    health. Raises ProvisioningError when it is not within `timeout_s` (config's)."""
    budget = config.timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + budget
    health: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        health = cluster_health(
            config, wait_for_status=status, wait_for_nodes=str(config.nodes), wait_s=1.0
        )
        if health is not None and not health["timed_out"]:
            return health
        time.sleep(0.2)
    raise ProvisioningError(f"elasticsearch not {status} after {budget:.0f} s: {health}")


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


def _start(config: ElasticsearchConfig, node: Node, home: Path, java_home: Path) -> int:
    rt = config.runtime_dir
    for sub in (node.dir / "data", node.dir / "logs", node.dir / "tmp", rt / "snapshots"):
        sub.mkdir(parents=True, exist_ok=True)
    if node.config_dir != home / "config" and not (node.config_dir / "jvm.options").is_file():
        # A cluster node's own config directory (its elasticsearch.yml, its keystore).
        shutil.copytree(
            home / "config",
            node.config_dir,
            ignore=shutil.ignore_patterns("elasticsearch.keystore"),
            dirs_exist_ok=True,
        )
    _write_config(config, node)
    user = None
    if is_root():
        user = ES_USER
        ensure_system_user(ES_USER, rt)
        chown_tree(rt, ES_USER)
    heap = config.jvm_heap
    java_opts = f"-Xms{heap} -Xmx{heap}"
    if config.nodes > 1:
        # The client compiler only: a cluster's JVMs share a small machine's cores, and start
        # (or restart, in a fault test) in about 60% of the time; dev loads need no C2.
        java_opts += " -XX:TieredStopAtLevel=1"
    env = {
        "ES_JAVA_HOME": str(java_home),
        "ES_JAVA_OPTS": java_opts,
        "ES_PATH_CONF": str(node.config_dir),
        "ES_TMPDIR": str(node.dir / "tmp"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    argv = [
        "/usr/bin/env",
        *(f"{k}={v}" for k, v in env.items()),
        str(home / "bin" / "elasticsearch"),
    ]
    where = node.url if config.nodes == 1 else f"{node.url} (transport {node.transport_port})"
    log(
        f"starting elasticsearch {config.version} {node.name} on {where}, heap {heap}, "
        f"Java at {java_home}"
    )
    with node.console_log.open("ab") as console:
        process = subprocess.Popen(
            as_user(user, argv),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            # Its own session: it outlives this command and `down` can signal the group.
            start_new_session=True,
        )
    node.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def _write_config(config: ElasticsearchConfig, node: Node) -> None:
    """Replace the node's elasticsearch.yml (rewritten on every start: options may change)."""
    settings: dict[str, str | list[str]] = {
        "cluster.name": config.cluster_name,
        "node.name": node.name,
    }
    if config.nodes == 1:
        settings["discovery.type"] = "single-node"
    else:
        peers = config.all_nodes
        settings["discovery.seed_hosts"] = [f"127.0.0.1:{n.transport_port}" for n in peers]
        if not any((node.dir / "data").iterdir()):
            # Bootstrapping a new cluster only: a node that has joined one warns about it.
            settings["cluster.initial_master_nodes"] = [n.name for n in peers]
        settings["transport.port"] = str(node.transport_port)
    settings |= {
        "network.host": "127.0.0.1",
        "http.port": str(node.http_port),
        "path.data": str(node.dir / "data"),
        "path.logs": str(node.dir / "logs"),
        # One snapshot directory for every node: an fs repository must be shared.
        "path.repo": str(config.runtime_dir / "snapshots"),
        # CI disks vary in size and fill level; a watermark must not block test indices.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    if (config.home / "modules" / "x-pack-security").is_dir():
        # Recent integ-test-zips ship the security module, which would otherwise switch
        # itself on with TLS and a generated password; a loopback dev node needs neither.
        settings["xpack.security.enabled"] = "false"
    # JSON strings (and arrays of them) are valid YAML flow scalars (and sequences).
    lines = [f"{key}: {orjson.dumps(value).decode()}" for key, value in settings.items()]
    (node.config_dir / "elasticsearch.yml").write_text("\n".join(lines) + "\n")


def _wait_healthy(config: ElasticsearchConfig, pid: int) -> None:
    deadline = time.monotonic() + config.timeout_s
    while time.monotonic() < deadline:
        if healthy(config, wait_s=1.0):
            return
        if not pid_alive(pid):
            config.pid_file.unlink(missing_ok=True)
            _report_failure(config.node(1), "elasticsearch exited during startup")
        time.sleep(1.0)
    log(f"elasticsearch not healthy after {config.timeout_s:.0f} s; stopping it")
    _down(config)
    _report_failure(
        config.node(1), f"elasticsearch did not become healthy in {config.timeout_s:.0f} s"
    )


def _wait_cluster(
    config: ElasticsearchConfig,
    pids: dict[int, int],
    launched: dict[int, int],
    *,
    wait_for_status: str | None = None,
    wait_for_nodes: str,
    urls: list[str] | None = None,
) -> None:
    """Until cluster health (asked of `urls`, default every node) answers with the wanted
    status and node count; a node of `pids` that exits meanwhile fails it, and on timeout
    the nodes this call `launched` are stopped again."""
    deadline = time.monotonic() + config.timeout_s
    while time.monotonic() < deadline:
        health = cluster_health(
            config,
            wait_for_status=wait_for_status,
            wait_for_nodes=wait_for_nodes,
            wait_s=1.0,
            urls=urls,
        )
        if health is not None and not health["timed_out"]:
            return
        for number, pid in pids.items():
            if not pid_alive(pid):
                node = config.node(number)
                node.pid_file.unlink(missing_ok=True)
                _report_failure(node, f"elasticsearch {node.name} exited during startup")
        time.sleep(0.5)
    wanted = f"{wait_for_nodes} node(s)" + (f", {wait_for_status}" if wait_for_status else "")
    log(f"elasticsearch not at {wanted} after {config.timeout_s:.0f} s; stopping what started")
    for number, pid in launched.items():
        stop_process_group(pid)
        config.node(number).pid_file.unlink(missing_ok=True)
    _report_failure(
        config.node(next(iter(pids))),
        f"elasticsearch did not reach {wanted} in {config.timeout_s:.0f} s",
    )


def _report_failure(node: Node, message: str) -> None:
    log(f"last 50 lines of {node.console_log}:\n{tail(node.console_log, 50)}")
    raise ProvisioningError(message)


def status(config: ElasticsearchConfig) -> bool:
    if config.nodes == 1:
        ok = healthy(config)
        pid = read_pid(config.pid_file)
        state = "healthy" if ok else "not healthy"
        log(f"elasticsearch at {config.url}: {state}" + (f" (pid {pid})" if pid else ""))
        return ok
    for node in config.all_nodes:
        pid = read_pid(node.pid_file)
        log(f"{node.name} at {node.url}: " + (f"running (pid {pid})" if pid else "not running"))
    health = cluster_health(config)
    if health is None:
        log("no node answers cluster health")
        return False
    log(
        f"cluster {health['cluster_name']}: {health['status']}, {health['number_of_nodes']} "
        f"of {config.nodes} nodes, {health['unassigned_shards']} unassigned shard(s)"
    )
    return bool(
        health["status"] in ("yellow", "green") and health["number_of_nodes"] == config.nodes
    )


__all__ = [
    "ES_VERSION",
    "ElasticsearchConfig",
    "Node",
    "cluster_health",
    "down",
    "find_java_home",
    "install",
    "kill_node",
    "node_pid",
    "recorded",
    "start_node",
    "status",
    "stop_node",
    "up",
    "wait_for_status",
]
