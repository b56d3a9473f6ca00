"""`write_atomic`, the one way a whole file is written and replaced (issue 15): the mode is
exactly the one asked and never broader, the content is the old or the new one, and the
rename is made durable by fsyncing the directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.common.files import partial_files, write_atomic
from engine.transport.spool import FsyncPolicy, Spool

MODES = [0o600, 0o644, 0o640, 0o400]


@pytest.fixture(params=[0o022, 0o077, 0o000], ids=["umask022", "umask077", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", MODES, ids=oct)
def test_the_file_has_exactly_the_mode_asked(tmp_path: Path, umask: int, mode: int) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"new", mode=mode)
    assert _mode(path) == mode
    path.chmod(0o600)
    write_atomic(path, b"newer", mode=mode)  # a replaced file does not keep the old mode
    assert _mode(path) == mode
    assert path.read_bytes() == b"newer"


def test_the_default_is_private(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"x")
    assert _mode(path) == 0o600


@pytest.mark.parametrize("mode", MODES, ids=oct)
def test_the_temporary_file_is_created_with_the_mode_and_never_broader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int, mode: int
) -> None:
    """No window: the temporary file is opened (exclusively) with `mode`, so its mode is
    within `mode` from its creation, and exactly `mode` before the rename."""
    path = tmp_path / "secret"
    real_open = os.open
    opened: list[tuple[str, int, int, int]] = []

    def spy(name: str, flags: int, create_mode: int = 0o777, **kw: int) -> int:
        fd = real_open(name, flags, create_mode, **kw)
        if os.path.dirname(name) == str(tmp_path):
            opened.append((name, flags, create_mode, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", spy)
    write_atomic(path, b"s3cret", mode=mode)
    monkeypatch.undo()
    ((name, flags, create_mode, created),) = opened
    assert Path(name).parent == tmp_path
    assert Path(name).name.startswith(".secret.")
    assert flags & os.O_CREAT
    assert flags & os.O_EXCL  # a name nobody else holds (nor a symlink planted there)
    assert create_mode == mode
    assert created & ~mode == 0  # at its creation, no permission beyond the asked ones
    assert _mode(path) == mode
    assert partial_files(path) == []


def test_an_existing_file_is_either_old_or_new_for_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "state"
    old, new = b"o" * (1 << 20), b"N" * ((1 << 20) + 4097)
    write_atomic(path, old)
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = path.read_bytes()
            seen.add(data if data in (old, new) else b"torn:" + data[:16])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            write_atomic(path, new if i % 2 == 0 else old)
    finally:
        done.set()
        reader.join()
    assert seen <= {old, new}
    assert path.read_bytes() == old


def test_a_failure_before_the_rename_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state"
    write_atomic(path, b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_process_killed_before_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    """A real crash (SIGKILL, no clean-up runs): the old content stays under the name, and
    the temporary file left beside it is what partial_files() finds."""
    path = tmp_path / "state"
    write_atomic(path, b"old")
    (tmp_path / ".state.notmine.part").write_bytes(b"x")  # not write_atomic's pattern
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from audit.common import files\n"
        "files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "files.write_atomic(Path(sys.argv[1]), b'new' * 1000)\n"
    )
    root = Path(__file__).parents[1]
    killed = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, check=False)
    assert killed.returncode == -9
    assert path.read_bytes() == b"old"
    (leftover,) = partial_files(path)
    assert leftover.read_bytes() == b"new" * 1000
    assert leftover.name.startswith(".state.")


def test_the_file_and_then_the_directory_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state"
    write_atomic(path, b"old")
    real_fsync = os.fsync
    calls: list[tuple[str, bytes]] = []

    def spy(fd: int) -> None:
        # What was fsynced, and what the name held at that moment.
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), path.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(path, b"new")
    monkeypatch.undo()
    (file_target, before), (dir_target, after) = calls
    assert Path(file_target).parent == tmp_path
    assert Path(file_target).name.startswith(".state.")  # the data, before the rename
    assert before == b"old"
    assert dir_target == str(tmp_path)  # the directory, once the rename is made
    assert after == b"new"


def test_durable_false_skips_the_fsyncs_not_the_atomicity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    write_atomic(tmp_path / "cursor", b"1 8\n", durable=False)
    monkeypatch.undo()
    assert calls == []
    assert (tmp_path / "cursor").read_bytes() == b"1 8\n"
    assert partial_files(tmp_path / "cursor") == []


def test_the_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f"
    write_atomic(path, b"x")
    assert path.read_bytes() == b"x"


def test_partial_files_finds_only_write_atomic_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    ours = tmp_path / ".out.png.ab_3xyz9.part"
    ours.write_bytes(b"half")
    for name in (
        ".out.png.abc.part",  # too short
        ".out.png.ABCDEFGH.part",  # not the alphabet
        ".out.png.abcdefgh.part.bak",
        ".other.png.abcdefgh.part",
        "out.png",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".out.png.zzzzzzzz.part").mkdir()  # not a regular file
    assert partial_files(path) == [ours]
    assert partial_files(tmp_path / "gone" / "out.png") == []


@pytest.mark.parametrize("policy", ["always", "never"])
def test_the_spool_cursor_is_written_by_write_atomic_and_its_leftovers_removed(
    tmp_path: Path, policy: FsyncPolicy
) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, max_bytes=1 << 20, fsync=policy) as spool:
        spool.append([b"one", b"two"])
        spool.ack(spool.unacked(10)[-1][0])
    cursor = directory / "acked"
    assert _mode(cursor) == 0o600
    leftover = directory / ".acked.abcd1234.part"  # a cursor write a crash interrupted
    leftover.write_bytes(b"9 9\n")
    with Spool(directory, max_bytes=1 << 20, fsync=policy) as spool:
        assert spool.unacked(10) == []
    assert not leftover.exists()
