"""Request and response bodies of the retention API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from audit.jsontypes import JsonInt
from audit.retention.classes import ActionClass

HoldScope = Literal["tenant", "stream", "job", "actor"]


def _unicode(value: str) -> str:
    # JSON may spell a lone surrogate ("\ud800"), which no database or record can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class PolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: JsonInt = Field(ge=1, le=36_500, description="at least the configured floor")


class PolicyOut(BaseModel):
    action_class: ActionClass
    days: int
    default: bool = Field(description="no policy set: the service's default applies")
    actions: list[str]


class PoliciesOut(BaseModel):
    tenant: str
    default_days: int
    min_days: int
    policies: list[PolicyOut]


_HOLD_VALUES = ("stream", "job", "actor", "actor_hash")
_HOLD_TAKES = {
    "tenant": (),
    "stream": ("stream",),
    "job": ("job",),
    "actor": ("actor", "actor_hash"),
}


def _given(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"type": "string"}}}


def _hold_shape(scope: str) -> dict[str, Any]:
    """The JSON Schema of one scope's body: exactly one of the values it takes, none other
    (null counts as absent, as in the validator)."""
    takes = _HOLD_TAKES[scope]
    exactly_one = [
        {"allOf": [_given(f), *({"not": _given(o)} for o in takes if o != f)]} for f in takes
    ]
    return {
        "properties": {"scope": {"const": scope}},
        "allOf": [
            *({"not": _given(f)} for f in _HOLD_VALUES if f not in takes),
            *([{"anyOf": exactly_one}] if exactly_one else []),
        ],
    }


class HoldCreate(BaseModel):
    """One of `stream`, `job`, `actor` (raw id) or `actor_hash` (pseudonym), as the scope
    says; nothing for a tenant-wide hold."""

    # The validator's rule, in the OpenAPI document too.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [_hold_shape(s) for s in _HOLD_TAKES]}
    )

    scope: HoldScope
    stream: Text | None = Field(default=None, min_length=1, max_length=128)
    job: Text | None = Field(default=None, min_length=1, max_length=256)
    actor: Text | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="raw user id: pseudonymised under every active key, never stored",
    )
    actor_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    reason: Text = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _matches_scope(self) -> HoldCreate:
        given = {
            name
            for name in ("stream", "job", "actor", "actor_hash")
            if getattr(self, name) is not None
        }
        wanted = {
            "tenant": set(),
            "stream": {"stream"},
            "job": {"job"},
            "actor": {"actor", "actor_hash"},
        }[self.scope]
        if not given <= wanted or (wanted and len(given) != 1):
            needs = " or ".join(sorted(wanted)) or "no value"
            raise ValueError(f"a {self.scope} hold takes {needs}")
        return self


class HoldRelease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1, max_length=1000)


class HoldOut(BaseModel):
    id: int
    scope: HoldScope
    values: list[str] = Field(description="stream ids, job ids or user.hash pseudonyms")
    reason: str
    placed_at: datetime
    released_at: datetime | None
    release_reason: str | None


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: `{"dry_run": 0}` read as false would start a real, destructive run.
    dry_run: StrictBool = False


class DayOut(BaseModel):
    day: date
    records: int
    classes: dict[str, int]
    keep_days: int
    expires_at: datetime
    holds: list[int]
    purgeable: bool
    purged: bool = False
    archive_id: int | None = None
    streams: dict[str, int] = Field(default_factory=dict, description="records purged")


class TenantRunOut(BaseModel):
    tenant: str
    days: list[DayOut]
    purged_records: int = 0
    error: str | None = None


class RunOut(BaseModel):
    run_id: str
    dry_run: bool
    status: Literal["succeeded", "failed"]
    tenants: list[TenantRunOut]


class ArchiveOut(BaseModel):
    id: int
    day: str
    kind: str
    location: str
    index_name: str | None
    records: int
    sha256: str | None
    created_at: datetime
    purged_at: datetime | None
    restored_at: datetime | None


class CheckpointOut(BaseModel):
    """A signed retention checkpoint: verify `signature` over b"ffaudit.retention.v1:" +
    `payload` (its JCS text) with the service key (docs/record-spec.md §12)."""

    stream: str
    first_sequence: int
    last_sequence: int
    archive_id: int
    payload: dict[str, Any]
    signature: str


class RestoreOut(BaseModel):
    archive_id: int
    day: str
    restored: int = Field(description="records written back (those still stored are skipped)")
