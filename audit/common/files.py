"""Durable file operations shared by the service (archives, exports, keys) and the engine
(spool, results, jobs): every file that is written whole and replaced goes through
`write_atomic`, so each writer gets the same crash and permission guarantees."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

# Temporary names: `.<name>.<8 random characters of this alphabet>.part` beside the target
# (tempfile.mkstemp's alphabet and length, the names leftovers of earlier versions carry).
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM = 8
_PART = ".part"
_TRIES = 100


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable: the entry lives in the
    directory, so fsyncing the file alone does not survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one, never
    half of either: a temporary file in the same directory, fsync, rename, then fsync the
    directory (the rename lives there).

    The file gets exactly `mode`, and has no broader one at any moment: the temporary file
    is created with it (the umask can only narrow that) and set to it before a byte is
    written. The default is private: results, job records and keys are nobody else's.

    `durable=False` skips the fsyncs (the spool's "never" policy): still all-or-nothing if
    the process dies, but a power loss may lose the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # undo the umask: exactly `mode`, still empty
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def partial_files(path: Path) -> list[Path]:
    """The temporary files `write_atomic(path, …)` left behind when the process died
    mid-write: only that name pattern, and only regular files (nothing else is ours)."""
    ours = re.compile(
        re.escape(f".{path.name}.") + f"[{_ALPHABET}]{{{_RANDOM}}}" + re.escape(_PART)
    )
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # the directory is gone (or unreadable): nothing of ours to find
        return []
    return [e for e in entries if ours.fullmatch(e.name) and e.is_file() and not e.is_symlink()]


def _create(path: Path, mode: int) -> tuple[int, str]:
    # O_EXCL (which also refuses a symlink) makes the name ours alone. Not mkstemp: it
    # cannot take a mode, and its 0o600 is broader than, say, a 0o400 key's.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TRIES):
        random = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM))
        tmp = os.path.join(path.parent, f".{path.name}.{random}{_PART}")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path} after {_TRIES} tries")
