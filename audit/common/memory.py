"""Process memory: hand what a burst freed back to the system; keep the collector cheap.

glibc's malloc keeps what it frees in its arenas for reuse, returning only a free top of
the heap: after a burst (a backlog of decoded forward messages, a re-verification pass)
the process's RSS stays at the burst's high-water mark, though the memory is free. For a
container under a memory limit, and for anyone watching RSS for leaks, that looks like
growth. `malloc_trim(0)` releases the free pages of every arena, middles of the heap
included. It is one libc call that no maintained Python package wraps, hence ctypes.

Measured in the soak (12-05, 2 replicas, 2,684 records/s): a trim every 15 s returned
10-20 MiB at steady load and 20-60 MiB after a backlog, in 1-60 ms a call; after the run
each replica's RSS was back below its level at the end of the warm-up.

The cyclic garbage collector is the other cost. After its imports the service holds ~160k
tracked objects (FastAPI, SQLAlchemy, the Elasticsearch client) that never become garbage,
and ingest allocates containers for every record: with CPython's default thresholds
(a young collection every 700 allocations) 20k records made ~510 young collections, ~46
middle ones and ~5 full ones, each full one walking those 160k objects and every record in
flight. Profiled with perf on bench_ingest (12-05), the collector took ~20% of the ingest
process's CPU. `tune_collector` freezes what exists once the service is built (`gc.freeze`
moves it out of every later collection, as long-lived servers do before serving) and makes
the young generation larger: the same records then cost ~18% less CPU.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Trim = Callable[[], bool]


def malloc_trim() -> Trim | None:
    """glibc's `malloc_trim(0)`: True when it released memory. None where the C library
    has none (musl, macOS): there is nothing to call, and nothing retained the same way."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols the process already has
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: bool(trim(0))


async def trim_periodically(interval_s: float, trim: Trim) -> None:
    """Trim every `interval_s` until cancelled. The call walks every arena under its lock
    (tens of milliseconds after a burst): it runs in a worker thread, since ctypes
    releases the GIL, so the event loop goes on meanwhile."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(trim)
        except Exception:  # keep trimming; a failure here costs memory, not records
            log.exception("malloc_trim failed")


def tune_collector(gen0_threshold: int) -> None:
    """Freeze every object alive now and collect generation 0 every `gen0_threshold`
    allocations. For a process's entry point, once its long-lived objects exist: what is
    frozen is never collected, so the garbage made so far is collected first."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
