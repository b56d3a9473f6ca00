"""HTTP ingest: POST /v1/streams/{stream}/records (JSON array or NDJSON)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from audit.auth.policy import Permission
from audit.deps import Caller, Ingest, Settings, allow
from audit.errors import FFAuditError, ForbiddenError, InvalidInputError
from audit.ingest.service import check_record
from audit.integrity import record as f
from audit.producers.schemas import ProducerIdentity

router = APIRouter(prefix="/v1/streams", tags=["ingest"])


class PayloadTooLargeError(FFAuditError):
    http_status = 413


class RecordResult(BaseModel):
    index: int
    sequence: int
    outcome: str
    failure: str | None = None


class IngestResponse(BaseModel):
    stream: str
    counts: dict[str, int]
    results: list[RecordResult]  # every record that is not plainly "ok"
    quarantined: list[dict[str, Any]]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body over {limit} bytes")
    return bytes(body)


def _parse(body: bytes, content_type: str, max_records: int) -> list[Any]:
    if "ndjson" in content_type or "jsonlines" in content_type:
        records: list[Any] = []
        for number, line in enumerate(body.splitlines()):
            if not line.strip():
                continue
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InvalidInputError(
                    f"record {len(records)} (line {number + 1}): not JSON ({exc.msg})"
                ) from None
            if len(records) > max_records:
                break
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"body is not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(doc, list):
            raise InvalidInputError("body must be a JSON array of records (or NDJSON)")
        records = doc
    if not records:
        raise InvalidInputError("no records in the request")
    if len(records) > max_records:
        raise PayloadTooLargeError(f"more than {max_records} records in one request")
    return records


@router.post(
    "/{stream}/records",
    response_model=IngestResponse,
    responses={
        202: {"model": IngestResponse, "description": "unknown stream: records quarantined"},
        413: {"description": "too large"},
        429: {"description": "over the sender's budget for unverifiable input"},
        422: {"description": "bad input; `index` names the record"},
        503: {"description": "event store unavailable: nothing stored, retry"},
    },
)
async def ingest_records(
    request: Request,
    stream: Annotated[str, Path(max_length=128)],
    service: Ingest,
    settings: Settings,
    who: Caller,
) -> JSONResponse:
    """Store records of one stream. Idempotent: resending stored records is harmless.
    2xx only after every record is durably stored (or quarantined) and heads committed."""
    engine = allow(request, who, Permission.INGEST)
    if service.is_service_stream(stream):
        # The log of the logs is written by the service itself, never through this route.
        raise ForbiddenError("this stream is written by the audit service alone")
    # The token is the writer: its tenant's streams only, and of those the ones its
    # `streams` claim names (ingest refuses anything else, and alerts the owner).
    producer = (
        ProducerIdentity(
            id=f"token:{engine.subject}",
            name=f"{engine.tenant}/token:{engine.subject}",
            tenant=engine.tenant,
            streams=engine.streams if engine.streams is not None else ("*",),
        )
        if engine is not None
        else None
    )
    body = await _read_body(request, settings.max_request_bytes)
    records = _parse(
        body, request.headers.get("content-type", ""), settings.max_records_per_request
    )
    for index, obj in enumerate(records):
        checked = check_record(index, obj)
        if isinstance(checked, str):
            raise InvalidInputError(f"record {index}: {checked}", index=index)
        if checked.record[f.STREAM] != stream:
            raise InvalidInputError(
                f"record {index}: ffaudit.stream does not match the URL's stream", index=index
            )
    peer = f"{request.client.host}:{request.client.port}" if request.client else None
    report = await service.ingest(records, source="http", peer=peer, producer=producer)
    response = IngestResponse(
        stream=stream,
        counts=report.counts(),
        results=[
            RecordResult(index=r.index, sequence=r.sequence, outcome=r.outcome, failure=r.failure)
            for r in report.results
            if r.outcome != "ok"
        ],
        quarantined=[{"index": i, "reason": reason} for i, reason in report.quarantined],
    )
    status = 202 if report.quarantined and not report.results else 200
    return JSONResponse(response.model_dump(mode="json"), status_code=status)
