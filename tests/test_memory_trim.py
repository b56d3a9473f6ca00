"""audit.common.memory: freed heap memory goes back to the system; the collector stays cheap."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import ValidationError

from audit.app import create_app
from audit.cli import service as service_cli
from audit.common.memory import malloc_trim, trim_periodically, tune_collector
from audit.settings import AuditSettings
from tests.apptools import app_settings

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
MIB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@glibc
def test_trim_hands_back_free_memory_in_the_middle_of_the_heap() -> None:
    """Blocks freed between blocks still held: free() cannot shrink the heap past them
    (it only returns a free top), malloc_trim returns their pages."""
    trim = malloc_trim()
    assert trim is not None
    trim()
    # 64 KiB: past pymalloc's small objects, below malloc's mmap threshold: heap chunks.
    blocks = [bytearray(64 * 1024) for _ in range(1024)]
    kept, freed = blocks[1::2], blocks[0::2]
    del blocks
    freed.clear()
    before = rss()
    trim()
    after = rss()
    assert before - after >= 16 * MIB, f"{(before - after) / MIB:.1f} MiB returned"
    assert len(kept) == 512  # held to the end: the holes stay between live blocks


async def test_the_trim_loop_runs_off_the_event_loop_and_outlives_a_failure() -> None:
    calls: list[int] = []

    def trim() -> bool:
        calls.append(threading.get_ident())
        if len(calls) == 1:
            raise OSError("first call fails")
        return True

    task = asyncio.create_task(trim_periodically(0.01, trim))
    try:
        async with asyncio.timeout(5):
            while len(calls) < 3:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert threading.get_ident() not in calls  # a worker thread: the loop went on meanwhile


def test_the_service_trims_while_it_runs_unless_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def counting() -> bool:
        calls.append(time.monotonic())
        return True

    monkeypatch.setattr("audit.app.malloc_trim", lambda: counting)
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with TestClient(create_app(app_settings(tmp_path / "on", memory_trim_interval_s=0.05))):
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(calls) >= 2
    stopped = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped  # the loop ends with the service
    with TestClient(create_app(app_settings(tmp_path / "off", memory_trim_interval_s=0))):
        time.sleep(0.2)
    assert len(calls) == stopped


class _Node:
    """A container the cyclic collector tracks, which a weak reference can watch."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector() -> Iterator[None]:
    """The test changes process-wide collector state: put it back."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.collect()


@pytest.mark.usefixtures("collector")
def test_tuning_collects_garbage_then_freezes_the_live_objects() -> None:
    garbage, live = _Node(), _Node()
    gone, kept = weakref.ref(garbage), weakref.ref(live)
    del garbage  # an unreachable cycle: only the collector frees it
    tune_collector(12_345)
    assert gone() is None  # collected before the freeze, not frozen for good
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > 0
    del live
    gc.collect()
    assert kept() is not None  # frozen: full collections no longer walk it
    gc.unfreeze()
    gc.collect()
    assert kept() is None


@pytest.mark.parametrize(("threshold", "tuned"), [("10000", [10_000]), ("0", [])])
def test_serve_tunes_the_collector_once_the_app_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: str, tuned: list[int]
) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(service_cli, "tune_collector", lambda n: calls.append(("tune", n)))
    monkeypatch.setattr("uvicorn.run", lambda app, **_: calls.append(("run", app)))
    monkeypatch.setenv("FFAUDIT_DATABASE_URL", f"sqlite:///{tmp_path}/audit.db")
    monkeypatch.setenv("FFAUDIT_FORWARD_ENABLED", "false")
    monkeypatch.setenv("FFAUDIT_GC_GEN0_THRESHOLD", threshold)
    result = CliRunner().invoke(service_cli.serve, ["--no-migrate"])
    assert result.exit_code == 0, result.output
    assert [n for what, n in calls if what == "tune"] == tuned
    assert calls[-1][0] == "run"  # tuned before serving, with the app already built


@pytest.mark.parametrize("threshold", ["-1", "10000001", "99999999999999999999", "lots"])
def test_a_collector_threshold_out_of_range_is_refused_with_its_name(
    monkeypatch: pytest.MonkeyPatch, threshold: str
) -> None:
    monkeypatch.setenv("FFAUDIT_GC_GEN0_THRESHOLD", threshold)
    with pytest.raises(ValidationError, match="gc_gen0_threshold"):
        AuditSettings()
