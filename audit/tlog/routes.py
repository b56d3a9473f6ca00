"""Transparency-log reads: checkpoints, C2SP tlog-tiles, inclusion and consistency proofs.

Tenant-scoped like every read (a log is named by the caller's tenant and a stream) and
recorded in the log of the logs. Tiles and checkpoints are served under a per-log prefix,
/v1/tlog/{stream}/, so a tlog-tiles client pointed at that prefix reads the log as it
would any other.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from audit.auth.policy import Permission
from audit.auth.tokens import Principal
from audit.deps import Caller, LogOfLogs, Tlog, allow, tenant_scope
from audit.errors import InvalidInputError
from audit.integrity.events import EventAction
from audit.integrity.merkle import parse_tile_path
from audit.servicelog import ServiceLog
from audit.tlog.schemas import ConsistencyOut, InclusionOut, LogInfo
from audit.tlog.service import b64

router = APIRouter(prefix="/v1/tlog", tags=["transparency log"])

StreamName = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
TenantParam = Annotated[str | None, Query(include_in_schema=False)]
_NOTE = "text/plain; charset=utf-8"
_RESPONSES: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}}
# The 200 answer's own media type; errors stay the app's JSON bodies (a response_class
# would document every status as text).
_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}
}
_BYTES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    }
}
# No pattern in the schema: a path parameter holding "/" defeats schema-driven generators
# (Schemathesis filtered every example), and parse_tile_path gives the clearer 422.
TilePath = Annotated[
    str,
    Path(
        max_length=200,
        description="C2SP tlog-tiles: <L>/<N>[.p/<W>] or entries/<N>[.p/<W>], N as x001/x234/067",
    ),
]


async def _log(
    servicelog: ServiceLog, request: Request, who: Principal | None, tenant: str, **meta: Any
) -> None:
    await servicelog.record(
        who,
        tenant,
        EventAction.AUDIT_QUERIED,
        metadata={"endpoint": "tlog", **meta},
        client_ip=request.client.host if request.client else None,
    )


@router.get("", response_model=list[LogInfo], responses=_RESPONSES)
async def list_logs(
    request: Request, who: Caller, tlog: Tlog, servicelog: LogOfLogs, tenant: TenantParam = None
) -> list[LogInfo]:
    """The tenant's logs: origin, size, verifier key and newest checkpoints."""
    allow(request, who, Permission.READ_TLOG)
    scope = tenant_scope(who, tenant)
    rows = await asyncio.to_thread(tlog.info, scope)
    await _log(servicelog, request, who, scope, what="logs")
    return [
        LogInfo(
            stream=row.stream_id,
            origin=row.origin,
            size=row.size,
            min_index=row.min_index,
            vkey=tlog.signer(row.origin).verifier.vkey(),
            checkpoint_size=signed.size if signed else None,
            cosigned_size=cosigned.size if cosigned else None,
        )
        for row, signed, cosigned in rows
    ]


@router.get("/{stream}/checkpoint", response_class=Response, responses={**_RESPONSES, **_TEXT})
async def checkpoint(
    request: Request,
    stream: StreamName,
    who: Caller,
    tlog: Tlog,
    servicelog: LogOfLogs,
    cosigned: bool | None = None,
    tenant: TenantParam = None,
) -> Response:
    """The newest checkpoint (C2SP signed note): cosigned when witnesses are configured."""
    allow(request, who, Permission.READ_TLOG)
    scope = tenant_scope(who, tenant)
    note = await asyncio.to_thread(tlog.checkpoint, scope, stream, cosigned=cosigned)
    await _log(servicelog, request, who, scope, what="checkpoint", stream=stream)
    return Response(note, media_type=_NOTE, headers={"Cache-Control": "no-cache"})


@router.post("/{stream}/checkpoint", response_class=Response, responses={**_RESPONSES, **_TEXT})
async def sign_checkpoint(
    request: Request,
    stream: StreamName,
    who: Caller,
    tlog: Tlog,
    servicelog: LogOfLogs,
    tenant: TenantParam = None,
) -> Response:
    """Sign a checkpoint at the log's current size now (idempotent at one size)."""
    allow(request, who, Permission.SIGN_CHECKPOINTS)
    scope = tenant_scope(who, tenant)
    row = await asyncio.to_thread(tlog.sign_now, scope, stream)
    await _log(servicelog, request, who, scope, what="sign", stream=stream, size=row.size)
    return Response(row.note, media_type=_NOTE)


@router.get(
    "/{stream}/tile/{path:path}", response_class=Response, responses={**_RESPONSES, **_BYTES}
)
async def tile(
    request: Request,
    stream: StreamName,
    path: TilePath,
    who: Caller,
    tlog: Tlog,
    servicelog: LogOfLogs,
    tenant: TenantParam = None,
) -> Response:
    """C2SP tlog-tiles: `tile/<L>/<N>[.p/<W>]` (hashes) and `tile/entries/<N>[.p/<W>]`
    (entry bundles: each leaf's entry is the record's 32-byte event.hash)."""
    allow(request, who, Permission.READ_TLOG)
    scope = tenant_scope(who, tenant)
    try:
        level, index, width = parse_tile_path("tile/" + path)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if level is None:
        data = await asyncio.to_thread(tlog.entries, scope, stream, index, width)
    else:
        data = await asyncio.to_thread(tlog.tile, scope, stream, level, index, width)
    await _log(servicelog, request, who, scope, what="tile", stream=stream, path=path)
    # A full tile never changes; a partial one is replaced by a wider one.
    cache = "public, max-age=31536000, immutable" if width is None else "no-cache"
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": cache})


@router.get("/{stream}/inclusion", response_model=InclusionOut, responses={**_RESPONSES, 409: {}})
async def inclusion(
    request: Request,
    stream: StreamName,
    who: Caller,
    tlog: Tlog,
    servicelog: LogOfLogs,
    sequence: Annotated[int | None, Query(ge=1)] = None,
    index: Annotated[int | None, Query(ge=0)] = None,
    size: Annotated[int | None, Query(ge=1)] = None,
    tenant: TenantParam = None,
) -> InclusionOut:
    """An inclusion proof for the record at `sequence` (or the leaf at `index`) against
    the checkpoint at `size` (default: the newest covering it, cosigned when witnesses are
    configured). 409 while no checkpoint covers it yet."""
    allow(request, who, Permission.READ_TLOG)
    scope = tenant_scope(who, tenant)
    if (sequence is None) == (index is None):
        raise InvalidInputError("name the record by exactly one of sequence= or index=")
    proof = await asyncio.to_thread(
        tlog.inclusion, scope, stream, sequence=sequence, index=index, size=size
    )
    await _log(servicelog, request, who, scope, what="inclusion", stream=stream, index=proof.index)
    return InclusionOut(
        stream=stream,
        sequence=proof.sequence,
        index=proof.index,
        size=proof.size,
        leaf=proof.entry.hex(),
        hashes=b64(proof.hashes),
        checkpoint=proof.checkpoint,
    )


@router.get(
    "/{stream}/proof/{sequence}",
    response_class=Response,
    responses={**_RESPONSES, 409: {}, **_TEXT},
)
async def tlog_proof(
    request: Request,
    stream: StreamName,
    sequence: Annotated[int, Path(ge=1)],
    who: Caller,
    tlog: Tlog,
    servicelog: LogOfLogs,
    tenant: TenantParam = None,
) -> Response:
    """A C2SP tlog-proof file for the record at `sequence`: its inclusion proof and the
    checkpoint it is against, verifiable offline with `ffaudit verify-proof`."""
    allow(request, who, Permission.READ_TLOG)
    scope = tenant_scope(who, tenant)
    proof = await asyncio.to_thread(tlog.inclusion, scope, stream, sequence=sequence)
    await _log(servicelog, request, who, scope, what="proof", stream=stream, index=proof.index)
    name = f"{stream}-{sequence}.tlog-proof".replace(":", "_")
    return Response(
        proof.tlog_proof(),
        media_type=_NOTE,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{stream}/consistency", response_model=ConsistencyOut, responses={**_RESPONSES, 422: {}}
)
async def consistency(
    request: Request,
    stream: StreamName,
    who: Caller,
    tlog: Tlog,
    servicelog: LogOfLogs,
    old: Annotated[int, Query(ge=0)],
    new: Annotated[int, Query(ge=0)],
    tenant: TenantParam = None,
) -> ConsistencyOut:
    """An RFC 9162 consistency proof from the tree of `old` leaves to the tree of `new`."""
    allow(request, who, Permission.READ_TLOG)
    scope = tenant_scope(who, tenant)
    proof = await asyncio.to_thread(tlog.consistency, scope, stream, old, new)
    await _log(servicelog, request, who, scope, what="consistency", stream=stream)
    return ConsistencyOut(
        stream=stream,
        old_size=proof.old_size,
        new_size=proof.new_size,
        hashes=b64(proof.hashes),
        checkpoint=proof.checkpoint,
    )
