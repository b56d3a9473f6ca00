"""HTTP helpers shared by the audit service and the engine sidecar (both FastAPI apps)."""

from __future__ import annotations

import re

from starlette.requests import Request

_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the request's path, for a 405's `Allow`:
    Starlette names only the first route that matched the path, and each method of a path
    is a route of its own in FastAPI (RFC 9110 §15.5.6). API routes answer no HEAD of their
    own."""
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^}/]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in item if m.upper() in _HTTP_METHODS}
    return sorted(methods)
