"""What the transparency-log API answers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LogInfo(BaseModel):
    stream: str
    origin: str = Field(description="the log's origin line: <service>/<tenant>/<stream>")
    size: int = Field(description="leaves appended so far (signed or not)")
    min_index: int = Field(description="leaves below this belong to purged records")
    vkey: str = Field(description="C2SP signed-note verifier key of the log's checkpoints")
    checkpoint_size: int | None = Field(description="size of the newest signed checkpoint")
    cosigned_size: int | None = Field(description="size of the newest cosigned checkpoint")


class InclusionOut(BaseModel):
    stream: str
    sequence: int
    index: int
    size: int
    leaf: str = Field(description="the leaf's entry: the record's event.hash (hex)")
    hashes: list[str] = Field(description="RFC 9162 inclusion proof, base64, leaf side first")
    checkpoint: str = Field(description="the signed (or cosigned) checkpoint note at `size`")


class ConsistencyOut(BaseModel):
    stream: str
    old_size: int
    new_size: int
    hashes: list[str] = Field(description="RFC 9162 consistency proof, base64")
    checkpoint: str | None = Field(description="the checkpoint note at new_size, if signed")
