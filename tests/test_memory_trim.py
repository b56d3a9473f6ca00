"""audit.common.memory: freed heap memory goes back to the system."""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.common.memory import malloc_trim, trim_periodically
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
