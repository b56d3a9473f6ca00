"""Per-stream turns in arrival order, the place in line taken before the caller's first await.

Ingest verifies a call's records (hashing, the CPU-heavy part) as soon as the call arrives,
then works on each stream in turn: plan against the head, write, commit. With several calls
of one connection in flight (a pipelining forward sender), the next call's records are
verified while the last call's are being written. For that to keep the chain in order, the
calls must enter a stream's turn in the order they arrived, which an asyncio.Lock does not
promise (it queues tasks in the order they reach `acquire`, after awaits of their own).
A turn is reserved synchronously, so the order is the order of `take` calls.

Written by hand: asyncio has no lock whose queue position is taken without awaiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType


class Turns:
    """FIFO turns per key. Keys with no one waiting or working hold no memory."""

    def __init__(self) -> None:
        self._tails: dict[Hashable, asyncio.Future[None]] = {}

    def take(self, key: Hashable) -> Turn:
        """Join the line for `key` now; `async with` the result to wait for the turn."""
        before = self._tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        return Turn(self, key, before, mine)

    def _done(self, key: Hashable, mine: asyncio.Future[None]) -> None:
        if not mine.done():
            mine.set_result(None)
        if self._tails.get(key) is mine:
            del self._tails[key]


class Turn:
    def __init__(
        self,
        turns: Turns,
        key: Hashable,
        before: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
    ) -> None:
        self._turns = turns
        self._key = key
        self._before = before
        self._mine = mine
        self._released = False

    async def __aenter__(self) -> None:
        if self._before is not None and not self._before.done():
            try:
                # Shielded: a caller cancelled while waiting must not cancel the turn before it.
                await asyncio.shield(self._before)
            except BaseException:
                self.release()  # `async with` does not exit what it failed to enter
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """End the turn (idempotent). A turn left before its predecessor finished (its
        caller failed or was cancelled while waiting) passes on only when that one does:
        the next in line never overtakes an earlier call still at work."""
        if self._released:
            return
        self._released = True
        before = self._before
        if before is None or before.done():
            self._turns._done(self._key, self._mine)
        else:
            before.add_done_callback(lambda _: self._turns._done(self._key, self._mine))
