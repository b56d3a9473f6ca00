from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from audit.deps import stream_service
from audit.streams.schemas import StreamRead, StreamRegistration
from audit.streams.service import StreamService

router = APIRouter(prefix="/v1/streams", tags=["streams"])


@router.post(
    "",
    response_model=StreamRead,
    status_code=201,
    responses={409: {"description": "registered with another tenant or key"}},
)
def register_stream(
    registration: StreamRegistration,
    service: Annotated[StreamService, Depends(stream_service)],
) -> StreamRead:
    """Register a producer stream with its tenant and Ed25519 public key (idempotent)."""
    return service.register(registration)


@router.get("/{stream}", response_model=StreamRead, responses={404: {"description": "unknown"}})
def read_stream(
    stream: Annotated[str, Path(max_length=128)],
    service: Annotated[StreamService, Depends(stream_service)],
) -> StreamRead:
    """A stream's registration and the chain head the service has accepted."""
    return service.read(stream)
