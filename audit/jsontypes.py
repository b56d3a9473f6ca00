"""Request field types that accept exactly what their JSON Schema type admits.

Pydantic's lax mode reads `false` or `"5"` as the integer 0 or 5, which the OpenAPI
document (`type: integer`) calls invalid; its strict mode refuses `5.0`, which JSON Schema
calls an integer (a number with no fractional part). `JsonInt` takes JSON integers and
integral numbers, nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _json_integer(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a JSON integer")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
