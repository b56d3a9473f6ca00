"""Write-ahead spool of sealed audit lines: what the engine has sealed but the audit service
has not yet acknowledged.

Layout of the spool directory:

* `seg-000000000001.log`, … — append-only segments. Each starts with the 8-byte magic
  `FFSPOOL1`, then frames: a 16-byte header (payload length u32, CRC-32 u32 of the next 8
  bytes and the payload, append time u64 in ns since the epoch; big-endian), then the
  payload (one sealed record line, no newline).
* `acked` — the ack cursor, `"<segment> <offset>\\n"`: every record ending at or before
  that byte of that segment (and all of every earlier segment) is acknowledged. Replaced
  atomically (`write_atomic`: write, fsync, rename, fsync the directory).
* `lock` — held with flock while a Spool is open, so two processes never share a spool.

The CRC only detects torn and damaged frames (a crash mid-write); it is not an integrity
check: the records are hash-chained and signed, and the service verifies them.

On open every pending frame is checked. The first bad frame of a segment ends that segment:
the file is truncated there (the usual case is a torn last record of the last segment).
`max_bytes` bounds the unacknowledged frames; on disk there can be at most one segment of
acknowledged data more, because fully acknowledged segments are deleted.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from audit.common.files import fsync_dir, partial_files, write_atomic
from engine.errors import AuditUnavailableError, UsageError

log = logging.getLogger("engine.transport.spool")

FsyncPolicy = Literal["always", "batch", "never"]

MAGIC = b"FFSPOOL1"
HEADER = len(MAGIC)
FRAME = struct.Struct(">IIQ")
_TIME = struct.Struct(">Q")
_SEGMENT = re.compile(r"seg-(\d{12})\.log")
_CURSOR = "acked"
_LOCK = "lock"
_MAX_RECORD = 2**32 - 1


class SpoolPosition(NamedTuple):
    """The end of one record. Positions order like the records; acking one acknowledges
    that record and everything before it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolUsage:
    bytes_used: int  # unacknowledged frames, headers included
    max_bytes: int
    records_pending: int
    oldest_pending_age_s: float | None  # since it was spooled (wall clock); None: nothing
    segments: int

    @property
    def ratio(self) -> float:
        return self.bytes_used / self.max_bytes


@dataclass(frozen=True, slots=True)
class SpoolAlarm:
    usage: SpoolUsage
    threshold: float  # the alarm_ratio that was crossed


class SpoolFullError(AuditUnavailableError):
    """The records do not fit: the unacknowledged data would exceed max_bytes."""


def frame_size(line: bytes) -> int:
    """Bytes a record takes against max_bytes."""
    return FRAME.size + len(line)


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int = HEADER
    ends: array[int] = field(default_factory=lambda: array("Q"))  # record end offsets
    times: array[int] = field(default_factory=lambda: array("Q"))  # append times, ns


class Spool:
    """Durable FIFO of record lines with an acknowledgement cursor. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        fsync: FsyncPolicy = "batch",
        alarm_ratio: float = 0.8,
        on_alarm: Callable[[SpoolAlarm], None] | None = None,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes < 1:
            raise UsageError("spool max_bytes must be positive")
        if not 0 < alarm_ratio <= 1:
            raise UsageError("spool alarm_ratio must be in (0, 1]")
        if fsync not in ("always", "batch", "never"):
            raise UsageError(f"spool fsync must be always, batch or never, not {fsync!r}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync: FsyncPolicy = fsync
        self.alarm_ratio = alarm_ratio
        self.segment_bytes = segment_bytes or min(16 << 20, max(4096, max_bytes // 8))
        self._on_alarm = on_alarm
        self._armed = True
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}  # ascending: inserted in order
        self._cursor = SpoolPosition(0, 0)
        self._pending_bytes = 0
        self._pending_records = 0
        self._fd: int | None = None  # append fd of the last segment
        self._closed = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot open spool directory {directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise UsageError(f"spool {directory} is in use by another process") from None
        try:
            self._recover()
        except BaseException:
            self._release()
            raise
        self._check_alarm()

    # -- public API ---------------------------------------------------------------------

    def append(self, lines: Sequence[bytes]) -> None:
        """Append records (durable per the fsync policy when this returns; end_position()
        is then the end of the last one). All or nothing: SpoolFullError when they do not
        fit, and nothing is written."""
        with self._lock:
            self._check_open()
            if not lines:
                return
            size = sum(frame_size(line) for line in lines)
            if any(len(line) > _MAX_RECORD for line in lines):
                raise SpoolFullError("a record is larger than a spool frame can hold")
            if self._pending_bytes + size > self.max_bytes:
                raise SpoolFullError(
                    f"spool full: {self._pending_bytes} + {size} bytes > {self.max_bytes}"
                )
            seg = self._writable_segment()
            now = time.time_ns()
            frames = [_frame(line, now) for line in lines]
            self._write(seg, frames)
            offset = seg.size
            for line in lines:
                offset += frame_size(line)
                seg.ends.append(offset)
                seg.times.append(now)
            seg.size = offset
            self._pending_bytes += size
            self._pending_records += len(lines)
        self._check_alarm()

    def unacked(
        self, limit: int, *, max_bytes: int | None = None
    ) -> list[tuple[SpoolPosition, bytes]]:
        """Up to `limit` unacknowledged records, oldest first (at least one when any is
        pending, even past `max_bytes`). Reading does not consume: ack does."""
        out: list[tuple[SpoolPosition, bytes]] = []
        if limit < 1:
            return out
        budget = max_bytes if max_bytes is not None else self.max_bytes
        with self._lock:
            self._check_open()
            for seg in self._pending_segments():
                start = self._cursor.offset if seg.number == self._cursor.segment else HEADER
                first = bisect.bisect_right(seg.ends, start)
                if first >= len(seg.ends):
                    continue
                stop = min(len(seg.ends), first + limit - len(out))
                # Keep the batch within the byte budget, but never return nothing.
                stop = bisect.bisect_right(seg.ends, start + budget, first, stop)
                if stop == first and not out:
                    stop = first + 1
                if stop <= first:
                    break
                end = seg.ends[stop - 1]
                with open(seg.path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(end - start)
                if len(data) != end - start:
                    raise OSError(f"spool segment {seg.path} shrank under us")
                pos = 0
                for i in range(first, stop):
                    length = FRAME.unpack_from(data, pos)[0]
                    pos += FRAME.size
                    out.append((SpoolPosition(seg.number, seg.ends[i]), data[pos : pos + length]))
                    pos += length
                budget -= end - start
                if len(out) >= limit or budget <= 0 or stop < len(seg.ends):
                    break
        return out

    def ack(self, upto: SpoolPosition) -> None:
        """Acknowledge every record up to and including the one ending at `upto` (persisted;
        fully acknowledged segments are deleted). Older positions are ignored."""
        with self._lock:
            self._check_open()
            if upto <= self._cursor:
                return
            seg = self._segments.get(upto.segment)
            if seg is None or not _is_boundary(seg, upto.offset):
                raise ValueError(f"{upto} is not the end of a spooled record")
            records, nbytes = self._between(self._cursor, upto)
            self._write_cursor(upto)
            self._cursor = upto
            self._pending_records -= records
            self._pending_bytes -= nbytes
            self._collect()
            if self._pending_bytes < self.alarm_ratio * self.max_bytes:
                self._armed = True

    def usage(self) -> SpoolUsage:
        with self._lock:
            return self._usage()

    def free_bytes(self) -> int:
        """Room left for frames (see frame_size)."""
        with self._lock:
            return self.max_bytes - self._pending_bytes

    def end_position(self) -> SpoolPosition:
        """The end of the last record appended (the cursor when nothing is pending)."""
        with self._lock:
            return self._end()

    def acked_position(self) -> SpoolPosition:
        with self._lock:
            return self._cursor

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recovery -----------------------------------------------------------------------

    def _recover(self) -> None:
        for partial in partial_files(self.directory / _CURSOR):
            partial.unlink(missing_ok=True)  # a cursor write a crash interrupted
        numbers = sorted(
            int(m.group(1))
            for p in self.directory.iterdir()
            if (m := _SEGMENT.fullmatch(p.name)) is not None
        )
        cursor = self._read_cursor()
        if cursor is None:
            cursor = SpoolPosition(numbers[0] if numbers else 0, HEADER)
        self._cursor = cursor
        for number in numbers:
            path = self._path(number)
            if number < cursor.segment:
                path.unlink()  # fully acknowledged: a deletion a crash interrupted
                continue
            seg = _Segment(number, path)
            self._scan(seg, last=number == numbers[-1])
            self._segments[number] = seg
        first = self._segments.get(cursor.segment)
        if first is not None and not _is_boundary(first, cursor.offset):
            # Only after a crash that lost acknowledged data (fsync "never"), or tampering:
            # resend the whole segment rather than guess (the service is idempotent).
            log.warning(
                "spool %s: ack cursor %s is not a record end; replaying its segment",
                self.directory,
                cursor,
            )
            self._cursor = SpoolPosition(cursor.segment, HEADER)
        self._pending_records, self._pending_bytes = self._between(self._cursor, self._end())
        self._collect()
        if self._segments:
            last = self._segments[max(self._segments)]
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)

    def _scan(self, seg: _Segment, *, last: bool) -> None:
        data = seg.path.read_bytes()
        if len(data) < HEADER and MAGIC.startswith(data):
            # Created, header not (fully) written: a crash while rolling over.
            self._reset_segment(seg)
            return
        if data[:HEADER] != MAGIC:
            raise UsageError(f"{seg.path} is not a spool segment (bad magic)")
        pos = HEADER
        while pos < len(data):
            if pos + FRAME.size > len(data):
                break
            length, crc, _ = FRAME.unpack_from(data, pos)
            body_end = pos + FRAME.size + length
            if body_end > len(data):
                break
            if zlib.crc32(data[pos + 8 : body_end]) != crc:
                break
            seg.ends.append(body_end)
            seg.times.append(_TIME.unpack_from(data, pos + 8)[0])
            pos = body_end
        seg.size = pos
        if pos < len(data):
            level = logging.WARNING if last else logging.ERROR
            log.log(
                level,
                "spool %s: %s ends with %d bytes of a torn or damaged record; truncated",
                self.directory,
                seg.path.name,
                len(data) - pos,
            )
            with open(seg.path, "r+b") as fh:
                fh.truncate(pos)
                if self.fsync != "never":
                    os.fsync(fh.fileno())

    def _reset_segment(self, seg: _Segment) -> None:
        with open(seg.path, "wb") as fh:
            fh.write(MAGIC)
            if self.fsync != "never":
                os.fsync(fh.fileno())

    # -- internals (self._lock held) --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.directory} is closed")

    def _path(self, number: int) -> Path:
        return self.directory / f"seg-{number:012d}.log"

    def _end(self) -> SpoolPosition:
        if not self._segments:
            return self._cursor
        last = self._segments[max(self._segments)]
        return max(self._cursor, SpoolPosition(last.number, last.size))

    def _pending_segments(self) -> list[_Segment]:
        return [s for n, s in self._segments.items() if n >= self._cursor.segment]

    def _between(self, a: SpoolPosition, b: SpoolPosition) -> tuple[int, int]:
        """(records, frame bytes) after position a up to and including position b."""
        records = nbytes = 0
        for seg in self._segments.values():
            if seg.number < a.segment or seg.number > b.segment:
                continue
            lo = a.offset if seg.number == a.segment else HEADER
            hi = b.offset if seg.number == b.segment else seg.size
            if hi <= lo:
                continue
            records += bisect.bisect_right(seg.ends, hi) - bisect.bisect_right(seg.ends, lo)
            nbytes += hi - lo
        return records, nbytes

    def _writable_segment(self) -> _Segment:
        last = self._segments[max(self._segments)] if self._segments else None
        if last is not None and self._fd is not None and last.size < self.segment_bytes:
            return last
        number = (last.number if last is not None else self._cursor.segment) + 1
        seg = _Segment(number, self._path(number))
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, MAGIC)
            if self.fsync != "never":
                os.fsync(fd)
                fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            seg.path.unlink()
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._segments[number] = seg
        self._collect()
        return seg

    def _write(self, seg: _Segment, frames: list[bytes]) -> None:
        assert self._fd is not None
        try:
            if self.fsync == "always":
                for frame in frames:
                    _write_all(self._fd, frame)
                    os.fsync(self._fd)
            else:
                _write_all(self._fd, b"".join(frames))
                if self.fsync == "batch":
                    os.fsync(self._fd)
        except BaseException:
            # Leave no partial frame behind: the next append would be written after it.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
            raise

    def _collect(self) -> None:
        """Delete segments that are fully acknowledged and no longer written to."""
        last = max(self._segments, default=None)
        for number in list(self._segments):
            seg = self._segments[number]
            done = number < self._cursor.segment or (
                number == self._cursor.segment and self._cursor.offset >= seg.size
            )
            if not done or number == last:
                continue
            del self._segments[number]
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()

    def _read_cursor(self) -> SpoolPosition | None:
        path = self.directory / _CURSOR
        try:
            text = path.read_text("ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("spool %s: unreadable ack cursor (%s); replaying", self.directory, exc)
            return None
        parts = text.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            log.warning("spool %s: malformed ack cursor; replaying everything", self.directory)
            return None
        return SpoolPosition(int(parts[0]), int(parts[1]))

    def _write_cursor(self, pos: SpoolPosition) -> None:
        write_atomic(
            self.directory / _CURSOR,
            f"{pos.segment} {pos.offset}\n".encode("ascii"),
            mode=0o600,
            durable=self.fsync != "never",
        )

    def _usage(self) -> SpoolUsage:
        age: float | None = None
        for seg in self._pending_segments():
            start = self._cursor.offset if seg.number == self._cursor.segment else HEADER
            i = bisect.bisect_right(seg.ends, start)
            if i < len(seg.times):
                age = max(0.0, (time.time_ns() - seg.times[i]) / 1e9)
                break
        return SpoolUsage(
            bytes_used=self._pending_bytes,
            max_bytes=self.max_bytes,
            records_pending=self._pending_records,
            oldest_pending_age_s=age,
            segments=len(self._segments),
        )

    def _check_alarm(self) -> None:
        # Called without the lock: the callback may well ask for usage().
        with self._lock:
            if not self._armed or self._pending_bytes < self.alarm_ratio * self.max_bytes:
                return
            self._armed = False
            usage = self._usage()
        log.warning(
            "spool %s at %.0f%% of %d bytes (%d records pending): the audit service is not "
            "taking records",
            self.directory,
            usage.ratio * 100,
            usage.max_bytes,
            usage.records_pending,
        )
        if self._on_alarm is not None:
            try:
                self._on_alarm(SpoolAlarm(usage, self.alarm_ratio))
            except Exception:
                log.exception("spool alarm callback failed")

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _frame(line: bytes, now_ns: int) -> bytes:
    stamp = _TIME.pack(now_ns)
    return FRAME.pack(len(line), zlib.crc32(line, zlib.crc32(stamp)), now_ns) + line


def _is_boundary(seg: _Segment, offset: int) -> bool:
    if offset == HEADER:
        return True
    i = bisect.bisect_left(seg.ends, offset)
    return i < len(seg.ends) and seg.ends[i] == offset


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
