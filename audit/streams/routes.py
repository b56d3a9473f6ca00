from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request

from audit.auth.policy import Permission
from audit.deps import Caller, LogOfLogs, Settings, Streams, allow
from audit.errors import ForbiddenError
from audit.integrity.events import EventAction
from audit.streams.schemas import StreamRead, StreamRegistration

router = APIRouter(prefix="/v1/streams", tags=["streams"])


@router.post(
    "",
    response_model=StreamRead,
    status_code=201,
    responses={409: {"description": "registered with another tenant or key"}},
)
async def register_stream(
    request: Request,
    registration: StreamRegistration,
    service: Streams,
    who: Caller,
    settings: Settings,
    servicelog: LogOfLogs,
) -> StreamRead:
    """Register a producer stream with its tenant and Ed25519 public key (idempotent).
    Administrators only (with a second factor), for their own tenant."""
    admin = allow(request, who, Permission.MANAGE_STREAMS)
    if admin is not None and admin.tenant != registration.tenant:
        raise ForbiddenError("administrators register streams of their own tenant only")
    if registration.stream.startswith(settings.service_stream):
        # The service registers its own streams: a squatter could otherwise block them.
        raise ForbiddenError("stream names under the service's prefix are reserved")
    read = await asyncio.to_thread(service.register, registration)
    await servicelog.record(
        admin,
        registration.tenant,
        EventAction.STREAM_REGISTERED,
        metadata={"stream": registration.stream, "key_fingerprint": read.key_fingerprint},
        client_ip=request.client.host if request.client else None,
    )
    return read


@router.get("/{stream}", response_model=StreamRead, responses={404: {"description": "unknown"}})
def read_stream(
    request: Request,
    stream: Annotated[str, Path(max_length=128)],
    service: Streams,
    who: Caller,
) -> StreamRead:
    """A stream's registration and the chain head the service has accepted."""
    reader = allow(request, who, Permission.READ_STREAMS)
    return service.read(stream, tenant_id=reader.tenant if reader else None)
