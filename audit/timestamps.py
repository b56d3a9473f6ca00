"""The one type for times in API input: RFC 3339 text, never a bare number.

Pydantic's lax mode reads `until=0.5` or `1700000000` as Unix seconds, a silent 1970 for a
typo; the OpenAPI document promises `format: date-time`, so a number is refused (422)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _text_only(value: Any) -> Any:
    if isinstance(value, bool | int | float) or (
        isinstance(value, str) and _NUMBER.fullmatch(value)
    ):
        raise ValueError("an RFC 3339 date-time is expected, e.g. 2026-11-03T00:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_text_only)]
