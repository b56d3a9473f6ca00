"""Offline verification of record files on several processes (`ffaudit verify --jobs N`),
reporting exactly the failures the sequential `ChainVerifier` reports, in its order.

Slicing. The input (one file, or several read as one, line numbers running on) is cut into
byte ranges that start at line starts; a first pass counts each range's lines in parallel,
so that every worker numbers its lines, and the line numbers inside failure details, as
the sequential pass would. Workers open the file and seek: no record crosses a process
boundary, only what the join needs.

Per slice. A worker feeds its lines to `SliceVerifier`, the sequential verifier with the
same checks; content failures (steps 1-2 of docs/record-spec.md §7) depend on the line
alone and are final. Placement (steps 3-5) depends on each stream's state when the slice
starts, which the worker does not know: it guesses that the stream continues cleanly into
its first record (`expected` is that record's sequence, the head hash what it links to)
and verifies on. It hands back, per stream: the first records it placed (`head`: sequence,
hashes, line, checkpoint fields; `Tuning.head` of them, or more until its state is plain
again), sync points (after a record, a plain state: nothing buffered, no rival; with
`expected`, head hash and line, closed), its placement failures by line, and its final
state.

Join. The parent holds the true state of every stream. For each slice in order it replays
the head from the true state with the sequential code, and stops at the first sync point
where the true state equals the worker's. The fields compared are all that the following
decisions read, except the window of recent hashes and the signature bookkeeping; from
there on both run the same code on the same records, so the worker's later placement
failures are the sequential ones, but for what the worker could not know, which it handed
back as markers. Records placed after a sync point have sequences >= its `expected`, so a
sequence tells which side of it anything was placed on:
* a record more than one sequence behind `expected` is judged by the window, whose older
  slots may hold records from before the slice: `_Lookup` carries the worker's slot; one
  filled before the sync point is replaced by the true window's, which makes the record
  duplicate, inserted or too late to place as in the sequential pass (one sequence behind
  is the head's slot, which the worker filled itself: a sync point requires it);
* a checkpoint that verifies proves the failing signatures before it: `_Flush` names the
  worker's; those from before the sync point are replaced by the true list;
* `wrong_key` is reported once per stream: the worker reports every one, the parent keeps
  the stream's first;
* signed-through, last checkpoint, failing signatures and the window at the end of the
  slice combine the true state at the sync point with what the worker placed after it.
The guess only decides how soon a sync point matches; no failure it causes is kept.
Failures are sorted by (line, content before placement, emission order): the sequential
pass emits all of a line's failures when it is fed, and a line belongs to one stream.

Fallback. A stream whose head holds all its records in the slice is simply replayed. When
no sync point of a longer head matches (a slice boundary inside a reordered run or a gap
still open, records after a closing checkpoint, a stream far behind its window), the
parent reads the slice again and re-sequences that stream from the true state, parsing
only (`locate`: no content hashing, whose verdicts are the worker's; checkpoints replayed
are verified again), until one of the worker's later sync points (one per `stride`
records) matches, or to the end of the slice. That is the honest fallback: exact, serial,
about a quarter of a full verification per record it covers; a stream that never
matches (a closed stream that goes on) costs the parent its whole slice.

Stores. audit.query.parallel_verify verifies a stored stream the same way: a worker feeds
`SliceVerifier.feed_stored` the records of a sequence range, the parent calls `join` with
each result in order, and the fallback's re-read places records with `RecordLocator`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.integrity.keys import Verifier
from audit.integrity.verify import (
    ChainVerifier,
    Failure,
    FailureKind,
    StreamReport,
    _Entry,
    _placement,
    locate,
)

# Below this a slice costs more to start and join than it saves.
MIN_SLICE_BYTES = 4 << 20
# Slices per job: workers that finish early take another, so one slow slice does not idle
# the others, and the parent joins early slices while later ones run.
SLICES_PER_JOB = 4

_Key = tuple[str, str]  # (tenant, stream)
_Slot = tuple[int, str, int]  # (sequence, hash, line) in the window of recent records
_Sync = tuple[int, int, str, int, bool]  # (line, expected, head hash, head line, closed)


def default_jobs() -> int:
    """The cores this process may run on (os.process_cpu_count from Python 3.13)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return int(count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Tuning:
    """How much a worker hands back for the join; the failures never depend on it.

    `head`: records per stream and slice handed back for replay: this many, then on to the
    next plain state (a boundary inside a reordered run settles within about a window),
    at most head + 2·window + 2. `stride`: records between later sync points, which the
    fallback tries (None: the window)."""

    head: int = 64
    stride: int | None = None


@dataclass(frozen=True, slots=True)
class _Slice:
    path: str
    start: int  # byte offset of its first line
    end: int  # byte offset past its last line
    first_line: int  # number of its first line in the whole input


@dataclass(frozen=True, slots=True)
class _Lookup:
    """A record more than one sequence behind `expected`, judged by window slot `seen`."""

    entry: _Entry
    expected: int
    seen: _Slot | None


@dataclass(frozen=True, slots=True)
class _Flush:
    """Checkpoint `proof` verified while the worker held the failing signatures `bad`."""

    proof: _Entry
    bad: tuple[_Entry, ...]


_Item = Failure | _Lookup | _Flush


@dataclass(slots=True)
class _Track:
    """A worker's account of one stream in its slice."""

    head: list[_Entry] = field(default_factory=list)
    shipping: bool = True  # still adding to head
    syncs: list[_Sync] = field(default_factory=list)
    next_sync: int = 0  # records placed before the next sync point after the head
    items: list[tuple[int, list[_Item]]] = field(default_factory=list)  # placement, by line


@dataclass(slots=True)
class _StreamSummary:
    head: list[_Entry]
    complete: bool  # head holds every record of the stream in the slice
    syncs: list[_Sync]
    items: list[tuple[int, list[_Item]]]
    final: StreamReport  # its `recent` emptied: the window travels as `ring`
    ring: list[_Slot]


@dataclass(slots=True)
class SliceResult:
    lines: int
    content: list[tuple[int, list[Failure]]]
    streams: dict[_Key, _StreamSummary]


class SliceVerifier(ChainVerifier):
    """The sequential verifier on one slice, from a guessed state per stream, keeping what
    the join needs. Only the three decisions that read state from before the slice, and
    that the join cannot replay, are deferred to it as markers."""

    def __init__(self, key: Verifier, *, strict: bool, window: int, tuning: Tuning) -> None:
        super().__init__(key, strict=strict, window=window)
        self._head = max(1, tuning.head)
        self._head_cap = self._head + 2 * window + 2
        self._stride = max(1, tuning.stride or window)
        self._tracks: dict[int, _Track] = {}  # by id() of the stream's state
        self._track = _Track()
        self._split = -1  # index in _out where the current line's placement failures start
        self._marks: list[tuple[int, _Lookup | _Flush]] = []  # (index in _out, marker)
        self._content: list[tuple[int, list[Failure]]] = []

    def run(self, lines: Iterable[tuple[int, bytes]]) -> SliceResult:
        content = self._content
        feed = self.feed
        for number, line in lines:
            self._split = -1
            found = feed(number, line)
            if found or self._marks:
                self._collect(number, found, content)
        return self.result()

    def feed_stored(self, number: int, record: dict[str, Any]) -> None:
        """Line `number` of the slice is a store's record (`ChainVerifier.feed_record`)."""
        self._split = -1
        found = self.feed_record(number, record)
        if found or self._marks:
            self._collect(number, found, self._content)

    def result(self) -> SliceResult:
        """What the join needs, once every line of the slice was fed."""
        content = self._content
        streams: dict[_Key, _StreamSummary] = {}
        for key, state in self.streams.items():
            track = self._tracks[id(state)]
            ring = [slot for slot in state.recent if slot is not None]
            state.recent = []
            streams[key] = _StreamSummary(
                track.head, len(track.head) == state.records, track.syncs, track.items, state, ring
            )
        return SliceResult(self.lines, content, streams)

    def _collect(
        self, number: int, found: list[Failure], content: list[tuple[int, list[Failure]]]
    ) -> None:
        split = self._split if self._split >= 0 else len(found)
        if split:
            content.append((number, found[:split]))
        marks = self._marks
        if len(found) > split or marks:
            items: list[_Item] = []
            m = 0
            for i in range(split, len(found)):
                while m < len(marks) and marks[m][0] <= i:
                    items.append(marks[m][1])
                    m += 1
                items.append(found[i])
            items.extend(mark for _, mark in marks[m:])
            self._track.items.append((number, items))
            self._marks = []

    def _sequence(
        self,
        state: StreamReport,
        line_no: int,
        seq: int,
        stored: str,
        prev: str,
        cp: tuple[str | None, str | None, bool] | None,
    ) -> None:
        track = self._tracks.get(id(state))
        if track is None:
            track = self._tracks[id(state)] = _Track()
            # The guess: the chain continues cleanly into this record. head_line -1 marks
            # it unknown; the record always extends, so no sync point can carry it.
            state.expected, state.head_hash, state.head_line = seq, prev, -1
        self._track = track
        self._split = len(self._out)
        super()._sequence(state, line_no, seq, stored, prev, cp)
        plain = not state.pending and state.rival is None and state.linked
        if track.shipping:
            track.head.append(_Entry(line_no, seq, stored, prev, cp))
            if plain:
                track.syncs.append(_sync_point(line_no, state))
            if (plain and len(track.head) >= self._head) or len(track.head) >= self._head_cap:
                track.shipping = False
                track.next_sync = state.records + self._stride
        elif plain and state.records >= track.next_sync:
            track.syncs.append(_sync_point(line_no, state))
            track.next_sync = state.records + self._stride

    def _late(self, state: StreamReport, entry: _Entry) -> None:
        if entry.seq >= state.expected - 1:
            # The head's own slot: the worker placed the head (a sync point requires it).
            super()._late(state, entry)
            return
        seen = state.recent[entry.seq % self.window]
        self._marks.append((len(self._out), _Lookup(entry, state.expected, seen)))

    def _first_wrong_key(self, state: StreamReport) -> bool:
        return True  # the join keeps the stream's first

    def _redeem(self, state: StreamReport, proof: _Entry) -> None:
        self._marks.append((len(self._out), _Flush(proof, tuple(state.unredeemed))))
        state.unredeemed.clear()


def _sync_point(line: int, state: StreamReport) -> _Sync:
    return (line, state.expected, state.head_hash, state.head_line, state.closed)


@dataclass(slots=True)
class _Join:
    """One stream of one slice while the parent replays it."""

    state: StreamReport
    summary: _StreamSummary
    after: int = 0  # last line replayed
    sync: int = 0  # index of the next sync point to try


class ParallelVerifier(ChainVerifier):
    """A `ChainVerifier` for files, verified on worker processes and joined here: the same
    failures, counts, streams and line count as feeding every line to `ChainVerifier`.

    `joined` tallies how the join went, for benchmarks and tests: records `replayed` here
    (from heads, and of them `reparsed` from the file by the fallback), stream slices
    `synced` or replayed to their end (`unsynced`), and the markers settled from the true
    state (`lookups`, `carried_signatures`, `wrong_keys_dropped`). `join_seconds`: time
    this process spent joining, the part of the work that does not parallelise."""

    def __init__(self, key: Verifier, *, strict: bool = False, window: int = 1024) -> None:
        super().__init__(key, strict=strict, window=window)
        self.joined: Counter[str] = Counter()
        self.join_seconds = 0.0

    def verify(
        self,
        paths: Sequence[Path | str],
        *,
        jobs: int,
        slice_bytes: int | None = None,
        executor: Executor | None = None,
        progress: Callable[[int], object] | None = None,
        tuning: Tuning | None = None,
    ) -> Iterator[list[Failure]]:
        """Verify `paths` as one input (line numbers run on from file to file) and yield
        its failures in the sequential order, end-of-input ones (`finish`) last. `jobs` 1,
        or one slice and no `executor`, is the sequential pass in this process.
        `progress` gets the bytes of each slice as it is joined."""
        names = [os.fspath(p) for p in paths]
        total = sum(os.path.getsize(name) for name in names)
        size = slice_bytes or max(MIN_SLICE_BYTES, -(-total // (max(jobs, 1) * SLICES_PER_JOB)))
        cuts = _plan(names, max(1, size))
        # Purged ranges (skip_purged) are known to this process only: workers would place
        # records across them wrongly, so such a stream is verified here.
        purged = any(state.purged for state in self.streams.values())
        if jobs <= 1 or purged or (executor is None and len(cuts) <= 1):
            yield from self._sequential(names, progress)
            return
        pool = executor or ProcessPoolExecutor(max_workers=jobs, mp_context=worker_context())
        try:
            counts = pool.map(_count_lines, *zip(*cuts, strict=True)) if cuts else []
            slices, first = [], 1
            for (name, start, end), lines in zip(cuts, counts, strict=True):
                slices.append(_Slice(name, start, end, first))
                first += lines
            pem = self.key.pem()
            tune = tuning or Tuning()
            futures = [
                pool.submit(_verify_slice, piece, pem, self.strict, self.window, tune)
                for piece in slices
            ]
            for piece, future in zip(slices, futures, strict=True):
                result = future.result()
                found = [f for _, f in self.join(result, partial(_located, piece))]
                if progress is not None:
                    progress(piece.end - piece.start)
                if found:
                    yield found
        finally:
            if executor is None:
                pool.shutdown(wait=True, cancel_futures=True)
        found = self.finish()
        if found:
            yield found

    def _sequential(
        self, names: list[str], progress: Callable[[int], object] | None
    ) -> Iterator[list[Failure]]:
        number = 0
        for name in names:
            with open(name, "rb") as handle:
                for line in handle:
                    number += 1
                    if progress is not None:
                        progress(len(line))
                    if line.strip() and (found := self.feed(number, line)):
                        yield found
        found = self.finish()
        if found:
            yield found

    # -- joining ------------------------------------------------------------------------

    def join(
        self, result: SliceResult, reread: Callable[[int], Iterable[tuple[_Key, _Entry]]]
    ) -> list[tuple[int, Failure]]:
        """Join the next slice's `result` onto the true state: its failures in the sequential
        order, each with the line whose feeding made it certain in the sequential pass.
        `reread(after)`: the slice's records after line `after` as `locate` places them,
        for the fallback (one stream at least behind at that line)."""
        began = time.perf_counter()
        try:
            return self._join_slice(result, reread)
        finally:
            self.join_seconds += time.perf_counter() - began

    def _join_slice(
        self, result: SliceResult, reread: Callable[[int], Iterable[tuple[_Key, _Entry]]]
    ) -> list[tuple[int, Failure]]:
        # (line, 0 content / 1 placement, order within the line, failure)
        tagged: list[tuple[int, int, int, Failure]] = []
        for number, found in result.content:
            for i, failure in enumerate(found):
                self.counts[failure.kind] += 1
                tagged.append((number, 0, i, failure))
        self.lines += result.lines
        behind: dict[_Key, _Join] = {}
        for key, summary in result.streams.items():
            state = self.streams.get(key)
            if state is None:
                state = self.streams[key] = StreamReport(
                    key[1], key[0], recent=[None] * self.window
                )
            state.records += summary.final.records
            join = _Join(state, summary)
            for entry in summary.head:
                if self._replay(join, entry, tagged):
                    break
            else:
                if summary.complete:
                    self.joined["unsynced"] += 1
                else:
                    behind[key] = join
        if behind:
            self._catch_up(reread(min(join.after for join in behind.values())), behind, tagged)
        tagged.sort(key=lambda t: (t[0], t[1], t[2]))
        return [(t[0], t[3]) for t in tagged]

    def _replay(
        self, join: _Join, entry: _Entry, tagged: list[tuple[int, int, int, Failure]]
    ) -> bool:
        """Place `entry` on the true state; True (and the worker's rest adopted) when the
        worker's state after it matches."""
        self._out = []
        state = join.state
        self.joined["replayed"] += 1
        self._sequence(state, entry.line, entry.seq, entry.hash, entry.prev, entry.checkpoint)
        tagged.extend((entry.line, 1, i, failure) for i, failure in enumerate(self._out))
        join.after = entry.line
        syncs = join.summary.syncs
        while join.sync < len(syncs) and syncs[join.sync][0] < entry.line:
            join.sync += 1
        if join.sync == len(syncs) or syncs[join.sync][0] != entry.line:
            return False
        _, expected, head_hash, head_line, closed = syncs[join.sync]
        join.sync += 1
        if (
            state.pending
            or state.rival is not None
            or not state.linked
            or state.expected != expected
            or state.head_hash != head_hash
            or state.head_line != head_line
            or state.closed != closed
        ):
            return False
        self._adopt(join, tagged)
        return True

    def _adopt(self, join: _Join, tagged: list[tuple[int, int, int, Failure]]) -> None:
        """From the sync point on, the worker's placement failures are the sequential ones;
        markers are settled against the true state at the sync point."""
        state, summary, synced = join.state, join.summary, join.after
        self.joined["synced"] += 1
        floor = state.expected  # placed after the sync point <=> sequence >= floor
        for number, items in summary.items:
            if number <= synced:
                continue
            self._out = []
            for item in items:
                if isinstance(item, Failure):
                    if item.kind is FailureKind.WRONG_KEY and not self._first_wrong_key(state):
                        self.joined["wrong_keys_dropped"] += 1
                        continue
                    self.counts[item.kind] += 1
                    self._out.append(item)
                elif isinstance(item, _Lookup):
                    seen = item.seen
                    if seen is None or seen[0] < floor:
                        seen = state.recent[item.entry.seq % self.window]
                        self.joined["lookups"] += 1
                    # Only what the verdict reads: the seq is below expected - 1, so no rival.
                    view = StreamReport(state.stream, state.tenant, expected=item.expected)
                    self._judge_late(view, item.entry, seen)
                else:
                    self.joined["carried_signatures"] += len(state.unredeemed)
                    bad = state.unredeemed + [cp for cp in item.bad if cp.seq >= floor]
                    state.unredeemed = []
                    self._bad_signatures(state, item.proof, bad)
            tagged.extend((number, 1, i, failure) for i, failure in enumerate(self._out))
        final = summary.final
        state.expected, state.linked, state.closed = final.expected, final.linked, final.closed
        state.head_hash, state.head_line = final.head_hash, final.head_line
        state.pending, state.rival = final.pending, final.rival
        for slot in summary.ring:
            if slot[0] >= floor:
                state.recent[slot[0] % self.window] = slot
        state.unredeemed = state.unredeemed + [cp for cp in final.unredeemed if cp.seq >= floor]
        if final.signed_through >= floor:
            state.signed_through = final.signed_through
        if final.last_checkpoint >= floor:
            state.last_checkpoint = final.last_checkpoint

    def _catch_up(
        self,
        located: Iterable[tuple[_Key, _Entry]],
        behind: dict[_Key, _Join],
        tagged: list[tuple[int, int, int, Failure]],
    ) -> None:
        """The fallback: re-sequence the streams no head sync point matched, from the slice
        read again, until a later sync point matches or the slice ends."""
        for key, entry in located:
            join = behind.get(key)
            if join is None or entry.line <= join.after:
                continue
            self.joined["reparsed"] += 1
            if self._replay(join, entry, tagged):
                del behind[key]
                if not behind:
                    return
        self.joined["unsynced"] += len(behind)


# -- worker side ----------------------------------------------------------------------------

_KEYS: dict[bytes, Verifier] = {}


def verifier_from_pem(pem: bytes) -> Verifier:
    """The stream key in a worker (a key object does not pickle; its PEM does), parsed
    once per worker process."""
    key = _KEYS.get(pem)
    if key is None:
        public = serialization.load_pem_public_key(pem)
        assert isinstance(public, Ed25519PublicKey)
        key = _KEYS[pem] = Verifier.from_key(public)
    return key


def _verify_slice(
    piece: _Slice, pem: bytes, strict: bool, window: int, tuning: Tuning
) -> SliceResult:
    verifier = SliceVerifier(verifier_from_pem(pem), strict=strict, window=window, tuning=tuning)
    return verifier.run(_read(piece))


def _located(piece: _Slice, after: int) -> Iterator[tuple[_Key, _Entry]]:
    for number, line in _read(piece):
        if number > after and (found := locate(number, line)) is not None:
            yield found


class RecordLocator(ChainVerifier):
    """`locate` for records read from a store: where `feed_record` would place each,
    checking nothing (its routing, values a canonical round trip changes going through
    the canonical line, is the verifier's own)."""

    def __init__(self) -> None:
        # No key: placing a record reads none, and no checkpoint is verified here.
        super().__init__(cast(Verifier, None))
        self._found: tuple[_Key, _Entry] | None = None

    def locate(self, number: int, record: dict[str, Any]) -> tuple[_Key, _Entry] | None:
        self._found = None
        self.feed_record(number, record)
        return self._found

    def _check(self, line_no: int, rec: Any, line: bytes | str | None) -> list[Failure]:
        placed = _placement(rec)
        if placed is not None:
            key, seq, stored, prev, cp = placed
            self._found = key, _Entry(line_no, seq, stored, prev, cp)
        return []


def _read(piece: _Slice) -> Iterator[tuple[int, bytes]]:
    """The slice's non-blank lines with their numbers, as the sequential pass reads them."""
    with open(piece.path, "rb") as handle:
        handle.seek(piece.start)
        at, number = piece.start, piece.first_line
        for line in handle:
            if at >= piece.end:
                return
            at += len(line)
            if line.strip():
                yield number, line
            number += 1


def _count_lines(path: str, start: int, end: int) -> int:
    lines, last, left = 0, b"\n", end - start
    with open(path, "rb") as handle:
        handle.seek(start)
        while left > 0 and (chunk := handle.read(min(left, 1 << 22))):
            lines += chunk.count(b"\n")
            last, left = chunk[-1:], left - len(chunk)
    # A file's last line may lack its newline and is a line all the same.
    return lines + (last != b"\n")


def _plan(names: list[str], size: int) -> list[tuple[str, int, int]]:
    """Byte ranges of about `size`, each starting at a line start."""
    cuts: list[tuple[str, int, int]] = []
    for name in names:
        total = os.path.getsize(name)
        with open(name, "rb") as handle:
            start = 0
            while start < total:
                end = start + size
                if end < total:
                    handle.seek(end - 1)
                    handle.readline()  # to the end of the line holding byte end - 1
                    end = handle.tell()
                end = min(end, total)
                cuts.append((name, start, end))
                start = end
    return cuts


def worker_context(preload: Sequence[str] = ()) -> BaseContext:
    """How worker processes start; `preload`: modules of the workers' function beside this
    one, imported once by a forkserver."""
    methods = get_all_start_methods()
    # fork starts workers in milliseconds and does not re-import the caller's main module,
    # but is only safe while this process runs no other thread: a lock another thread holds
    # at the fork stays held in the child. Otherwise forkserver, from a clean process, with
    # this module preloaded so that each worker starts cheaply.
    if "fork" in methods and threading.active_count() == 1:
        return get_context("fork")
    if "forkserver" in methods:
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload([__name__, *preload])
        return ctx
    return get_context("spawn")
