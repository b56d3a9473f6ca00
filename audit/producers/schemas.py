"""Producer API bodies, and the identity an authenticated producer carries into ingest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PATTERN = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\*?)$")


def _label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError("label must be 1-63 chars of A-Z, a-z, 0-9, '.', '_' or '-'")
    return value


def _pattern(value: str) -> str:
    if not _PATTERN.match(value):
        raise ValueError(
            "a stream pattern is a stream name, a prefix ending in '*' (e.g. 'cam-*'), or '*' "
            "for every stream of the tenant"
        )
    return value


Label = Annotated[str, Field(pattern=_LABEL.pattern), AfterValidator(_label)]
StreamPattern = Annotated[str, Field(pattern=_PATTERN.pattern), AfterValidator(_pattern)]


@dataclass(frozen=True, slots=True)
class ProducerIdentity:
    """Who wrote a forward message: a producer of one tenant, bound to stream patterns."""

    id: str
    name: str
    tenant: str
    streams: tuple[str, ...]

    def may_write(self, stream: str) -> bool:
        return any(
            stream.startswith(p[:-1]) if p.endswith("*") else stream == p for p in self.streams
        )


class ProducerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Label = Field(description="the producer's name within the tenant, e.g. 'engine-1'")
    streams: list[StreamPattern] = Field(
        min_length=1, max_length=64, description="streams it may write: names or 'prefix*'"
    )
    description: str = Field(default="", max_length=1000)


class ProducerOut(BaseModel):
    id: str
    name: str = Field(description="the forward handshake's username: '<tenant>/<label>'")
    tenant: str
    streams: list[str]
    description: str
    created_at: datetime
    revoked_at: datetime | None


class ProducerCreated(ProducerOut):
    password: str = Field(description="shown once: the forward handshake's password")


class ProducerList(BaseModel):
    producers: list[ProducerOut]
