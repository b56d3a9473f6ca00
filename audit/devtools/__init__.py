"""Local Elasticsearch and PostgreSQL for development and CI (`ffaudit dev ...`).

Both servers run as private, loopback-only instances under a runtime directory, started
detached and stopped through a pid file, so tests and CI exercise the real backends with
nothing but this package and the machine's package manager. Progress goes to stderr; the
one line on stdout is the URL to connect to, for `URL=$(ffaudit dev ... up)`.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audit.errors import FFAuditError


class ProvisioningError(FFAuditError):
    """A development server could not be installed, started or stopped."""

    exit_code = 2
    http_status = 500


def log(message: str) -> None:
    print(f"ffaudit dev: {message}", file=sys.stderr, flush=True)


@contextmanager
def exclusive(runtime_dir: Path) -> Iterator[None]:
    """Serialise `up`/`down` on one runtime directory (two test runs starting at once)."""
    runtime_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = runtime_dir.parent / f".{runtime_dir.name}.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_root() -> bool:
    return os.geteuid() == 0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ffaudit"


def ensure_system_user(name: str, home: Path) -> None:
    """Create a locked system account `name` unless it exists (root only)."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    log(f"creating system user {name}")
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            nologin,
            name,
        ]
    )


def chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def as_user(user: str | None, argv: list[str]) -> list[str]:
    """`argv` run as `user` when we are root (the servers refuse to run as root)."""
    if user is None or not is_root():
        return argv
    return ["runuser", "-u", user, "--", *argv]


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Output is captured so a failure can be reported with what the tool said.
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise ProvisioningError(f"{' '.join(argv)} failed ({result.returncode}): {detail}")
    return result


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_process_group(pgid: int, timeout_s: float = 60.0) -> None:
    """SIGTERM the whole group (launcher and server), then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.5)
    log(f"process group {pgid} ignored SIGTERM for {timeout_s:.0f} s; killing it")
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def kill_process_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL the whole group (a crash, for fault tests) and wait until none of it is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            raise ProvisioningError(f"process group {pgid} outlived SIGKILL for {timeout_s:.0f} s")
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members that are only zombies count as gone.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def tail(path: Path, lines: int = 50) -> str:
    try:
        with path.open("rb") as handle:
            content = handle.read()
    except OSError:
        return f"(no log at {path})"
    return b"\n".join(content.splitlines()[-lines:]).decode("utf-8", "replace")
