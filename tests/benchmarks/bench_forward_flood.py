"""Forward-port flood benchmark: the service's resident memory under hostile connections.

    .venv/bin/python -m tests.benchmarks.bench_forward_flood [--connections N] [--json]

A script, not a test: nothing asserts. It starts the real service (`ffaudit serve`, SQLite
control database in a temporary directory, HTTP and forward ports on loopback) as a
subprocess for each phase, and opens N hostile connections to its forward port. Each one
sends the start of a Forward-mode frame, `[tag, <bin32 announcing ~8 MiB>, ...]`, then
only `--sent-mib` of the announced bytes, and holds the connection open. The server must
buffer an incomplete frame, so without its limits N connections could make it hold
N x frame size; with them it should hold about baseline + FFAUDIT_FORWARD_MAX_BUFFERED_BYTES.

Resident memory is VmRSS from /proc/<pid>/status, sampled every 20 ms in a thread; the
kernel's own peak (VmHWM) is reset when the flood starts (/proc/<pid>/clear_refs) and read
after it, so a spike between two samples is not missed. RSS also holds heap that glibc keeps
after free(): the environment reaches the service, so running the script under
MALLOC_MMAP_THRESHOLD_=131072 (large blocks mmap'd, returned on free) tells that share
apart from memory still in use. Who closed what comes from the server's log lines (its
reason codes: memory_budget, frame_timeout, refusals) and from the client's sockets (EOF or
reset while still holding the partial frame).

Phases (`--phases`, default all three), each on a fresh service:

- flood: no shared key (serve allows an unauthenticated forward port on loopback), the
  per-peer cap raised to max(1000, N) so that all N connections from 127.0.0.1 get in:
  peak RSS while they hold partial frames, then how many the server closes once the
  frame deadline (FFAUDIT_FORWARD_FRAME_TIMEOUT_S, `--frame-timeout`) has passed, then
  RSS after those closes and after the client dropped the rest.
- defaults: the same, with the connection caps at their defaults (64 per peer): the
  refusals. (`--sources K` spreads the connections over 127.0.0.1..K, as K attackers.)
- handshake: FFAUDIT_FORWARD_SHARED_KEY set (a throwaway value): the partial frame comes
  where the PING should, i.e. before the peer has authenticated.

The buffer budget (`--budget-mib`, 64 by default) and the frame deadline are set in every
phase so that the bound is visible; background jobs (retention, alerts, webhooks) are off
so that the baseline is quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

KIB = 1024
MIB = 1024 * KIB
SAMPLE_INTERVAL_S = 0.02
CONNECT_CONCURRENCY = 64
CONNECT_TIMEOUT_S = 10.0
SEND_CHUNK = 64 * KIB
SETTLE_S = 1.0  # quiet time before a "resting" RSS reading
TAG = b"bench.flood"
PHASES = ("flood", "defaults", "handshake")

_REFUSED = re.compile(r"forward \S+: refusing a connection: (\w+)")
_CLOSED = re.compile(r"forward \S+: closing: (\w+) \(")


# -- the service ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, ...), in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[name] = int(parts[0])
    return out


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of `pid` to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def ffaudit_command() -> list[str]:
    script = Path(sys.executable).parent / "ffaudit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "audit"]


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    base_url: str
    forward_port: int
    log_path: Path
    settings: dict[str, str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_reasons(self) -> tuple[Counter[str], Counter[str]]:
        """(refusals, closes) by the reason codes the forward server logged."""
        refused: Counter[str] = Counter()
        closed: Counter[str] = Counter()
        text = self.log_path.read_text(errors="replace")
        for m in _REFUSED.finditer(text):
            refused[m.group(1)] += 1
        for m in _CLOSED.finditer(text):
            closed[m.group(1)] += 1
        return refused, closed

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def start_service(workdir: Path, overrides: dict[str, str]) -> Service:
    """`ffaudit db upgrade`, then `ffaudit serve --no-migrate` with `overrides` on top of a
    loopback, SQLite, quiet configuration; returns once /healthz answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, forward_port = free_port(), free_port()
    settings = {
        "FFAUDIT_DATABASE_URL": f"sqlite:///{workdir}/x.db",
        "FFAUDIT_SERVICE_KEYS_DIR": str(workdir / "service-keys"),
        "FFAUDIT_KEYRINGS_DIR": str(workdir / "keyrings"),
        "FFAUDIT_EXPORTS_DIR": str(workdir / "exports"),
        "FFAUDIT_RETENTION_ARCHIVE_DIR": str(workdir / "archives"),
        "FFAUDIT_RETENTION_INTERVAL_S": "0",
        "FFAUDIT_ALERT_EVALUATION_ENABLED": "false",
        "FFAUDIT_WEBHOOK_DELIVERY_ENABLED": "false",
        "FFAUDIT_HTTP_HOST": "127.0.0.1",
        "FFAUDIT_HTTP_PORT": str(http_port),
        "FFAUDIT_FORWARD_ENABLED": "true",
        "FFAUDIT_FORWARD_HOST": "127.0.0.1",
        "FFAUDIT_FORWARD_PORT": str(forward_port),
        **overrides,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFAUDIT_")}
    env.update(settings)
    subprocess.run([*ffaudit_command(), "db", "upgrade"], env=env, check=True, capture_output=True)
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*ffaudit_command(), "serve", "--no-migrate"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(proc, f"http://127.0.0.1:{http_port}", forward_port, log_path, settings)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"ffaudit serve exited ({proc.returncode}):\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{service.base_url}/healthz").status_code == 200:
                        return service
                if time.monotonic() > deadline:
                    raise RuntimeError("ffaudit serve did not answer /healthz in 60 s")
                time.sleep(0.1)
    except BaseException:
        service.stop()
        raise


class RssSampler:
    """VmRSS of one process every SAMPLE_INTERVAL_S, in a daemon thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self.peak_kib = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                rss = proc_status(self.pid).get("VmRSS", 0)
            except OSError:
                return  # the process is gone
            with self._lock:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL_S)


# -- the hostile client --------------------------------------------------------------------


def partial_frame_head(claimed: int) -> bytes:
    """A Forward-mode frame's first bytes: fixarray(3), str8 tag, bin32 header of `claimed`
    bytes (the PackedForward entries); the bytes themselves and the option map follow."""
    return b"\x93" + b"\xd9" + bytes([len(TAG)]) + TAG + b"\xc6" + struct.pack(">I", claimed)


@dataclass
class ClientConn:
    connected: bool = False
    sent: int = 0  # bytes of the body written and drained
    send_done: bool = False
    stalled: bool = False  # a drain did not finish in time
    error: str | None = None  # connecting failed
    closed_at: float | None = None  # the server closed it (EOF or reset), s since the start
    close_kind: str = ""

    @property
    def settled(self) -> bool:
        return (
            self.error is not None or self.send_done or self.stalled or self.closed_at is not None
        )


async def _watch(reader: asyncio.StreamReader, conn: ClientConn, t0: float) -> None:
    """Read (and drop) what the server sends until it closes the connection."""
    try:
        while await reader.read(64 * KIB):
            pass
    except OSError as exc:
        conn.close_kind = type(exc).__name__
    else:
        conn.close_kind = "eof"
    conn.closed_at = time.monotonic() - t0


async def _send(
    writer: asyncio.StreamWriter,
    head: bytes,
    body: memoryview,
    conn: ClientConn,
    watcher: asyncio.Task[None],
    drain_timeout: float,
) -> None:
    writer.write(head)
    for off in range(0, len(body), SEND_CHUNK):
        if watcher.done() or writer.transport.is_closing():
            return
        piece = body[off : off + SEND_CHUNK]
        writer.write(piece)
        try:
            async with asyncio.timeout(drain_timeout):
                await writer.drain()
        except TimeoutError:
            conn.stalled = True
            return
        except OSError:
            return  # closed by the server: the watcher records it
        conn.sent += len(piece)
    conn.send_done = True


async def _hostile(
    conn: ClientConn,
    port: int,
    source: str,
    head: bytes,
    body: memoryview,
    connect_gate: asyncio.Semaphore,
    stop: asyncio.Event,
    t0: float,
    drain_timeout: float,
) -> None:
    try:
        async with connect_gate, asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
    except (OSError, TimeoutError) as exc:
        conn.error = type(exc).__name__
        return
    conn.connected = True
    watcher = asyncio.create_task(_watch(reader, conn, t0))
    try:
        await _send(writer, head, body, conn, watcher, drain_timeout)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        writer.transport.abort()


def _rss(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


async def _until(predicate: Callable[[], bool], deadline: float) -> bool:
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def flood(service: Service, sampler: RssSampler, args: argparse.Namespace) -> dict[str, Any]:
    """Open the hostile connections, hold them past the frame deadline, then drop them."""
    n = args.connections
    head = partial_frame_head(args.claim_bytes)
    body = memoryview(bytes(int(args.sent_mib * MIB)))
    sources = [f"127.0.0.{1 + i % args.sources}" for i in range(n)]
    conns = [ClientConn() for _ in range(n)]
    stop = asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    pid = service.pid
    hwm_reset = reset_peak(pid)
    sampler.reset()
    t0 = time.monotonic()
    tasks = [
        asyncio.create_task(
            _hostile(c, service.forward_port, src, head, body, gate, stop, t0, args.frame_timeout)
        )
        for c, src in zip(conns, sources, strict=True)
    ]
    out: dict[str, Any] = {}
    try:
        # 1. Every connection has sent its part of the frame (or was closed, or stalled).
        settled = await _until(
            lambda: all(c.settled for c in conns), t0 + max(args.frame_timeout, 30.0)
        )
        out["flood_s"] = round(time.monotonic() - t0, 2)
        out["flood_settled"] = settled
        await asyncio.sleep(SETTLE_S / 2)
        holding = [c for c in conns if c.connected and c.closed_at is None]
        out["holding_rss_kib"] = _rss(pid)
        out["holding_connections"] = len(holding)
        out["holding_client_bytes"] = sum(len(head) + c.sent for c in holding)
        out["closed_before_deadline"] = sum(
            1 for c in conns if c.connected and c.closed_at is not None
        )
        out["peak_rss_kib_sampled"] = sampler.peak_kib
        out["peak_rss_kib_hwm"] = proc_status(pid)["VmHWM"] if hwm_reset else None
        # 2. Idle past the frame deadline: the server should close every holder.
        await _until(
            lambda: all(c.closed_at is not None for c in holding),
            time.monotonic() + args.frame_timeout + 10.0,
        )
        closed_late = [c for c in holding if c.closed_at is not None]
        out["closed_after_deadline"] = len(closed_late)
        out["close_times_s"] = (
            [
                round(min(c.closed_at for c in closed_late if c.closed_at), 2),
                round(max(c.closed_at for c in closed_late if c.closed_at), 2),
            ]
            if closed_late
            else None
        )
        out["still_open"] = len(holding) - len(closed_late)
        await asyncio.sleep(SETTLE_S)
        out["after_timeouts_rss_kib"] = _rss(pid)
    finally:
        # 3. The client drops whatever is left.
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(SETTLE_S * 1.5)
    out["after_close_rss_kib"] = _rss(pid)
    out["peak_rss_kib_sampled"] = max(out["peak_rss_kib_sampled"], sampler.peak_kib)
    if hwm_reset:
        out["peak_rss_kib_hwm"] = proc_status(pid)["VmHWM"]
    out["client"] = {
        "opened": sum(c.connected for c in conns),
        "connect_errors": dict(Counter(c.error for c in conns if c.error)),
        "sent_whole_part": sum(c.send_done for c in conns),
        "stalled": sum(c.stalled for c in conns),
        "closed_by_server": sum(c.closed_at is not None for c in conns),
        "close_kinds": dict(Counter(c.close_kind for c in conns if c.closed_at is not None)),
        "sent_mib_total": round(sum(c.sent for c in conns) / MIB, 1),
    }
    return out


# -- phases --------------------------------------------------------------------------------


def phase_settings(phase: str, args: argparse.Namespace) -> dict[str, str]:
    settings = {
        "FFAUDIT_FORWARD_MAX_BUFFERED_BYTES": str(args.budget_mib * MIB),
        "FFAUDIT_FORWARD_FRAME_TIMEOUT_S": str(args.frame_timeout),
    }
    if phase != "defaults":
        settings["FFAUDIT_FORWARD_MAX_CONNECTIONS_PER_PEER"] = str(max(1000, args.connections))
    if phase == "handshake":
        settings["FFAUDIT_FORWARD_SHARED_KEY"] = "bench-shared-key"
    return settings


def run_phase(phase: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    service = start_service(workdir / phase, phase_settings(phase, args))
    try:
        with RssSampler(service.pid) as sampler:
            time.sleep(SETTLE_S)
            baseline = _rss(service.pid)
            result = asyncio.run(flood(service, sampler, args))
        refused, closed = service.log_reasons()
    finally:
        service.stop()
    opened = result["client"]["opened"]
    refusals = sum(refused.values())
    budget_kib = args.budget_mib * MIB // KIB
    peak = max(result["peak_rss_kib_sampled"], result["peak_rss_kib_hwm"] or 0)
    return {
        "phase": phase,
        "settings": {
            k: v for k, v in service.settings.items() if k.startswith("FFAUDIT_FORWARD_MAX")
        }
        | {
            k: service.settings[k]
            for k in ("FFAUDIT_FORWARD_FRAME_TIMEOUT_S", "FFAUDIT_FORWARD_SHARED_KEY")
            if k in service.settings
        },
        "baseline_rss_kib": baseline,
        "peak_rss_kib": peak,
        "peak_over_baseline_kib": peak - baseline,
        "peak_ratio": round(peak / baseline, 2),
        "budget_kib": budget_kib,
        "over_budget_kib": peak - baseline - budget_kib,
        "server": {
            "accepted": opened - refusals,
            "refused": dict(refused),
            "closed": dict(closed),
        },
        **result,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ffaudit-flood-"))
    try:
        phases = [run_phase(p, workdir, args) for p in args.phases]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "connections": args.connections,
        "sources": args.sources,
        "claimed_frame_bytes": args.claim_bytes,
        "sent_per_connection_bytes": int(args.sent_mib * MIB),
        "budget_bytes": args.budget_mib * MIB,
        "frame_timeout_s": args.frame_timeout,
        "workdir": str(workdir) if args.keep else None,
        "phases": phases,
    }


# -- report --------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / KIB:7.1f} MiB"


def report(results: dict[str, Any]) -> None:
    n = results["connections"]
    sent = results["sent_per_connection_bytes"]
    print(
        f"{n} hostile connections from {results['sources']} source address(es), each "
        f"announcing a {results['claimed_frame_bytes'] / MIB:.2f} MiB frame and sending "
        f"{sent / MIB:g} MiB of it"
    )
    print(
        f"budget FFAUDIT_FORWARD_MAX_BUFFERED_BYTES = {results['budget_bytes'] / MIB:g} MiB, "
        f"FFAUDIT_FORWARD_FRAME_TIMEOUT_S = {results['frame_timeout_s']:g}; "
        f"unbounded would be N x sent = {n * sent / MIB:g} MiB"
    )
    print(f"python {results['python']}, {results['cpus']} CPUs, {results['platform']}")
    for p in results["phases"]:
        server, client = p["server"], p["client"]
        print()
        print(f"== phase {p['phase']}: {json.dumps(p['settings'])}")
        print(f"  baseline RSS              {_mib(p['baseline_rss_kib'])}")
        print(
            f"  peak RSS                  {_mib(p['peak_rss_kib'])}   "
            f"(sampled {_mib(p['peak_rss_kib_sampled']).strip()}, "
            f"VmHWM {_mib(p['peak_rss_kib_hwm']).strip()}); "
            f"peak/baseline {p['peak_ratio']:.2f}"
        )
        over = p["over_budget_kib"]
        print(
            f"  peak - baseline           {_mib(p['peak_over_baseline_kib'])}   "
            f"= {p['peak_over_baseline_kib'] / p['budget_kib']:.2f} x budget "
            f"({'+' if over >= 0 else '-'}{_mib(abs(over)).strip()} "
            f"against baseline + budget)"
        )
        print(
            f"  RSS while holding         {_mib(p['holding_rss_kib'])}   "
            f"({p['holding_connections']} connections holding "
            f"{p['holding_client_bytes'] / MIB:.1f} MiB of partial frames, "
            f"flood took {p['flood_s']} s)"
        )
        print(f"  RSS after frame timeouts  {_mib(p['after_timeouts_rss_kib'])}")
        print(f"  RSS after client closed   {_mib(p['after_close_rss_kib'])}")
        print(
            f"  server: accepted {server['accepted']}, refused {server['refused'] or 0}, "
            f"closed {server['closed'] or 0}"
        )
        print(
            f"  client: opened {client['opened']} (errors {client['connect_errors'] or 0}), "
            f"sent whole part {client['sent_whole_part']}, stalled {client['stalled']}, "
            f"closed by server {client['closed_by_server']} "
            f"({p['closed_before_deadline']} before the deadline, "
            f"{p['closed_after_deadline']} after it at {p['close_times_s']} s), "
            f"left open {p['still_open']}, {client['sent_mib_total']} MiB sent"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500, help="hostile connections")
    parser.add_argument(
        "--sent-mib", type=float, default=1.0, help="MiB of the frame each one sends"
    )
    parser.add_argument(
        "--claim-bytes",
        type=int,
        default=8 * MIB - 64,
        help="the frame's announced entries size (default: a frame just under 8 MiB, "
        "the default FFAUDIT_FORWARD_MAX_FRAME_BYTES)",
    )
    parser.add_argument("--budget-mib", type=int, default=64, help="MAX_BUFFERED_BYTES")
    parser.add_argument(
        "--frame-timeout", type=float, default=10.0, help="FRAME_TIMEOUT_S, seconds"
    )
    parser.add_argument("--sources", type=int, default=1, help="spread over 127.0.0.1..K (K peers)")
    parser.add_argument(
        "--phases",
        type=lambda v: [p for p in v.split(",") if p],
        default=list(PHASES),
        help=f"comma-separated, of {','.join(PHASES)}",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if not 1 <= args.sources <= 254:
        parser.error("--sources must be within 1..254")
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    main()
