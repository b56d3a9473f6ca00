"""`verify --jobs N`: the parallel verifier reports exactly what the sequential one does.

The property test tampers with several interleaved streams in every way the verifier knows,
writes them to one or more files and compares the parallel pass, cut into slices as small
as one line (and smaller than the reorder window), with feeding every line to
`ChainVerifier`: the failures (kind, stream, line, sequence, detail, order), the counts and
each stream's whole final state. Small heads and strides make the join use every path:
sync points, markers settled from the true state, and the fallback.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.integrity.canonical import canonicalize
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.contexts import checkpoint_message
from audit.integrity.keys import Keyring, Signer, Verifier
from audit.integrity.parallel import ParallelVerifier, Tuning, worker_context
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.seal import Sealer
from audit.integrity.verify import ChainVerifier, Failure, FailureKind, PurgedRange

from .conftest import T0, load, rehash, sample_event

K = FailureKind
SIGNER = Signer.generate()
OTHER = Signer.generate()
KEYRING = Keyring.generate()
# (tenant, stream, events, checkpoint every): two streams share a name, not a tenant.
STREAMS = (("acme", "a", 30, 4), ("acme", "b", 18, 6), ("other", "a", 12, 3))
CHECKPOINT = b'"audit.checkpoint"'


def seal_stream(tenant: str, stream: str, n: int, every: int) -> list[bytes]:
    sealer = Sealer(
        ChainWriter(stream, tenant, SIGNER, policy=CheckpointPolicy(every, None)),
        Pseudonymizer(KEYRING, tenant),
    )
    records = []
    for i in range(n):
        records += sealer.seal(sample_event(i))
    records += sealer.close(T0 + timedelta(hours=1))
    return [r.line for r in records]


BASE = [seal_stream(*spec) for spec in STREAMS]


@pytest.fixture(scope="module")
def pool() -> Iterator[Executor]:
    with ProcessPoolExecutor(max_workers=2, mp_context=worker_context()) as executor:
        yield executor


# -- tampering ------------------------------------------------------------------------------


def _relinked(lines: list[bytes], start: int) -> None:
    """Re-link every record after `start` to its predecessor, as a forger without the key."""
    prev = load(lines[start])["event.hash"]
    for i in range(start + 1, len(lines)):
        rec = load(lines[i])
        rec["ffaudit.prev"] = prev
        lines[i] = canonicalize(rehash(rec))
        prev = rec["event.hash"]


def _with(line: bytes, **changes: Any) -> bytes:
    rec = load(line)
    for name, value in changes.items():
        rec[name.replace("__", ".")] = value
    return canonicalize(rec)


def tamper(lines: list[bytes], op: str, pos: int, amount: int) -> None:
    if not lines:
        return
    i = pos % len(lines)
    checkpoints = [n for n, line in enumerate(lines) if CHECKPOINT in line]
    cp = checkpoints[pos % len(checkpoints)] if checkpoints else None
    if op == "swap":
        j = min(len(lines) - 1, i + amount)
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "move":
        moved = lines.pop(i)
        lines.insert(max(0, i + (amount if pos % 2 else -amount)), moved)
    elif op == "delete":
        del lines[i : i + 1 + amount // 8]
    elif op == "duplicate":
        lines.insert(min(len(lines), i + amount), lines[i])
    elif op == "insert":  # another record claiming the same sequence, linking alike
        forged = rehash({**load(lines[i]), "event.outcome": "failure", "event.id": f"f{pos}"})
        lines.insert(i + amount % 3, canonicalize(forged))
    elif op == "edit":
        lines[i] = canonicalize({**load(lines[i]), "event.id": f"edited-{pos}"})
    elif op == "relink":  # edited and re-hashed: the successor's link breaks
        lines[i] = canonicalize(rehash({**load(lines[i]), "event.id": f"rehashed-{pos}"}))
    elif op == "forge":  # edited, then every later record re-linked: only signatures tell
        lines[i] = canonicalize(rehash({**load(lines[i]), "event.id": f"forged-{pos}"}))
        _relinked(lines, i)
    elif op == "unsign" and cp is not None:
        rec = load(lines[cp])
        rec.pop("ffaudit.signature", None)
        lines[cp] = canonicalize(rec)
    elif op == "damage" and cp is not None:  # decodable: bad_signature or forged_chain
        try:
            raw = bytearray(base64.b64decode(load(lines[cp])["ffaudit.signature"], validate=True))
        except (KeyError, ValueError):  # unsigned or garbled already
            return
        raw[amount % len(raw)] ^= 1
        lines[cp] = _with(lines[cp], ffaudit__signature=base64.b64encode(raw).decode())
    elif op == "garble" and cp is not None:
        lines[cp] = _with(lines[cp], ffaudit__signature="not base64!")
    elif op == "resign" and cp is not None:  # a checkpoint by another key, re-hashed
        rec = rehash({**load(lines[cp]), "ffaudit.checkpoint.signer": OTHER.verifier.fingerprint})
        signature = OTHER.sign(checkpoint_message(rec["event.hash"]))
        rec["ffaudit.signature"] = base64.b64encode(signature).decode()
        lines[cp] = canonicalize(rec)
        if amount % 2:
            _relinked(lines, cp)
    elif op == "truncate":
        del lines[max(1, len(lines) - amount) :]
    elif op == "append":  # records after the closing checkpoint
        last = load(lines[-1])
        for k in range(1 + amount % 3):
            extra = {
                **load(lines[i]),
                "event.sequence": last["event.sequence"] + 1,
                "ffaudit.prev": last["event.hash"],
                "event.id": f"late-{pos}-{k}",
            }
            last = rehash(extra)
            lines.append(canonicalize(last))
    elif op == "crlf":
        lines[i] = lines[i] + b"\r"
    elif op == "junk":
        junk = [b"{not json", b"[1, 2]", b'{"event.sequence": 4}', b'"x"', b"{}"]
        lines.insert(i, junk[amount % len(junk)])
    elif op == "blank":
        lines.insert(i, b" " * (amount % 3))
    elif op == "tenant":  # a tenant that is not a string: its own stream, keyed by repr
        lines[i] = canonicalize(rehash({**load(lines[i]), "ffaudit.tenant": amount}))


LINE_OPS = frozenset({"crlf", "junk", "blank"})
OPS = (
    "swap",
    "move",
    "delete",
    "duplicate",
    "insert",
    "edit",
    "relink",
    "forge",
    "unsign",
    "damage",
    "garble",
    "resign",
    "truncate",
    "append",
    "crlf",
    "junk",
    "blank",
    "tenant",
)


def build(
    ops: list[tuple[str, int, int, int]], seed: int, files: int, newline: bool, tmp: Path
) -> list[Path]:
    streams = [list(lines) for lines in BASE]
    # Lines that are no longer records last: the other operations read records.
    for op, which, pos, amount in sorted(ops, key=lambda o: o[0] in LINE_OPS):
        tamper(streams[which], op, pos, amount)
    rng = random.Random(seed)
    merged: list[bytes] = []
    while any(streams):
        # Uneven weights: runs of one stream, and one stream sparse among the others.
        pick = rng.choices([s for s in streams if s], weights=[4, 2, 1][: sum(map(bool, streams))])
        merged.append(pick[0].pop(0))
    cuts = sorted(rng.sample(range(len(merged) + 1), files - 1)) if files > 1 else []
    paths = []
    for n, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(merged)], strict=True)):
        path = tmp / f"part-{n}.ndjson"
        last = n == files - 1
        path.write_bytes(
            b"\n".join(merged[a:b]) + (b"\n" if b > a and (newline or not last) else b"")
        )
        paths.append(path)
    return paths


# -- running both ---------------------------------------------------------------------------


def sequential(
    key: Verifier, paths: list[Path], strict: bool, window: int
) -> tuple[list[Failure], ChainVerifier]:
    verifier = ChainVerifier(key, strict=strict, window=window)
    found: list[Failure] = []
    number = 0
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                number += 1
                if line.strip():
                    found += verifier.feed(number, line)
    found += verifier.finish()
    return found, verifier


def parallel(
    key: Verifier,
    paths: list[Path],
    strict: bool,
    window: int,
    executor: Executor,
    slice_bytes: int,
    tuning: Tuning,
) -> tuple[list[Failure], ParallelVerifier]:
    verifier = ParallelVerifier(key, strict=strict, window=window)
    batches = verifier.verify(
        paths, jobs=2, slice_bytes=slice_bytes, executor=executor, tuning=tuning
    )
    return [failure for batch in batches for failure in batch], verifier


def assert_same(
    key: Verifier,
    paths: list[Path],
    strict: bool,
    window: int,
    executor: Executor,
    slice_bytes: int,
    tuning: Tuning,
) -> ParallelVerifier:
    want, reference = sequential(key, paths, strict, window)
    got, verifier = parallel(key, paths, strict, window, executor, slice_bytes, tuning)
    assert got == want
    assert verifier.counts == reference.counts
    assert verifier.lines == reference.lines
    assert verifier.ok == reference.ok
    # Every stream's whole final state, window of recent hashes included, in stream order.
    assert list(verifier.streams.items()) == list(reference.streams.items())
    return verifier


SLICES = st.one_of(st.integers(1, 64), st.integers(300, 8000), st.just(1 << 30))
TUNINGS = st.builds(
    Tuning, head=st.sampled_from([1, 2, 3, 5, 64]), stride=st.sampled_from([None, 1, 2, 4])
)


@settings(
    max_examples=int(os.environ.get("FFAUDIT_PARALLEL_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(OPS), st.integers(0, 2), st.integers(0, 10_000), st.integers(1, 40)
        ),
        max_size=6,
    ),
    seed=st.integers(0, 2**32),
    files=st.integers(1, 3),
    newline=st.booleans(),
    strict=st.booleans(),
    window=st.sampled_from([1, 2, 3, 5, 8, 1024]),
    foreign=st.sampled_from([False, False, False, True]),
    runs=st.lists(st.tuples(SLICES, TUNINGS), min_size=1, max_size=2),
)
def test_parallel_equals_sequential(
    pool: Executor,
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, int, int, int]],
    seed: int,
    files: int,
    newline: bool,
    strict: bool,
    window: int,
    foreign: bool,
    runs: list[tuple[int, Tuning]],
) -> None:
    paths = build(ops, seed, files, newline, tmp_path_factory.mktemp("chains"))
    key = (OTHER if foreign else SIGNER).verifier
    for slice_bytes, tuning in runs:
        assert_same(key, paths, strict, window, pool, slice_bytes, tuning)


# -- the boundary cases, one at a time, with the join path each one takes -------------------

ONE_LINE = 1  # slice bytes: every line its own slice


def lines_of(which: int = 0) -> list[bytes]:
    return list(BASE[which])


def write(tmp_path: Path, lines: list[bytes]) -> list[Path]:
    path = tmp_path / "records.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return [path]


@pytest.fixture
def threads() -> Iterator[Executor]:
    # Threads share this process: the join's tallies are what the test reads, not speed.
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def check(
    tmp_path: Path,
    lines: list[bytes],
    executor: Executor,
    *,
    window: int = 8,
    strict: bool = True,
    head: int = 1,
    stride: int | None = 1,
    key: Verifier = SIGNER.verifier,
) -> tuple[list[tuple[str, int | None, int | None]], Counter[str]]:
    """The sequential failures, after checking the parallel ones equal them with slices of
    one line and of a few (~950 bytes a line); and how the joins went, all runs together."""
    paths = write(tmp_path, lines)
    tuning = Tuning(head=head, stride=stride)
    joined: Counter[str] = Counter()
    for slice_bytes in (ONE_LINE, 2000, 3000, 4500):
        verifier = assert_same(key, paths, strict, window, executor, slice_bytes, tuning)
        joined += verifier.joined
    found, _ = sequential(key, paths, strict, window)
    return [(f.kind.value, f.line, f.sequence) for f in found], joined


def test_intact_chain_syncs_on_every_slice(tmp_path: Path, threads: Executor) -> None:
    found, joined = check(tmp_path, lines_of(), threads)
    assert found == []
    assert joined["reparsed"] == 0
    assert joined["unsynced"] == 0


def test_reorder_across_a_boundary_falls_back(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    lines[9], lines[12] = lines[12], lines[9]
    found, joined = check(tmp_path, lines, threads)
    assert (K.REORDERED, 13, 10) in found
    assert joined["reparsed"] > 0


def test_duplicate_of_an_earlier_slice_is_settled_from_the_true_window(
    tmp_path: Path, threads: Executor
) -> None:
    lines = lines_of()
    lines.insert(20, lines[12])  # sequence 13 again, 7 behind: inside a window of 8
    found, joined = check(tmp_path, lines, threads, head=3, stride=1)
    assert found == [(K.DUPLICATE, 21, 13)]
    assert joined["lookups"] > 0


def test_rival_across_a_boundary(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    forged = rehash({**load(lines[10]), "event.outcome": "failure", "event.id": "forged"})
    lines.insert(11, canonicalize(forged))
    found, _ = check(tmp_path, lines, threads)
    assert found == [(K.INSERTED, 12, 11)]


def test_damaged_signature_redeemed_in_a_later_slice(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    checkpoints = [n for n, line in enumerate(lines) if CHECKPOINT in line]
    rec = load(lines[checkpoints[1]])
    raw = bytearray(base64.b64decode(rec["ffaudit.signature"]))
    raw[3] ^= 1
    lines[checkpoints[1]] = _with(
        lines[checkpoints[1]], ffaudit__signature=base64.b64encode(raw).decode()
    )
    found, joined = check(tmp_path, lines, threads, head=2, stride=1)
    line = checkpoints[1] + 1
    assert found == [(K.BAD_SIGNATURE, line, line)]
    assert joined["carried_signatures"] > 0


def test_forged_chain_spans_slices(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    tamper(lines, "forge", 12, 1)
    found, _ = check(tmp_path, lines, threads)
    assert [kind for kind, _, _ in found] == [K.FORGED_CHAIN]


def test_wrong_key_is_reported_once_across_slices(tmp_path: Path, threads: Executor) -> None:
    found, joined = check(tmp_path, lines_of(), threads, key=OTHER.verifier)
    assert [kind for kind, _, _ in found] == [K.WRONG_KEY]
    assert joined["wrong_keys_dropped"] > 0


def test_records_after_the_closing_checkpoint_in_later_slices(
    tmp_path: Path, threads: Executor
) -> None:
    lines = lines_of()
    tamper(lines, "append", 2, 2)
    found, _ = check(tmp_path, lines, threads)
    assert [kind for kind, _, _ in found] == [K.INSERTED] * 3


def test_truncated_and_gapped_streams(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    del lines[7:9]
    del lines[-3:]
    found, _ = check(tmp_path, lines, threads, window=3)
    assert [kind for kind, _, _ in found] == [K.GAP, K.TRUNCATED]


def test_moved_beyond_the_window(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    lines.insert(25, lines.pop(4))
    found, _ = check(tmp_path, lines, threads, window=4)
    assert (K.REORDERED, 26, 5) in found


def test_interleaved_streams_and_files(tmp_path: Path, pool: Executor) -> None:
    ops = [("swap", 0, 10, 2), ("duplicate", 1, 5, 3), ("damage", 2, 1, 7), ("junk", 0, 3, 1)]
    paths = build(ops, seed=7, files=3, newline=False, tmp=tmp_path)
    for slice_bytes in (1, 500, 2000, 1 << 30):
        assert_same(SIGNER.verifier, paths, True, 4, pool, slice_bytes, Tuning(head=2, stride=2))


def test_jobs_1_is_the_sequential_path(tmp_path: Path) -> None:
    class Refusing(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("--jobs 1 used a worker")

    lines = lines_of()
    lines[3], lines[4] = lines[4], lines[3]
    paths = write(tmp_path, lines)
    want, reference = sequential(SIGNER.verifier, paths, True, 8)
    verifier = ParallelVerifier(SIGNER.verifier, strict=True, window=8)
    with Refusing() as refusing:
        got = [
            f
            for batch in verifier.verify(paths, jobs=1, slice_bytes=1, executor=refusing)
            for f in batch
        ]
    assert got == want
    assert list(verifier.streams.items()) == list(reference.streams.items())
    assert not verifier.joined


def test_purged_ranges_are_verified_in_this_process(tmp_path: Path, threads: Executor) -> None:
    lines = lines_of()
    records = [load(line) for line in lines]
    purged = PurgedRange(5, 8, records[4]["ffaudit.prev"], records[7]["event.hash"])
    paths = write(tmp_path, lines[:4] + lines[8:])
    reference = ChainVerifier(SIGNER.verifier, window=4)
    reference.skip_purged("acme", "a", [purged])
    want: list[Failure] = []
    with paths[0].open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            want += reference.feed(number, line)
    want += reference.finish()
    verifier = ParallelVerifier(SIGNER.verifier, window=4)
    verifier.skip_purged("acme", "a", [purged])
    batches = verifier.verify(paths, jobs=2, slice_bytes=1, executor=threads)
    assert [f for batch in batches for f in batch] == want == []
    assert list(verifier.streams.items()) == list(reference.streams.items())
    assert not verifier.joined


# -- the command ----------------------------------------------------------------------------


def ffaudit(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_cli_jobs_matches_jobs_1(tmp_path: Path) -> None:
    """A file past the smallest slice, so that --jobs 2 does run two workers."""
    pub = tmp_path / "signing.pub"
    pub.write_bytes(SIGNER.verifier.pem())
    streams = []
    for tenant, stream in (("acme", "x"), ("acme", "y")):
        sealer = Sealer(
            ChainWriter(stream, tenant, SIGNER, policy=CheckpointPolicy(500, None)),
            Pseudonymizer(KEYRING, tenant),
        )
        records = [r for i in range(3500) for r in sealer.seal(sample_event(i))]
        records += sealer.close(T0 + timedelta(hours=2))
        streams.append([r.line for r in records])
    x, y = streams
    x[1800], x[1803] = x[1803], x[1800]
    del y[2000]
    lines = [line for pair in zip(x, y, strict=False) for line in pair] + x[len(y) :]
    path = tmp_path / "records.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert path.stat().st_size > 5 << 20
    args = ("verify", "--pubkey", str(pub), "--strict", "--window", "16")
    one = ffaudit(*args, "--jobs", "1", "--json", str(path))
    two = ffaudit(*args, "--jobs", "2", "--json", str(path))
    assert one.returncode == two.returncode == 1, two.stderr
    assert json.loads(two.stdout) == json.loads(one.stdout)
    assert [f["kind"] for f in json.loads(one.stdout)["failures"]] == ["reordered", "gap"]
    text_one = ffaudit(*args, "--jobs", "1", str(path))
    text_two = ffaudit(*args, "--jobs", "2", str(path))
    assert text_two.stdout == text_one.stdout


def test_cli_jobs_is_for_files(tmp_path: Path) -> None:
    assert ffaudit("verify", "--stream", "s", "--jobs", "2").returncode == 2
    assert ffaudit("verify", "--pubkey", "x.pub", "--jobs", "0", "x").returncode == 2
