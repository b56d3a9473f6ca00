"""Webhook API bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Severity = Literal["low", "medium", "high", "critical"]
DeliveryState = Literal["pending", "delivered", "failed"]
SEVERITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def _webhook_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("the URL must be http:// or https://")
    if not url.host:
        raise ValueError("the URL needs a host")
    if url.userinfo:
        # Listed back to every manager of the tenant: the signature is the authentication.
        raise ValueError("the URL must not carry credentials (user:password@)")
    if url.fragment:
        raise ValueError("the URL must not have a #fragment")
    return value


# http(s), a DNS host name or IPv4 address, an optional port, then a path and query in
# printable ASCII without a fragment; no user:password@. IPv6 literals pass the validator
# but are not promised here.
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_URL_PATTERN = (
    rf"^[hH][tT][tT][pP][sS]?://{_LABEL}(?:\.{_LABEL})*(?::[1-9][0-9]{{0,3}})?(?:[/?][!\x22$-~]*)?$"
)

WebhookUrl = Annotated[
    str,
    # The pattern documents the scheme rule in the schema; the validator gives the message.
    Field(min_length=1, max_length=2048, json_schema_extra={"pattern": _URL_PATTERN}),
    AfterValidator(_webhook_url),
]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl = Field(description="http:// or https:// receiver")
    min_severity: Severity = Field(
        default="low", description="alerts of this severity and above are delivered"
    )
    description: str = Field(default="", max_length=500)


class WebhookOut(BaseModel):
    id: str
    url: str
    min_severity: str
    description: str
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="the signing secret: shown once, keep it on the receiver (see docs/webhooks.md)"
    )


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: int
    event_id: str = Field(description="the X-FFAudit-Event-Id header: receivers dedupe on it")
    kind: str = Field(description="alert.opened or webhook.test")
    alert_id: int | None
    state: DeliveryState
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt")
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="when pending: the next attempt")
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
