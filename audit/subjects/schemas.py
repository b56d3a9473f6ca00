"""Request and response bodies of the erasure API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The values of audit.integrity.pseudonym.SUBJECT_KINDS: the kinds the vault keys per subject.
SubjectKind = Literal["user", "email"]


class EraseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(
        min_length=1, max_length=512, description="the raw id (user id or e-mail address)"
    )
    kind: SubjectKind = "user"

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_subject(value)


def check_subject(value: str) -> str:
    """A raw id the vault can be asked about: not blank, encodable (no lone surrogates)."""
    if not value.strip():
        raise ValueError("subject must not be blank")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("subject must be valid Unicode text") from None
    return value


class ErasureOut(BaseModel):
    erasure_id: str
    tenant: str
    kind: str
    erased_at: datetime
    entries_destroyed: int = Field(
        description="vault entries destroyed (0: no record sealed with the vault names this "
        "subject, or it was erased before)"
    )
    legacy_records: bool | None = Field(
        description="records sealed before the vault (keyring pseudonyms) still match this "
        "raw id: they stay linkable until their keyring key is retired (null: not checked, "
        "kind email)"
    )


class ErasureListOut(BaseModel):
    erasures: list[ErasureOut]
