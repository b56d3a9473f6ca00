"""Verification with live progress, as NDJSON lines: one implementation for the API
(POST /v1/verify with Accept: application/x-ndjson) and the console's "verify now".

Verification runs in a task that queues lines as it goes; the bounded queue makes a slow
reader slow the verification down rather than pile lines up. Each stream gets a progress
line at 0 and at its final count; the last line is the caller's summary (`finish`) or an
error. Whatever happens, the verification is a read of the trail: `record` files it in the
log of the logs (failed when it found failures, or stopped, or the caller hung up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from audit.errors import FFAuditError
from audit.integrity.events import Outcome
from audit.query.service import QueryService, StreamVerification

NDJSON = "application/x-ndjson"
log = logging.getLogger("audit.query")

# Files the verification in the log of the logs: (outcome, metadata).
Record = Callable[[Outcome, dict[str, Any]], Awaitable[None]]
# The last line: (whether everything verified, the line's JSON object).
Finish = Callable[[list[StreamVerification]], Awaitable[tuple[bool, dict[str, Any]]]]


def line(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value) + b"\n"


def verified(result: StreamVerification) -> bool:
    return not result.failures and result.matches_head


async def verification_lines(
    service: QueryService,
    tenant: str,
    heads: dict[str, int],
    *,
    record: Record,
    finish: Finish,
) -> AsyncIterator[bytes]:
    lines: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

    async def unfinished(error: str) -> None:
        with contextlib.suppress(FFAuditError):  # the error line matters more than this record
            await record(Outcome.FAILURE, {"streams": len(heads), "error": error})

    async def run() -> None:
        results: list[StreamVerification] = []
        try:
            for name, head in heads.items():
                expected = await service.expected_records(tenant, name, head)

                async def progress(
                    records: int, name: str = name, expected: int = expected
                ) -> None:
                    item = {"stream": name, "records": records, "expected": expected}
                    await lines.put(line({"progress": item}))

                await progress(0)
                result = await service.verify_stream(tenant, name, on_progress=progress)
                await progress(result.records)  # the stream's last line: its final count
                results.append(result)
            ok, last = await finish(results)
            # A verification that found failures is a failed one in the log of the logs.
            await record(
                Outcome.SUCCESS if ok else Outcome.FAILURE, {"streams": len(results), "ok": ok}
            )
            await lines.put(line(last))
        except asyncio.CancelledError:
            # The caller hung up: what it saw so far is still a read of the trail.
            await asyncio.shield(unfinished("abandoned"))
            raise
        except FFAuditError as exc:
            await unfinished(type(exc).__name__)
            await lines.put(line({"error": {"type": type(exc).__name__, "message": exc.message}}))
        except Exception:
            # The status line went out long ago: the error can only be the last line.
            log.exception("verification failed mid-stream")
            await unfinished("InternalError")
            error = {"type": "InternalError", "message": "internal error; see the service log"}
            await lines.put(line({"error": error}))
        # Not in a `finally`: once cancelled, nobody reads the queue, and a full one would
        # never take the end mark.
        await lines.put(None)

    task = asyncio.create_task(run())
    try:
        while (item := await lines.get()) is not None:
            yield item
    finally:
        # Done already, unless the caller went away: then stop verifying on its behalf.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
