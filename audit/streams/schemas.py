from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_STREAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def validate_tenant(value: str) -> str:
    # Tenants name Elasticsearch indices: lowercase, no separators ES reserves.
    if not _TENANT.fullmatch(value):
        raise ValueError("tenant must be 1-63 chars of a-z, 0-9, '_' or '-', starting alphanumeric")
    return value


def _stream(value: str) -> str:
    if not _STREAM.fullmatch(value):
        raise ValueError("stream must be 1-128 chars of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
    return value


# The pattern goes into the OpenAPI document (the contract says what the code enforces);
# the validator gives the clear message.
TenantId = Annotated[
    str,
    AfterValidator(validate_tenant),
    WithJsonSchema({"type": "string", "pattern": _TENANT.pattern}),
]
StreamId = Annotated[
    str, AfterValidator(_stream), WithJsonSchema({"type": "string", "pattern": _STREAM.pattern})
]


class StreamRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: StreamId
    tenant: TenantId
    public_key_pem: str = Field(min_length=1, max_length=4096, description="Ed25519 PEM")


class StreamRead(BaseModel):
    stream: str
    tenant: str
    key_fingerprint: str
    registered_at: datetime
    head_sequence: int
    head_hash: str
    signed_through: int
    closed: bool
