"""Per-session rate limiting of audit records, with every drop accounted for.

Why this exists: a misbehaving or hostile engine session can flood the audit log (log
flooding hides the interesting records and exhausts storage). Each session therefore gets a
token bucket, and records beyond its budget are dropped.

Why it sits *before* sequencing: the hash chain links record N to record N-1. If records were
dropped after they had been given sequence numbers, the chain would have holes that look
exactly like tampering. Dropping first keeps the chain contiguous: only admitted records are
ever sequenced.

Why drops are summarised instead of silently discarded: an audit log that loses records
without saying so is worthless as evidence. Every dropped record is counted in exactly one
`DropSummary` (per session, per time window, with per-action counts), which the caller emits
into the chain as a critical record. A verifier can then see that loss happened, how much,
and when, and the summary itself is protected by the chain like any other record.

Why some records bypass the limit: critical records (job completed/failed, security events,
checkpoints, the drop summaries themselves) are what an auditor needs most, so they are always
admitted. They still spend a token when one is available, so a critical flood slows the
non-critical records of the same session, but they never push the bucket below zero, so a
burst of critical records cannot lock a session out for longer than the refill of one bucket.

Time is supplied by the caller (`now`, seconds): event time in batch tools, which makes the
limiter deterministic and replayable, and `time.monotonic()` in live services. A clock that
goes backwards is treated as "no time elapsed": it never refunds tokens and never raises.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from audit.integrity.errors import UsageError

__all__ = ["Admission", "DropSummary", "SessionRateLimiter"]


@dataclass(frozen=True, slots=True)
class DropSummary:
    """What one session lost during one window: emitted into the chain in place of the drops."""

    session: str  # the session key exactly as passed to admit()
    window_start: float  # time of the first drop in this window (same clock as `now`)
    window_end: float  # window_start + window_s
    dropped: int  # how many records were dropped in the window
    actions: dict[str, int]  # action name -> dropped count (sorted by action name when built)


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one record, plus any summaries the caller must emit first."""

    admitted: bool
    # Summaries now ready to emit (any session), oldest first. The caller emits them BEFORE
    # the admitted record, so that the chain reads in the order things happened.
    due: tuple[DropSummary, ...]


@dataclass(slots=True)
class _Pending:
    """An open drop window of one session (mutable until it is closed)."""

    session: str
    window_start: float
    window_end: float
    dropped: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    # Set once the summary has been handed out (due by time, evicted, or flushed). The FIFO
    # entry of a closed window is skipped when it reaches the head: lazy deletion keeps
    # closing O(1) without searching the FIFO.
    closed: bool = False

    def to_summary(self) -> DropSummary:
        return DropSummary(
            session=self.session,
            window_start=self.window_start,
            window_end=self.window_end,
            dropped=self.dropped,
            actions=dict(sorted(self.actions.items())),
        )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float  # latest time seen for this session; never moves backwards
    pending: _Pending | None = None


class SessionRateLimiter:
    """Token bucket per session, with bounded memory and a summary for every drop.

    Thread-safe: one lock guards all state. admit() is O(1) amortised: no call scans the
    sessions; each window is queued, closed and handed out once.
    """

    def __init__(
        self,
        rate: float = 10.0,
        burst: int = 10,
        window_s: float = 1.0,
        max_sessions: int = 100_000,
    ) -> None:
        # `not (x > 0)` rather than `x <= 0` so that NaN is refused too.
        if not (rate > 0):
            raise UsageError(f"rate must be > 0 records per second, got {rate!r}")
        if burst < 1:
            raise UsageError(f"burst must be >= 1 record, got {burst!r}")
        if not (window_s > 0):
            raise UsageError(f"window_s must be > 0 seconds, got {window_s!r}")
        if max_sessions < 1:
            raise UsageError(f"max_sessions must be >= 1, got {max_sessions!r}")
        self._rate = float(rate)
        self._burst = burst
        self._window_s = float(window_s)
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        # Least recently used first, so eviction is popitem(last=False).
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # Open windows in the order they were opened. window_s is constant, so with a
        # non-decreasing clock this is also window_end order and the due ones are always at
        # the head: no scan of all sessions. (With a clock that jumps around, a window can
        # wait behind an older-opened one that ends later; it is then handed out late,
        # never lost and never twice.)
        self._open: deque[_Pending] = deque()
        # Summaries already closed (evicted, or closed by a later drop) but not handed out.
        self._ready: list[DropSummary] = []
        # Closed windows still sitting in self._open (lazy deletion). Compacted once they are
        # the majority, so a stalled clock plus eviction churn cannot grow the FIFO unbounded.
        self._stale = 0
        self._dropped_total = 0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def dropped_total(self) -> int:
        """Records dropped since construction (whether or not summarised yet)."""
        with self._lock:
            return self._dropped_total

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def admit(self, session: str, action: str, *, critical: bool, now: float) -> Admission:
        """Decide whether one record is kept, and collect the summaries due at `now`."""
        with self._lock:
            self._collect_due(now)
            bucket = self._touch(session, now)

            elapsed = now - bucket.last
            if elapsed > 0:  # a clock going backwards counts as no time at all
                bucket.tokens = min(float(self._burst), bucket.tokens + elapsed * self._rate)
                bucket.last = now

            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                admitted = True
            elif critical:
                admitted = True  # always kept, but never borrows against future tokens
            else:
                admitted = False
                self._record_drop(bucket, session, action, now)

            return Admission(admitted=admitted, due=self._take_ready())

    def flush(self, now: float | None = None) -> list[DropSummary]:
        """Summaries due at `now` (all pending ones when now is None, e.g. stream close)."""
        with self._lock:
            if now is None:
                while self._open:
                    self._close(self._open.popleft())
                self._stale = 0
            else:
                self._collect_due(now)
            return list(self._take_ready())

    # -- internals (callers hold self._lock) ------------------------------------------------

    def _touch(self, session: str, now: float) -> _Bucket:
        """The session's bucket, marked most recently used; created full if unknown."""
        bucket = self._buckets.get(session)
        if bucket is not None:
            self._buckets.move_to_end(session)
            return bucket
        if len(self._buckets) >= self._max_sessions:
            _, evicted = self._buckets.popitem(last=False)
            # Forgetting a session must not forget its drops: its summary is due now.
            if evicted.pending is not None:
                self._close(evicted.pending, still_queued=True)
        # A new (or returning, after eviction) session starts with a full bucket. The
        # bound on memory is worth more than the extra burst an evicted flooder regains.
        bucket = _Bucket(tokens=float(self._burst), last=now)
        self._buckets[session] = bucket
        return bucket

    def _record_drop(self, bucket: _Bucket, session: str, action: str, now: float) -> None:
        self._dropped_total += 1
        pending = bucket.pending
        if pending is not None and now >= pending.window_end:
            # Normally already collected by _collect_due; this covers a window stuck behind
            # a later-ending one in the FIFO.
            self._close(pending, still_queued=True)
            pending = None
        if pending is None:
            pending = _Pending(session=session, window_start=now, window_end=now + self._window_s)
            bucket.pending = pending
            self._open.append(pending)
        pending.dropped += 1
        pending.actions[action] = pending.actions.get(action, 0) + 1

    def _collect_due(self, now: float) -> None:
        """Close every window at the head of the FIFO that has ended by `now`."""
        while self._open:
            head = self._open[0]
            if head.closed:
                self._open.popleft()
                self._stale -= 1
            elif now >= head.window_end:
                self._open.popleft()
                self._close(head)
            else:
                break

    def _close(self, pending: _Pending, *, still_queued: bool = False) -> None:
        """Hand a window out exactly once.

        An open window is always in the FIFO; `still_queued` says the caller leaves it there
        (eviction, closing by a later drop), to be skipped when it reaches the head.
        """
        if pending.closed:
            return
        pending.closed = True
        bucket = self._buckets.get(pending.session)
        if bucket is not None and bucket.pending is pending:
            bucket.pending = None
        self._ready.append(pending.to_summary())
        if not still_queued:
            return
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._open):
            self._open = deque(p for p in self._open if not p.closed)
            self._stale = 0

    def _take_ready(self) -> tuple[DropSummary, ...]:
        if not self._ready:
            return ()
        # Stable sort: oldest window first, ties keep the order they were closed in.
        ready = sorted(self._ready, key=lambda s: (s.window_end, s.window_start))
        self._ready = []
        return tuple(ready)
