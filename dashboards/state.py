"""What the console keeps between requests: the integrity badge's short-lived cache and the
explorer's per-caller rate bound, both in one typed object per app.

`mount(app)` (dashboards.router) binds one `ConsoleState` per app as the `Console`
dependency the views name (FastAPI's dependency overrides: `app.state` holds the service's
container alone): nothing lives in module globals, so two apps in one process (tests, a
replica per worker) never share a budget or a cached verdict.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Annotated, Generic, TypeVar

from fastapi import Depends

from audit.errors import TooManyRequestsError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Clock = Callable[[], float]

# The badge is polled every 30 s by every open page: a verdict up to this old is shown
# rather than recomputing every stream's overview per page and poll. The integrity page
# itself always computes afresh.
BADGE_TTL_S = 10.0
# Explorer loads per caller: well above a person paging and filtering, low enough that one
# token in a script cannot keep the event store busy with aggregations over every record.
EXPLORER_RATE_PER_S = 3.0
EXPLORER_BURST = 60
# Callers remembered at most (least recently seen forgotten first): bounds the memory a
# stream of distinct tokens can take; a forgotten caller starts with a full bucket.
_MAX_KEYS = 10_000


class RateLimited(TooManyRequestsError):
    """Over the caller's budget of explorer loads; `retry_after_s` until the next one."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TtlCache(Generic[K, V]):
    """Values computed at most once per `ttl_s` per key; concurrent misses of one key share
    one computation (the first caller's), so a burst of pages costs one overview."""

    def __init__(self, ttl_s: float, *, clock: Clock = time.monotonic, size: int = _MAX_KEYS):
        if ttl_s <= 0 or size < 1:
            raise ValueError("a cache needs a positive TTL and size")
        self.ttl_s = ttl_s
        self._clock = clock
        self._size = size
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._locks: dict[K, asyncio.Lock] = {}

    def _fresh(self, key: K) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] >= self.ttl_s:
            return False, None
        return True, entry[1]

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        hit, value = self._fresh(key)
        if hit:
            return value  # type: ignore[return-value]  # V itself may be None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit, value = self._fresh(key)  # computed by the caller we waited for
            if hit:
                return value  # type: ignore[return-value]
            result = await compute()
            self._entries[key] = (self._clock(), result)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                old, _ = self._entries.popitem(last=False)
                if old in self._locks and not self._locks[old].locked():
                    del self._locks[old]
            return result

    def clear(self) -> None:
        self._entries.clear()


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per key: `burst` tokens, refilled at `rate_per_s`."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        size: int = _MAX_KEYS,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or size < 1:
            raise ValueError("a token bucket needs a positive rate, burst and size")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._size = size
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token of `key`'s bucket: 0.0 when there was one, else the seconds until
        one is there (nothing is spent then)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self._size:
                self._buckets.popitem(last=False)
        # A clock that went back refunds nothing.
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
        bucket.at = now
        self._buckets.move_to_end(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


@dataclass(frozen=True, slots=True)
class BadgeVerdict:
    """What the badge shows of a tenant: the worst stream's health and first reason (no
    stream at all: `stream` None), and how many streams there are."""

    health: str  # green | amber | red
    stream: str | None
    reason: str
    count: int


@dataclass(slots=True)
class ConsoleState:
    badges: TtlCache[str, BadgeVerdict] = field(
        default_factory=lambda: TtlCache[str, BadgeVerdict](BADGE_TTL_S)
    )
    explorer: TokenBuckets = field(
        default_factory=lambda: TokenBuckets(EXPLORER_RATE_PER_S, EXPLORER_BURST)
    )

    def admit_explorer(self, tenant: str, subject: str) -> None:
        """Spend one of the caller's explorer loads, or refuse with 429 (the console's own
        error page) and when to come back."""
        wait = self.explorer.take(f"{tenant}\n{subject}")
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                f"too many event searches from {subject}: try again in {seconds} s", seconds
            )


def console_state() -> ConsoleState:
    """The console's state of the app serving the request: `mount` binds each app's own
    instance in place of this function (FastAPI's dependency overrides), so the state is
    per app, as the services are, without a second attribute on `app.state`."""
    raise RuntimeError("the console is not mounted on this app (dashboards.router.mount)")


Console = Annotated[ConsoleState, Depends(console_state)]
