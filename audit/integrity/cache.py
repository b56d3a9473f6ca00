"""A bounded, thread-safe LRU cache whose entries go stale after a TTL.

The sealer caches subject pseudonyms so the vault is consulted once per subject per TTL,
not per record; the TTL bounds how long an erasure takes to reach a running producer. Stale
entries are kept (until evicted by size) so that a producer can keep sealing known subjects
while the vault is briefly unreachable.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Cached(Generic[V]):
    value: V
    fresh: bool


class TtlCache(Generic[K, V]):
    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("max_entries and ttl_s must be positive")
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> Cached[V] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            value, expires = item
            return Cached(value, self._clock() < expires)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = (value, self._clock() + self.ttl_s)
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
