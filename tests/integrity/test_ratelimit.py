"""Tests for the per-session rate limiter that runs before audit records are sequenced."""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import UsageError
from audit.integrity.ratelimit import Admission, DropSummary, SessionRateLimiter

# Timestamps in these tests are multiples of a power of two (and rates are chosen so that
# rate * dt is one too), so the bucket arithmetic is exact in binary floating point and the
# expected counts follow from the bucket maths with no rounding at the token == 1 boundary.


def _check_summaries_match_drops(
    summaries: list[DropSummary], drops: list[tuple[str, float, str]]
) -> None:
    """Every drop lies in exactly one summary of its session, and the counts agree."""
    by_session: dict[str, list[DropSummary]] = defaultdict(list)
    for s in summaries:
        assert s.window_end > s.window_start
        assert sum(s.actions.values()) == s.dropped
        assert list(s.actions) == sorted(s.actions)
        by_session[s.session].append(s)
    for windows in by_session.values():
        windows.sort(key=lambda s: s.window_start)
        for earlier, later in itertools.pairwise(windows):
            assert earlier.window_end <= later.window_start  # windows never overlap
    counted: dict[int, Counter[str]] = defaultdict(Counter)
    for session, t, action in drops:
        homes = [s for s in by_session[session] if s.window_start <= t < s.window_end]
        assert len(homes) == 1, (session, t, homes)
        counted[id(homes[0])][action] += 1
    for s in summaries:
        assert counted[id(s)] == Counter(s.actions)
    assert sum(s.dropped for s in summaries) == len(drops)


def test_flood_admits_exactly_burst_plus_refill() -> None:
    limiter = SessionRateLimiter(rate=10.0, burst=10, window_s=1.0)
    dt = 1 / 128  # ~100 records/s (128/s), exact in binary
    n = 3 * 128  # 3 s of event time
    actions = ["swap.frame", "swap.start", "model.load"]
    admitted = 0
    drops: list[tuple[str, float, str]] = []
    summaries: list[DropSummary] = []
    for i in range(n):
        now = i * dt
        action = actions[i % len(actions)]
        result = limiter.admit("s1", action, critical=False, now=now)
        summaries.extend(result.due)
        if result.admitted:
            admitted += 1
        else:
            drops.append(("s1", now, action))
    summaries.extend(limiter.flush())

    # The bucket never refills to capacity during the flood, so admissions are the initial
    # burst plus every whole token refilled up to the last record: 10 + floor(10 * 383/128).
    assert admitted == 10 + math.floor(10.0 * (n - 1) * dt) == 39
    assert len(drops) == n - admitted
    assert limiter.dropped_total == len(drops)
    assert len(summaries) == 3  # drops start at 10/128 s and run to 3 s: three 1 s windows
    _check_summaries_match_drops(summaries, drops)
    assert limiter.flush() == []


def test_critical_records_always_admitted_during_flood() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=4, window_s=1.0)
    summaries: list[DropSummary] = []
    for i in range(400):
        critical = i % 5 == 0
        result = limiter.admit(
            "s", "job.completed" if critical else "frame", critical=critical, now=i / 256
        )
        summaries.extend(result.due)
        if critical:
            assert result.admitted
    summaries.extend(limiter.flush())
    assert sum(s.dropped for s in summaries) == limiter.dropped_total > 0
    assert all("job.completed" not in s.actions for s in summaries)


def test_critical_records_spend_tokens_but_never_go_negative() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=4, window_s=1.0)
    for _ in range(50):  # far more critical records than the bucket holds
        assert limiter.admit("s", "security.alert", critical=True, now=0.0).admitted
    # They spent the tokens that were there...
    assert not limiter.admit("s", "frame", critical=False, now=0.0).admitted
    # ...but did not borrow: 1/8 s at 8 tokens/s refills exactly one token, which is enough.
    # (Had the 46 extra criticals driven the bucket to -46, this would still be refused.)
    assert limiter.admit("s", "frame", critical=False, now=0.125).admitted
    assert not limiter.admit("s", "frame", critical=False, now=0.125).admitted


def test_sessions_are_independent() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=5, window_s=1.0)
    a = [limiter.admit("a", "frame", critical=False, now=0.0).admitted for _ in range(20)]
    b = [limiter.admit("b", "frame", critical=False, now=0.0).admitted for _ in range(5)]
    assert a.count(True) == 5
    assert all(b)
    summaries = limiter.flush()
    assert [(s.session, s.dropped) for s in summaries] == [("a", 15)]
    assert len(limiter) == 2


def test_summary_due_at_window_end_via_other_session() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=1, window_s=1.0)
    assert limiter.admit("a", "frame", critical=False, now=0.0).admitted
    dropped = limiter.admit("a", "frame", critical=False, now=0.0)
    assert not dropped.admitted
    assert dropped.due == ()
    assert limiter.admit("b", "frame", critical=False, now=0.5).due == ()
    assert limiter.admit("b", "frame", critical=False, now=0.75).due == ()
    result = limiter.admit("b", "frame", critical=False, now=1.0)  # window_end is inclusive
    assert result == Admission(
        admitted=True,
        due=(
            DropSummary(
                session="a", window_start=0.0, window_end=1.0, dropped=1, actions={"frame": 1}
            ),
        ),
    )
    assert limiter.admit("b", "frame", critical=False, now=5.0).due == ()
    assert limiter.flush() == []


def test_due_summaries_come_oldest_first() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=1, window_s=1.0)
    for session, t in [("late", 0.25), ("early", 0.0)]:
        limiter.admit(session, "x", critical=False, now=t)
    # Opened in the other order, same window length: "early" ends first.
    limiter.admit("early", "x", critical=False, now=0.0)
    limiter.admit("late", "x", critical=False, now=0.25)
    due = limiter.admit("other", "x", critical=True, now=2.0).due
    assert [s.session for s in due] == ["early", "late"]


def test_flush_at_time_and_flush_all() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=1, window_s=1.0)
    for session, t in [("a", 0.0), ("b", 0.5)]:
        limiter.admit(session, "frame", critical=False, now=t)
        limiter.admit(session, "frame", critical=False, now=t)
        limiter.admit(session, "upload", critical=False, now=t)
    assert limiter.flush(0.75) == []
    first = limiter.flush(1.0)
    assert [(s.session, s.dropped, s.actions) for s in first] == [
        ("a", 2, {"frame": 1, "upload": 1})
    ]
    assert limiter.flush(1.25) == []
    rest = limiter.flush(None)  # stream close: everything still pending, due or not
    assert [(s.session, s.window_start, s.window_end) for s in rest] == [("b", 0.5, 1.5)]
    assert limiter.flush(None) == []
    assert limiter.flush(100.0) == []
    assert limiter.dropped_total == 4


def test_drop_after_window_end_opens_new_window() -> None:
    limiter = SessionRateLimiter(rate=1.0, burst=1, window_s=0.5)
    limiter.admit("a", "x", critical=False, now=0.0)
    assert not limiter.admit("a", "x", critical=False, now=0.0).admitted
    # Token refilled by 1.0: admitted, and the window [0, 0.5) is now due.
    result = limiter.admit("a", "x", critical=False, now=1.0)
    assert result.admitted
    assert [(s.window_start, s.dropped) for s in result.due] == [(0.0, 1)]
    assert not limiter.admit("a", "x", critical=False, now=1.0).admitted
    assert [(s.window_start, s.window_end) for s in limiter.flush()] == [(1.0, 1.5)]


def test_eviction_yields_pending_summary_and_bounds_sessions() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=1, window_s=10.0, max_sessions=2)
    due: list[DropSummary] = []
    for session in ["a", "b", "c"]:
        for _ in range(2):  # second record of each session is dropped
            result = limiter.admit(session, "frame", critical=False, now=0.0)
            due.extend(result.due)
            assert len(limiter) <= 2
    # "a" was least recently used when "c" arrived; its window (ends at 10) was not due by
    # time, but evicting the session must not lose it.
    assert [(s.session, s.dropped) for s in due] == [("a", 1)]
    # A returning evicted session starts with a full bucket (and evicts "b").
    result = limiter.admit("a", "frame", critical=False, now=0.0)
    assert result.admitted
    assert [(s.session, s.dropped) for s in result.due] == [("b", 1)]
    assert len(limiter) == 2
    assert [(s.session, s.dropped) for s in limiter.flush()] == [("c", 1)]
    assert limiter.flush() == []
    assert limiter.dropped_total == 3


def test_eviction_churn_with_stalled_clock_loses_nothing() -> None:
    # The clock never advances, so no window ever ends by time; only eviction (and the
    # final flush) can release summaries. A long-lived session keeps one window open the
    # whole time, while 1000 short-lived sessions each open one and are evicted.
    limiter = SessionRateLimiter(rate=8.0, burst=1, window_s=1.0, max_sessions=2)
    summaries: list[DropSummary] = []
    admitted = 0
    for i in range(1000):
        for session in ["keeper", f"s{i}", f"s{i}", f"s{i}"]:
            result = limiter.admit(session, "frame", critical=False, now=0.0)
            admitted += result.admitted
            summaries.extend(result.due)
        assert len(limiter) == 2
    assert {s.session for s in summaries} == {f"s{i}" for i in range(999)}
    summaries.extend(limiter.flush())
    assert admitted == 1 + 1000
    by_session = {s.session: s.dropped for s in summaries}
    assert len(summaries) == len(by_session) == 1001
    assert by_session.pop("keeper") == 999
    assert set(by_session.values()) == {2}
    assert limiter.dropped_total == 999 + 2000


def test_out_of_order_clock_across_sessions() -> None:
    # Batch tools feed event time, which may be out of order between sessions: here "b"
    # opens a window that ends before the one "a" opened earlier.
    limiter = SessionRateLimiter(rate=0.25, burst=1, window_s=1.0)
    for session, t in [("a", 5.0), ("a", 5.0), ("b", 0.0), ("b", 0.0)]:
        limiter.admit(session, "x", critical=False, now=t)
    result = limiter.admit("b", "y", critical=False, now=2.0)
    assert not result.admitted  # 2 s at 0.25 tokens/s refills only half a token
    # The drop at 2.0 lies past the end of b's first window: that window is closed and
    # handed out now, and the drop opens a new one (it must not be counted in [0, 1)).
    assert [(s.session, s.window_start, s.dropped) for s in result.due] == [("b", 0.0, 1)]
    rest = limiter.flush()
    assert [(s.session, s.window_start, s.dropped, s.actions) for s in rest] == [
        ("b", 2.0, 1, {"y": 1}),
        ("a", 5.0, 1, {"x": 1}),
    ]


def test_time_going_backwards_neither_crashes_nor_refunds() -> None:
    limiter = SessionRateLimiter(rate=8.0, burst=2, window_s=1.0)
    assert limiter.admit("s", "x", critical=False, now=10.0).admitted
    assert limiter.admit("s", "x", critical=False, now=10.0).admitted
    assert not limiter.admit("s", "x", critical=False, now=10.0).admitted
    assert not limiter.admit("s", "x", critical=False, now=5.0).admitted  # no refund
    assert limiter.admit("s", "x", critical=True, now=-3.0).admitted
    # Going back to 10.0 must not count 5.0 -> 10.0 (or -3.0 -> 10.0) as elapsed time.
    assert not limiter.admit("s", "x", critical=False, now=10.0).admitted
    assert limiter.admit("s", "x", critical=False, now=10.125).admitted  # 1/8 s = 1 token
    assert not limiter.admit("s", "x", critical=False, now=10.125).admitted
    summaries = limiter.flush()
    assert sum(s.dropped for s in summaries) == limiter.dropped_total == 4


def test_thread_safety_conserves_records() -> None:
    limiter = SessionRateLimiter(rate=50.0, burst=5, window_s=0.25, max_sessions=4)
    n_threads, per_thread = 8, 5000
    admitted = [0] * n_threads
    due: list[list[DropSummary]] = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)

    def worker(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            # One hot session that always drops, plus cold ones cycling through eviction.
            session = "hot" if i % 2 else f"s{(k + i) % 6}"
            result = limiter.admit(session, f"a{i % 3}", critical=i % 50 == 0, now=i / 1024)
            admitted[k] += result.admitted
            due[k].extend(result.due)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summaries = [s for d in due for s in d] + limiter.flush()
    total_dropped = sum(s.dropped for s in summaries)
    assert sum(admitted) + total_dropped == n_threads * per_thread
    assert limiter.dropped_total == total_dropped
    assert total_dropped > 0
    assert all(sum(s.actions.values()) == s.dropped for s in summaries)
    assert len(limiter) <= 4
    assert limiter.flush() == []


_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["frame", "upload", "job.failed"]),
        st.booleans(),
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=0.5)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    events=_events,
    rate=st.floats(min_value=0.5, max_value=50.0),
    burst=st.integers(min_value=1, max_value=5),
    window_s=st.floats(min_value=0.01, max_value=2.0),
    max_sessions=st.integers(min_value=1, max_value=4),
)
def test_property_conservation_and_bound(
    events: list[tuple[str, str, bool, float]],
    rate: float,
    burst: int,
    window_s: float,
    max_sessions: int,
) -> None:
    limiter = SessionRateLimiter(
        rate=rate, burst=burst, window_s=window_s, max_sessions=max_sessions
    )
    no_eviction = max_sessions >= 3  # only 3 distinct sessions are ever used
    now = 0.0
    admitted = 0
    summaries: list[DropSummary] = []
    drops: list[tuple[str, float, str]] = []
    first_seen: dict[str, float] = {}
    noncritical_admitted: Counter[str] = Counter()
    for session, action, critical, dt in events:
        now += dt
        first_seen.setdefault(session, now)
        result = limiter.admit(session, action, critical=critical, now=now)
        summaries.extend(result.due)
        assert len(limiter) <= max_sessions
        if critical:
            assert result.admitted
        if result.admitted:
            admitted += 1
            if not critical:
                noncritical_admitted[session] += 1
                if no_eviction:
                    bound = burst + rate * (now - first_seen[session]) + 1e-9
                    assert noncritical_admitted[session] <= bound
        else:
            drops.append((session, now, action))
        for s in result.due:  # due only once its window has ended (or it was evicted)
            assert now >= s.window_end or not no_eviction
    summaries.extend(limiter.flush())
    assert limiter.flush() == []
    assert admitted + sum(s.dropped for s in summaries) == len(events)
    assert limiter.dropped_total == len(drops)
    assert sum(s.dropped for s in summaries) == len(drops)
    if no_eviction:
        # An evicted session that comes back may open a window overlapping its old one, so
        # the one-window-per-drop check only applies when nothing was evicted.
        _check_summaries_match_drops(summaries, drops)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rate": 0.0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"burst": 0}, "burst"),
        ({"window_s": 0.0}, "window_s"),
        ({"window_s": -0.5}, "window_s"),
        ({"max_sessions": 0}, "max_sessions"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        SessionRateLimiter(**kwargs)
