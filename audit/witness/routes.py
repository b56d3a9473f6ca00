"""POST /add-checkpoint (C2SP tlog-witness): the body is read whole (BodyLimits bounds its
size and time), parsed, and handed to the witness service; refusals are the service's
errors, answered by the app's one handler."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from audit.witness.schemas import ADD_CHECKPOINT_PATH, SIZE_CONTENT_TYPE, parse_add_checkpoint
from audit.witness.service import WitnessService

router = APIRouter(tags=["witness"])


async def witness_service(request: Request) -> WitnessService:
    """The witness the app's lifespan built (its lifespan state: `request.state.witness`)."""
    found: WitnessService = request.state.witness
    return found


Witness = Annotated[WitnessService, Depends(witness_service)]

_TEXT: dict[str, Any] = {"content": {"text/plain": {"schema": {"type": "string"}}}}
_ERROR: dict[str, Any] = {"content": {"application/json": {}}}
_ADD_CHECKPOINT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the cosignature line(s), signed-note signature lines", **_TEXT},
    400: {"description": "malformed body, or an old size above the checkpoint's", **_ERROR},
    403: {"description": "no signature of the log's key verifies, or one fails", **_ERROR},
    404: {"description": "no log with this origin is configured", **_ERROR},
    409: {
        "description": "the old size is not the size last cosigned: the body is that size",
        "content": {SIZE_CONTENT_TYPE: {"schema": {"type": "string", "pattern": "^[0-9]+\n$"}}},
    },
    413: {"description": "body too large", **_ERROR},
    422: {"description": "the checkpoint is not consistent with the one cosigned", **_ERROR},
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "`old <size>`, zero to 63 base64 consistency-proof hashes, an empty "
        "line, then the checkpoint (a signed note); every line ends in a newline",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.post(
    ADD_CHECKPOINT_PATH,
    response_class=PlainTextResponse,
    responses=_ADD_CHECKPOINT_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def add_checkpoint(request: Request, witness: Witness) -> PlainTextResponse:
    """Cosign a checkpoint that extends the one last cosigned for its log."""
    body = parse_add_checkpoint(await request.body())
    signatures = await asyncio.to_thread(witness.add_checkpoint, body)
    return PlainTextResponse("".join(s.line() for s in signatures))
