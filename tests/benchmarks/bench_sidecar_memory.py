"""Sidecar memory benchmark: what hostile and maximal inputs cost `ffengine serve` (issue 14).

    .venv/bin/python -m tests.benchmarks.bench_sidecar_memory [--jobs N] [--unguarded] [--json]

A script, not a test: nothing asserts. It starts the real sidecar (`ffengine serve`, CPU
providers, loopback, a temporary work dir) as a subprocess and measures its resident memory:
VmRSS sampled every 20 ms in a thread, and the kernel's peak (VmHWM, reset through
/proc/<pid>/clear_refs at the start of each phase) so that a spike between samples counts.

Phases, on one sidecar:

- bombs: a PNG whose IHDR declares 32768x32768 with a tiny IDAT (the header bomb), and a
  complete 1-bit PNG of zeros of the same size (128 KiB on the wire, 3 GiB once decoded to
  BGR): both must be refused (422) from their headers, at no cost.
- oversize: one upload of `--oversize-mib` (default 200) against FFENGINE_MAX_UPLOAD_BYTES
  (100 MiB): 413. The time it takes says how much of the body was still received.
- jobs: N (default 20) concurrent anonymize jobs of one JPEG at the pixel limit
  (FFENGINE_MAX_PIXELS, 8192x6144: insightface's t1.jpg scaled up, nine faces). The sidecar
  runs one job at a time; the others wait as files on disk.

`--unguarded` adds a phase on a second sidecar with FFENGINE_MAX_PIXELS raised to 2^30
(OpenCV's own ceiling), sent the issue's bomb (a 12000x12000 1-bit PNG of zeros): what one
such file cost before the limits.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import insightface
import jwt

from engine.pipeline.media import read_image
from tests.benchmarks.bench_forward_flood import RssSampler, free_port, proc_status, reset_peak

KIB = 1024
MIB = 1024 * KIB
SECRET = "bench-secret-of-at-least-32-bytes-long!"
SETTLE_S = 1.0
SAMPLE = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
LIMIT_SIZE = (8192, 6144)  # the default FFENGINE_MAX_PIXELS, as width x height


# -- inputs ----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(ihdr: bytes, idat: bytes) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def header_bomb(width: int, height: int) -> bytes:
    return _png(struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0), zlib.compress(b"\0" * 64))


def zero_bomb(width: int, height: int) -> bytes:
    """A complete 1-bit grayscale PNG of zeros: every row is there for the decoder."""
    row = b"\0" * (1 + (width + 7) // 8)
    per_block = max(1, (4 * MIB) // len(row))
    compressor = zlib.compressobj(9)
    parts, left = [], height
    while left > 0:
        rows = min(per_block, left)
        parts.append(compressor.compress(row * rows))
        left -= rows
    parts.append(compressor.flush())
    return _png(struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0), b"".join(parts))


def limit_jpeg() -> bytes:
    big = cv2.resize(read_image(SAMPLE), LIMIT_SIZE, interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


# -- the sidecar -----------------------------------------------------------------------------


def ffengine_command() -> list[str]:
    script = Path(sys.executable).parent / "ffengine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@contextlib.contextmanager
def sidecar(workdir: Path, overrides: dict[str, str]) -> Iterator[Sidecar]:
    """`ffengine serve` on loopback with a private work dir; yields once /healthz answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "FFENGINE_WORK_DIR": str(workdir / "work"),
        "FFENGINE_KEYS_DIR": str(workdir / "keys"),
        "FFENGINE_SPOOL_DIR": str(workdir / "spool"),
        "FFENGINE_JWT_SECRET": SECRET,
        "FFENGINE_PROVIDERS": '["CPUExecutionProvider"]',
        "FFENGINE_RATE_LIMIT_PER_S": "1000000",
        "FFENGINE_RATE_LIMIT_BURST": "1000000",
        "FFENGINE_HTTP_HOST": "127.0.0.1",
        "FFENGINE_HTTP_PORT": str(port),
        **overrides,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFENGINE_")}
    env.update(settings)
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*ffengine_command(), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Sidecar(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"ffengine serve exited ({proc.returncode}):\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{service.base_url}/healthz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("ffengine serve did not answer /healthz in 120 s")
                time.sleep(0.2)
        yield service
    finally:
        service.stop()


def auth() -> dict[str, str]:
    claims = {"sub": "bench", "exp": datetime.now(UTC) + timedelta(hours=2)}
    return {
        "authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}",
        "x-session-id": "bench",
    }


def submit(base_url: str, name: str, data: bytes, timeout: float = 600) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/jobs",
        headers=auth(),
        files={"target": (name, data, "application/octet-stream")},
        data={"job_type": "anonymize"},
        timeout=timeout,
    )


def wait_all(base_url: str, job_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10) as client:
        while len(done) < len(job_ids) and time.monotonic() < deadline:
            for job_id in job_ids:
                if job_id in done:
                    continue
                body = client.get(f"{base_url}/v1/jobs/{job_id}", headers=auth()).json()
                if body["state"] in ("completed", "failed"):
                    done[job_id] = body
            time.sleep(0.5)
    return done


@contextlib.contextmanager
def measured(pid: int) -> Iterator[dict[str, Any]]:
    """Peak RSS of `pid` over the block: sampled, and the kernel's VmHWM after a reset."""
    out: dict[str, Any] = {}
    time.sleep(SETTLE_S)
    out["before_kib"] = proc_status(pid)["VmRSS"]
    hwm_reset = reset_peak(pid)
    started = time.monotonic()
    with RssSampler(pid) as sampler:
        yield out
    out["seconds"] = round(time.monotonic() - started, 2)
    out["peak_sampled_kib"] = sampler.peak_kib
    out["peak_hwm_kib"] = proc_status(pid)["VmHWM"] if hwm_reset else None
    out["peak_kib"] = max(sampler.peak_kib, out["peak_hwm_kib"] or 0)
    out["peak_over_before_kib"] = out["peak_kib"] - out["before_kib"]


# -- phases ----------------------------------------------------------------------------------


def phase_bombs(service: Sidecar) -> dict[str, Any]:
    header, zeros = header_bomb(32768, 32768), zero_bomb(32768, 32768)
    with measured(service.pid) as result:
        answers = [submit(service.base_url, "bomb.png", body) for body in (header, zeros)]
    result["files"] = {"header_bomb_bytes": len(header), "zero_bomb_bytes": len(zeros)}
    result["answers"] = [(a.status_code, a.json()["error"]["message"]) for a in answers]
    return result


def phase_oversize(service: Sidecar, mib: int) -> dict[str, Any]:
    body = b"\0" * (mib * MIB)
    with measured(service.pid) as result:
        answer = submit(service.base_url, "big.bin", body)
    result["upload_mib"] = mib
    result["answer"] = (answer.status_code, answer.json()["error"]["message"])
    return result


def phase_jobs(service: Sidecar, jobs: int) -> dict[str, Any]:
    image = limit_jpeg()
    with measured(service.pid) as result:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(submit, service.base_url, f"limit-{i}.jpg", image) for i in range(jobs)
            ]
            answers = [f.result() for f in futures]
        accepted = [a.json()["job_id"] for a in answers if a.status_code == 202]
        submitted_s = round(time.monotonic() - started, 2)
        done = wait_all(service.base_url, accepted, timeout_s=3600)
    result["image"] = {"size": f"{LIMIT_SIZE[0]}x{LIMIT_SIZE[1]}", "jpeg_bytes": len(image)}
    result["statuses"] = dict(Counter(a.status_code for a in answers))
    result["states"] = dict(Counter(body["state"] for body in done.values()))
    result["faces"] = sorted({body["faces"] for body in done.values()})
    result["submit_seconds"] = submitted_s
    result["seconds_per_job"] = round(result["seconds"] / max(1, len(done)), 2)
    return result


def phase_unguarded(workdir: Path) -> dict[str, Any]:
    bomb = zero_bomb(12000, 12000)
    lifted = {"FFENGINE_MAX_PIXELS": str(1 << 30)}
    with sidecar(workdir / "unguarded", lifted) as service, measured(service.pid) as result:
        answer = submit(service.base_url, "bomb.png", bomb)
        job_id = answer.json().get("job_id")
        done = wait_all(service.base_url, [job_id], timeout_s=1800) if job_id else {}
    result["bomb_bytes"] = len(bomb)
    result["answer"] = answer.status_code
    result["state"] = next(iter(done.values()))["state"] if done else None
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ffengine-memory-"))
    try:
        with sidecar(workdir / "guarded", {}) as service:
            time.sleep(SETTLE_S)
            baseline = proc_status(service.pid)["VmRSS"]
            phases = {
                "bombs": phase_bombs(service),
                "oversize": phase_oversize(service, args.oversize_mib),
                "jobs": phase_jobs(service, args.jobs),
            }
        if args.unguarded:
            phases["unguarded"] = phase_unguarded(workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "baseline_rss_kib": baseline,
        "workdir": str(workdir) if args.keep else None,
        "phases": phases,
    }


# -- report ----------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / KIB:.1f} MiB"


def _peak_line(p: dict[str, Any]) -> str:
    return (
        f"peak {_mib(p['peak_kib'])} (+{_mib(p['peak_over_before_kib'])} over "
        f"{_mib(p['before_kib'])}; sampled {_mib(p['peak_sampled_kib'])}, "
        f"VmHWM {_mib(p['peak_hwm_kib'])}), {p['seconds']} s"
    )


def report(results: dict[str, Any]) -> None:
    print(f"python {results['python']}, {results['cpus']} CPUs, {results['platform']}")
    print(f"sidecar baseline RSS {_mib(results['baseline_rss_kib'])}")
    phases = results["phases"]
    bombs = phases["bombs"]
    print(
        f"\n== bombs: 32768x32768 PNG header bomb ({bombs['files']['header_bomb_bytes']} B) "
        f"and complete 1-bit bomb ({bombs['files']['zero_bomb_bytes'] / KIB:.0f} KiB)"
    )
    for status, message in bombs["answers"]:
        print(f"  {status}: {message}")
    print(f"  {_peak_line(bombs)}")
    over = phases["oversize"]
    print(f"\n== oversize: one {over['upload_mib']} MiB upload")
    print(f"  {over['answer'][0]}: {over['answer'][1]}")
    print(f"  {_peak_line(over)}")
    jobs = phases["jobs"]
    print(
        f"\n== jobs: {sum(jobs['statuses'].values())} concurrent anonymize jobs of a "
        f"{jobs['image']['size']} JPEG ({jobs['image']['jpeg_bytes'] / MIB:.1f} MiB)"
    )
    print(
        f"  submit statuses {jobs['statuses']} (all answered in {jobs['submit_seconds']} s), "
        f"final states {jobs['states']}"
    )
    print(f"  faces per job {jobs['faces']}, {jobs['seconds_per_job']} s per job (one at a time)")
    print(f"  {_peak_line(jobs)}")
    if "unguarded" in phases:
        un = phases["unguarded"]
        print(
            f"\n== unguarded (FFENGINE_MAX_PIXELS=2^30): the issue's 12000x12000 bomb "
            f"({un['bomb_bytes'] / KIB:.0f} KiB): {un['answer']}, job {un['state']}"
        )
        print(f"  {_peak_line(un)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="concurrent maximal jobs")
    parser.add_argument("--oversize-mib", type=int, default=200, help="the oversized upload")
    parser.add_argument(
        "--unguarded", action="store_true", help="also the issue's bomb with the limit lifted"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (sidecar logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    main()
