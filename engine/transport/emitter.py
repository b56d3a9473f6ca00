"""The engine's audit emitter: `emit` only enqueues; two background threads do the rest.

* The seal thread drains the queue, seals each event (pseudonymise, rate-limit, chain, sign),
  appends the sealed lines to the write-ahead spool, then to the optional NDJSON file sink.
* The ship thread sends what the spool holds unacknowledged, oldest first, in batches that
  the audit service acknowledges after storing them, and moves the spool's ack cursor. When
  the service is unreachable the records stay spooled and the thread retries with backoff;
  records left unacknowledged by an earlier run (a crash) go out first, in order.

Delivery is at-least-once and in order: a batch whose ack was lost is sent again, and the
service recognises records it already stored.

When the spool is full, the emitter refuses new events rather than lose them silently:
`emit` raises AuditUnavailableError for critical actions (the job must not proceed: no job
may run unaudited) and drops non-critical ones, counting them in `dropped_noncritical` and
logging once per episode. The same applies when the in-memory queue reaches `queue_max`
(the seal thread is stalled) and after `close`. "Full" means less than a small headroom
left; the headroom is what lets the critical events already queued, and the closing
checkpoint, be sealed. Sealed records are never dropped for want of room (that would leave
a hole in the chain): they wait in memory until the shipper frees space.

Chain state is the Sealer's: a restarted engine gets a new Sealer (a new stream id, or one
continuing its chain from persisted state, which is not this module's job); what this
module guarantees is that lines sealed and spooled by an earlier run are delivered.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from audit.integrity.seal import AuditEvent, Sealer
from engine.errors import AuditUnavailableError, UsageError
from engine.transport.forward import ForwardDelivery
from engine.transport.spool import Spool, SpoolFullError, SpoolPosition, SpoolUsage, frame_size

log = logging.getLogger("engine.transport.emitter")

_MAX_HEADROOM = 64 * 1024
_REGROW_AFTER = 32  # acknowledged batches before a halved batch size is doubled again


class _Marker:
    """A flush request travelling through the queue behind the events it waits for."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _CloseRequest:
    """Seal the last checkpoint here, behind every event emitted before close()."""

    __slots__ = ("final",)

    def __init__(self, final: bool) -> None:
        self.final = final


_Item = AuditEvent | _Marker | _CloseRequest


@dataclass(frozen=True, slots=True)
class EmitterStats:
    queued: int  # events (and flush markers) waiting for the seal thread
    spooled: int  # records appended to the spool by this emitter
    shipped: int  # records acknowledged by the service (replayed ones included)
    dropped_noncritical: int  # non-critical events refused: spool full, queue full, closed
    refused_critical: int  # critical events refused with AuditUnavailableError
    invalid: int  # events the sealer refused (a producer bug: logged with the reason)
    unspoolable: int  # sealed records larger than the whole spool (file sink only)
    backlog: int  # sealed records waiting for room in the spool
    accepting: bool  # emit takes every event
    delivery_up: bool  # the last contact with the service succeeded
    last_error: str | None
    spool: SpoolUsage


class AuditEmitter:
    """See the module docstring. Without a delivery, the file sink is the destination:
    records are acknowledged in the spool once written there; with neither, the spool is
    the destination and fills up (to be shipped by a later run with a delivery)."""

    def __init__(
        self,
        sealer: Sealer,
        spool: Spool,
        *,
        delivery: ForwardDelivery | None,
        file_sink: Path | None,
        batch_max: int = 500,
        ship_interval_s: float = 0.2,
        ship_max_bytes: int = 4 << 20,
        queue_max: int = 100_000,
        retry_max_s: float = 5.0,
    ) -> None:
        if batch_max < 1 or queue_max < 1 or ship_max_bytes < 1:
            raise UsageError("batch_max, queue_max and ship_max_bytes must be positive")
        if ship_interval_s <= 0 or retry_max_s <= 0:
            raise UsageError("ship_interval_s and retry_max_s must be positive")
        self._sealer = sealer
        self._spool = spool
        self._delivery = delivery
        self._file_path = file_sink
        self._file_fd: int | None = None
        self._batch_max = batch_max
        self._ship_interval_s = ship_interval_s
        self._ship_max_bytes = ship_max_bytes
        self._queue_max = queue_max
        self._retry_max_s = retry_max_s
        # Below the alarm threshold, so that the alarm always comes first.
        spare = spool.max_bytes * (1 - spool.alarm_ratio) / 2
        self._headroom = max(0, min(_MAX_HEADROOM, int(spare)))

        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._ship_wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # counters, waiters, state flags
        self._backlog: list[bytes] = []  # sealed, not yet spooled (seal thread only)
        self._stalled = False  # the backlog did not fit the spool (set by the seal thread)
        self._waiters: list[tuple[SpoolPosition, _Marker]] = []
        self._threads: list[threading.Thread] = []
        self._refusing = False  # read without the lock on the hot path
        self._closed = False
        self._started = False
        self._episode_logged = False
        self._delivery_up = False
        self._outage_logged = False
        self._outage_since: float | None = None
        self._spooled = self._shipped = self._dropped = self._refused = 0
        self._invalid = self._unspoolable = 0
        self._file_failed = False
        self._last_error: str | None = None
        self._ship_scale = 1  # batches are batch_max / scale records (ship thread only)
        self._ship_streak = 0  # successes since the scale last changed

    # -- hot path -------------------------------------------------------------------------

    def emit(self, event: AuditEvent) -> None:
        """Queue `event` (O(1), never blocks). Raises AuditUnavailableError only for a
        critical event the audit trail cannot take (spool full, queue full, closed)."""
        if event.timestamp is None:
            event.timestamp = datetime.now(UTC)
        if self._refusing or len(self._queue) >= self._queue_max:
            self._refuse(event)
            return
        self._queue.append(event)
        if not self._wake.is_set():
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("audit emitter already started")
        self._started = True
        if self._file_path is not None:
            self._file_fd = _open_sink(self._file_path)
        pending = self._spool.usage().records_pending
        if pending and self._delivery is not None:
            log.info("audit spool holds %d unacknowledged records: replaying them first", pending)
        elif pending:
            log.warning(
                "audit spool holds %d unacknowledged records and there is no delivery to ship them",
                pending,
            )
        self._update_refusing()
        self._threads = [threading.Thread(target=self._seal_loop, name="ffaudit-seal", daemon=True)]
        if self._delivery is not None:
            ship = threading.Thread(target=self._ship_loop, name="ffaudit-ship", daemon=True)
            self._threads.append(ship)
        for thread in self._threads:
            thread.start()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every event emitted so far is sealed, spooled, written to the file
        sink and (with a delivery) acknowledged by the service. False on timeout."""
        if not self._started or self._stop.is_set():
            return False
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0, *, final: bool = True) -> bool:
        """Seal a checkpoint behind everything emitted so far, flush, stop the threads.

        final=True seals the stream's closing checkpoint (nothing may follow it);
        final=False a plain signed checkpoint, for an engine that continues its chain after
        a restart. True when everything was acknowledged; otherwise what is spooled stays
        there for the next run. The spool is left open (it belongs to the caller)."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._refusing = True
        if not self._started:
            self.start()
        deadline = time.monotonic() + timeout_s
        self._queue.append(_CloseRequest(final))
        ok = self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        self._ship_wake.set()
        if self._delivery is not None:
            self._delivery.abort()
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        left, backlog = len(self._queue), len(self._backlog)
        if left or backlog:
            log.error(
                "audit emitter closed with %d queued events and %d sealed records not spooled",
                left,
                backlog,
            )
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
        if self._delivery is not None:
            self._delivery.close()
        if not ok:
            pending = self._spool.usage().records_pending
            log.warning("audit emitter closed with %d records not acknowledged", pending)
        return ok

    # -- observability ----------------------------------------------------------------------

    @property
    def delivery_up(self) -> bool:
        return self._delivery_up

    def stats(self) -> EmitterStats:
        usage = self._spool.usage()
        with self._lock:
            return EmitterStats(
                queued=len(self._queue),
                spooled=self._spooled,
                shipped=self._shipped,
                dropped_noncritical=self._dropped,
                refused_critical=self._refused,
                invalid=self._invalid,
                unspoolable=self._unspoolable,
                backlog=len(self._backlog),
                accepting=not self._refusing,
                delivery_up=self._delivery_up,
                last_error=self._last_error,
                spool=usage,
            )

    def health(self) -> dict[str, object]:
        """Status "ok", "degraded" (service unreachable: records are spooling) or
        "unavailable" (critical events are refused), with the figures an operator needs."""
        s = self.stats()
        degraded = self._delivery is not None and not s.delivery_up
        status = "unavailable" if not s.accepting else "degraded" if degraded else "ok"
        return {
            "status": status,
            "accepting": s.accepting,
            "delivery_up": s.delivery_up,
            "queued": s.queued,
            "spool_bytes": s.spool.bytes_used,
            "spool_max_bytes": s.spool.max_bytes,
            "spool_records": s.spool.records_pending,
            "oldest_pending_age_s": s.spool.oldest_pending_age_s,
            "dropped_noncritical": s.dropped_noncritical,
            "refused_critical": s.refused_critical,
            "last_error": s.last_error,
        }

    # -- refusal ----------------------------------------------------------------------------

    def _refuse(self, event: AuditEvent) -> None:
        critical = event.action.critical
        if self._closed:
            reason = "the audit emitter is closed"
        elif self._refusing:
            reason = "the audit spool is full"
        else:
            reason = "the audit queue is full"
        self._count_refusal(critical, reason)
        if critical:
            raise AuditUnavailableError(f"{reason}: {event.action.value} cannot be recorded")

    def _count_refusal(self, critical: bool, reason: str) -> None:
        with self._lock:
            if critical:
                self._refused += 1
            else:
                self._dropped += 1
            first = not self._episode_logged
            self._episode_logged = True
        if first:
            log.error(
                "%s: refusing critical audit events, dropping non-critical ones (counted)",
                reason,
            )

    def _update_refusing(self) -> None:
        # Both threads call this: reading the spool under our lock keeps the last word
        # with the freshest figure (lock order: ours, then the spool's).
        with self._lock:
            free = self._spool.free_bytes()
            refusing = self._closed or self._stalled or free < self._headroom
            if refusing == self._refusing:
                return
            self._refusing = refusing
            dropped, refused = self._dropped, self._refused
            if not refusing:
                self._episode_logged = False
        if refusing:
            log.error("audit spool full (%d bytes free): refusing new events", free)
        else:
            log.warning(
                "audit spool has room again (so far %d non-critical events dropped, %d "
                "critical refused)",
                dropped,
                refused,
            )

    def _queue_recovered(self) -> None:
        with self._lock:
            if self._refusing or not self._episode_logged:
                return
            self._episode_logged = False
            dropped, refused = self._dropped, self._refused
        log.warning(
            "audit queue has room again (so far %d non-critical events dropped, %d critical "
            "refused)",
            dropped,
            refused,
        )

    def _error(self, message: str) -> None:
        with self._lock:
            self._last_error = message

    # -- seal thread --------------------------------------------------------------------------

    def _seal_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._ship_interval_s)
            self._wake.clear()
            try:
                self._seal_pending()
                if self._refusing and not self._closed:
                    self._update_refusing()
                elif self._episode_logged and len(self._queue) < self._queue_max:
                    self._queue_recovered()
            except Exception as exc:  # a bug: keep sealing, but say so
                log.exception("audit seal thread failed")
                self._error(f"seal thread: {exc!r}")

    def _seal_pending(self) -> None:
        while not self._stop.is_set():
            if self._backlog and not self._commit([]):
                return  # still no room: retried when the shipper acks, or on the next tick
            items: list[_Item] = []
            while len(items) < self._batch_max and self._queue:
                items.append(self._queue.popleft())
            if not items:
                return
            self._process(items)

    def _process(self, items: list[_Item]) -> None:
        lines: list[bytes] = []
        room = self._spool.free_bytes() - self._headroom
        for k, item in enumerate(items):
            if isinstance(item, _Marker):
                if not self._commit(lines):
                    self._queue.extendleft(reversed(items[k:]))  # in order, ahead of the rest
                    return
                lines = []
                room = self._spool.free_bytes() - self._headroom
                self._settle(item)
                continue
            try:
                if isinstance(item, _CloseRequest):
                    sealed = self._sealer.close() if item.final else self._sealer.checkpoint()
                else:
                    critical = item.action.critical
                    if not critical and room < 0:
                        self._count_refusal(False, "the audit spool is full")
                        continue
                    if self._sealer.writer.closed:
                        # emit() raced close(): the chain is closed, the caller not told.
                        self._count_refusal(critical, "the audit emitter is closed")
                        continue
                    sealed = self._sealer.seal(item)
            except Exception as exc:
                with self._lock:
                    self._invalid += 1
                    self._last_error = f"event not sealed: {exc}"
                log.error("audit event not sealed (%s): %s", type(exc).__name__, exc)
                continue
            for record in sealed:
                lines.append(record.line)
                room -= frame_size(record.line)
        self._commit(lines)

    def _commit(self, lines: list[bytes]) -> bool:
        """Spool `lines` behind the backlog; False when some had to stay in the backlog."""
        self._backlog += lines
        while self._backlog:
            free = self._spool.free_bytes()
            fit = used = 0
            for line in self._backlog:
                used += frame_size(line)
                if used > free:
                    break
                fit += 1
            if fit == 0 and frame_size(self._backlog[0]) > self._spool.max_bytes:
                self._unspoolable_record(self._backlog.pop(0))
                continue
            if fit == 0:
                self._stalled = True
                self._update_refusing()
                return False
            batch = self._backlog[:fit]
            try:
                self._spool.append(batch)
            except (SpoolFullError, OSError) as exc:
                self._error(f"spool append failed: {exc}")
                log.error("audit spool append failed: %s", exc)
                self._stalled = True
                self._update_refusing()
                return False
            del self._backlog[:fit]
            with self._lock:
                self._spooled += len(batch)
            written = self._write_file(batch)
            if self._delivery is None and written:
                # The file sink is the destination. Only this thread appends, so the end
                # of the spool is the end of this batch.
                self._spool.ack(self._spool.end_position())
            self._ship_wake.set()
        self._stalled = False
        self._update_refusing()
        return True

    def _unspoolable_record(self, line: bytes) -> None:
        with self._lock:
            self._unspoolable += 1
            self._last_error = f"a sealed record of {len(line)} bytes exceeds the spool"
        log.error("audit record of %d bytes cannot fit the spool: file sink only", len(line))
        self._write_file([line])

    def _write_file(self, lines: Sequence[bytes]) -> bool:
        if self._file_fd is None:
            return False
        try:
            _write_all(self._file_fd, b"".join(line + b"\n" for line in lines))
            os.fsync(self._file_fd)
        except OSError as exc:
            self._error(f"file sink: {exc}")
            if not self._file_failed:
                log.error("audit file sink %s failed: %s", self._file_path, exc)
            self._file_failed = True
            return False
        self._file_failed = False
        return True

    def _settle(self, marker: _Marker) -> None:
        if self._delivery is None:
            marker.done.set()
            return
        end = self._spool.end_position()
        with self._lock:
            if self._spool.acked_position() >= end:
                marker.done.set()
            else:
                self._waiters.append((end, marker))

    # -- ship thread --------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        backoff = 0.0
        retry_at = 0.0
        while not self._stop.is_set():
            wait = max(0.0, min(self._ship_interval_s, retry_at - time.monotonic()))
            self._ship_wake.wait(wait or self._ship_interval_s)
            self._ship_wake.clear()
            if self._stop.is_set() or time.monotonic() < retry_at:
                continue
            try:
                self._ship_pending()
            except Exception as exc:
                if self._stop.is_set():
                    # close() aborted this attempt: the failure is ours, not the service's,
                    # and must not replace the outage's real cause in last_error.
                    break
                backoff = min(self._retry_max_s, max(self._ship_interval_s, backoff * 2))
                jitter = random.uniform(0.8, 1.2)  # noqa: S311 (spreads retries, not a secret)
                retry_at = time.monotonic() + backoff * jitter
                # A service with smaller frame limits than ours closes the connection on
                # every full batch: halve it on each failure, regrow it slowly.
                self._ship_scale = min(self._ship_scale * 2, self._batch_max)
                self._ship_streak = 0
                self._outage(exc)
            else:
                backoff = 0.0

    def _ship_pending(self) -> None:
        assert self._delivery is not None
        while not self._stop.is_set():
            limit = max(1, self._batch_max // self._ship_scale)
            budget = max(1, self._ship_max_bytes // self._ship_scale)
            batch = self._spool.unacked(limit, max_bytes=budget)
            if not batch:
                if not self._delivery_up:
                    self._delivery.connect()  # a probe, so that health tells the truth
                    self._recovered()
                return
            records: list[dict[str, Any]] = []
            for _, line in batch:
                try:
                    records.append(orjson.loads(line))
                except orjson.JSONDecodeError:  # passed the spool's CRC, so never seen
                    log.error("audit spool holds a line that is not JSON; skipping it")
            self._delivery.send(records)
            self._spool.ack(batch[-1][0])
            self._ship_streak += 1
            if self._ship_scale > 1 and self._ship_streak >= _REGROW_AFTER:
                self._ship_scale //= 2
                self._ship_streak = 0
            with self._lock:
                self._shipped += len(records)
            self._recovered()
            self._settle_waiters()
            self._update_refusing()
            if self._stalled:
                self._wake.set()  # the seal thread waits for this room

    def _settle_waiters(self) -> None:
        acked = self._spool.acked_position()
        with self._lock:
            keep: list[tuple[SpoolPosition, _Marker]] = []
            for pos, marker in self._waiters:
                if pos <= acked:
                    marker.done.set()
                else:
                    keep.append((pos, marker))
            self._waiters = keep

    def _outage(self, exc: Exception) -> None:
        with self._lock:
            self._delivery_up = False
            self._last_error = f"delivery: {exc}"
            first = not self._outage_logged
            self._outage_logged = True
            if self._outage_since is None:
                self._outage_since = time.monotonic()
        if first:
            log.warning("audit service unreachable (%s); records stay in the spool, retrying", exc)
        else:
            log.debug("audit service still unreachable: %s", exc)

    def _recovered(self) -> None:
        if self._delivery_up:
            return
        with self._lock:
            self._delivery_up = True
            since, self._outage_since = self._outage_since, None
            was_logged, self._outage_logged = self._outage_logged, False
        if was_logged and since is not None:
            log.warning("audit service reachable again after %.1fs", time.monotonic() - since)


def _open_sink(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a crash mid-write) so that the next line starts cleanly."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        cut, pos = 0, size
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            i = fh.read(pos - start).rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        fh.truncate(cut)
        os.fsync(fh.fileno())
    log.warning("audit file sink %s: torn last line (%d bytes) removed", path, size - cut)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
