"""`ffaudit verify --service`: re-verify the chains a running service stores.

POST /v1/verify with `Accept: application/x-ndjson`: the service streams progress lines
while it verifies and ends with the report (or an error line). Exit codes are those of the
offline `verify`: 0 intact, 1 integrity failure (IntegrityError's code), 2 usage or service
errors.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import httpx
import orjson
from tqdm import tqdm

from audit.cli.client import REFUSALS, bearer, echo_json, refusal, unreachable
from audit.errors import FFAuditError, ForbiddenError, IntegrityError, ServiceRefusedError

NDJSON = "application/x-ndjson"
_REFUSALS: dict[int, type[FFAuditError]] = {**REFUSALS, 403: ForbiddenError}
# No read timeout between lines would be wrong (a dead service hangs us), but a stream's
# first progress line may wait for the store's first page of a very large chain.
_TIMEOUT = httpx.Timeout(30.0, read=600.0)
_PLAIN_EVERY_S = 2.0


def verify_remote(
    service: str,
    token: str | None,
    tenant: str | None,
    streams: tuple[str, ...],
    since: str | None,
    until: str | None,
    *,
    progress: bool,
    as_json: bool,
) -> int:
    """Verify each named stream (one request each) or every stream of the tenant (one
    request with the time range); print failures as they are reported, then a summary."""
    bodies: list[dict[str, Any]] = (
        [{"stream": s} for s in streams]
        if streams
        else [{k: v for k, v in (("since", since), ("until", until)) if v is not None}]
    )
    params = {"tenant": tenant} if tenant else None
    reports: list[dict[str, Any]] = []
    for body in bodies:
        result = _verify_one(service, token, params, body, progress=progress)
        reports += result["streams"]
        if not as_json:
            for stream in result["streams"]:
                for line in describe(stream):
                    click.echo(line)
    ok = all(r["ok"] for r in reports)
    if as_json:
        echo_json({"ok": ok, "streams": reports})
    else:
        _summary(reports, ok)
    return 0 if ok else IntegrityError.exit_code


def describe(stream: dict[str, Any]) -> list[str]:
    """One line per failure, kind and sequence first (as the offline verifier writes them)."""
    name = stream["stream"]
    lines = []
    for f in stream["failures"]:
        where = f"stream {name}" + (f", seq {f['sequence']}" if f["sequence"] is not None else "")
        lines.append(f"FAIL {f['kind']}: {where}: {f['detail']}")
    if not stream["matches_head"]:
        lines.append(
            f"FAIL head_mismatch: stream {name}, seq {stream['stored_last_sequence']}: the "
            f"store ends at sequence {stream['stored_last_sequence']}, the service accepted "
            f"records through {stream['head_sequence']} (deleted or edited inside the store)"
        )
    return lines


def _summary(reports: list[dict[str, Any]], ok: bool) -> None:
    for r in reports:
        click.echo(
            f"stream {r['stream']}: {r['records']} records, last sequence "
            f"{r['stored_last_sequence']}, accepted head {r['head_sequence']}, signed through "
            f"{r['signed_through']}: {'ok' if r['ok'] else 'FAILED'}"
        )
    records = sum(r["records"] for r in reports)
    if ok:
        click.echo(f"OK: {records} records in {len(reports)} stream(s) verified")
        return
    counts: dict[str, int] = {}
    for r in reports:
        for f in r["failures"]:
            counts[f["kind"]] = counts.get(f["kind"], 0) + 1
        if not r["matches_head"]:
            counts["head_mismatch"] = counts.get("head_mismatch", 0) + 1
    click.echo("FAILED: " + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))


def _verify_one(
    service: str,
    token: str | None,
    params: dict[str, str] | None,
    body: dict[str, Any],
    *,
    progress: bool,
) -> dict[str, Any]:
    headers = {"accept": NDJSON, **bearer(token)}
    url = f"{service.rstrip('/')}/v1/verify"
    bars = _Progress(progress)
    try:
        with httpx.stream(
            "POST", url, json=body, params=params, headers=headers, timeout=_TIMEOUT
        ) as response:
            if response.status_code != 200:
                response.read()
                raise refusal(response, _REFUSALS)
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                line = _parse(raw)
                if "progress" in line:
                    update = line["progress"]
                    bars.update(str(update["stream"]), update["records"], update["expected"])
                elif "result" in line:
                    result: dict[str, Any] = line["result"]
                    return result
                elif "error" in line:
                    error = line["error"]
                    raise ServiceRefusedError(
                        f"verification stopped: {error.get('type')}: {error.get('message')}"
                    )
    except httpx.HTTPError as exc:
        raise unreachable(service, exc) from None
    finally:
        bars.close()
    raise ServiceRefusedError("the service ended the verification without a result")


def _parse(raw: str) -> dict[str, Any]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        line = None
    if not isinstance(line, dict):
        raise ServiceRefusedError(f"not a verification line: {raw[:200]!r}")
    return line


class _Progress:
    """Progress on stderr: a bar per stream on a terminal; with --progress elsewhere (a log
    file, CI), a plain line per stream at most every few seconds, and its last count."""

    def __init__(self, show: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.show = show or self.tty
        self.bars: dict[str, tqdm] = {}  # type: ignore[type-arg]
        self.printed: dict[str, tuple[float, int]] = {}
        self.last: dict[str, tuple[int, int]] = {}

    def update(self, stream: str, records: int, expected: int) -> None:
        if not self.show:
            return
        if self.tty:
            bar = self.bars.get(stream)
            if bar is None:
                bar = self.bars[stream] = tqdm(
                    total=expected or None,
                    desc=f"verify {stream}",
                    unit=" rec",
                    unit_scale=True,
                    leave=False,
                    file=sys.stderr,
                )
            bar.update(records - bar.n)
            return
        self.last[stream] = (records, expected)
        at, _ = self.printed.get(stream, (0.0, -1))
        if time.monotonic() - at >= _PLAIN_EVERY_S:
            self._plain(stream)

    def _plain(self, stream: str) -> None:
        records, expected = self.last[stream]
        share = f" ({records / expected:.0%})" if expected else ""
        click.echo(f"verify {stream}: {records}/{expected} records{share}", err=True)
        self.printed[stream] = (time.monotonic(), records)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        for stream, (records, _) in self.last.items():
            if self.printed.get(stream, (0.0, -1))[1] != records:
                self._plain(stream)
