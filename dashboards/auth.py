"""Console sessions: the API's own bearer token, kept in a cookie, and CSRF tokens bound to it.

The cookie holds the JWT the caller signed in with, and every request verifies it with the
service's TokenVerifier, exactly as the API does: no console-only session store, nothing a
replica must share but the signing keys, and the session ends when the token expires (the
cookie's Max-Age is the token's remaining life). HttpOnly, SameSite=Strict, and Secure with
the `__Host-` prefix when the request came over TLS.

CSRF: a signed double-submit token (OWASP): HMAC-SHA256 of the session cookie under a key
kept in the service keys directory (shared by replicas like the service's other keys). A
page carries it in its forms and in `hx-headers` for htmx; a state-changing request without
it, or with another session's, is refused. Requests whose Origin names another site are
refused as well.

In open mode (no token verification key: loopback development) there is no sign-in; the
cookie names the tenant being looked at, and every page says OPEN MODE.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from fastapi import Depends, Request, Response

from audit.auth.tokens import Principal
from audit.common.files import write_atomic
from audit.deps import services
from audit.errors import AuthenticationError, ForbiddenError, InvalidInputError
from audit.services import Services

COOKIE = "ffaudit_console"
SECURE_COOKIE = "__Host-ffaudit_console"  # the prefix: Secure, Path=/, no Domain
LOGIN_COOKIE = "ffaudit_console_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
KEY_FILE = "console-csrf.key"
_OPEN_PREFIX = "open:"
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class SignInRequired(AuthenticationError):
    """No (valid) session: pages answer with the sign-in page, not a JSON error."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: the verified principal (None in open mode) and its tenant."""

    principal: Principal | None
    tenant: str
    csrf: str

    @property
    def open_mode(self) -> bool:
        return self.principal is None

    @property
    def name(self) -> str:
        return self.principal.subject if self.principal else "anyone (open mode)"


def load_key(directory: Path) -> bytes:
    """The HMAC key of CSRF tokens, created once per service keys directory."""
    path = directory / KEY_FILE
    if not path.exists():
        # Two replicas starting at once may both write: the later rename wins and the
        # earlier one's tokens fail once (a reload); never a half-written key.
        write_atomic(path, secrets.token_bytes(32), mode=0o600)
    key = path.read_bytes()
    if len(key) < 32:
        raise InvalidInputError(f"{path}: the console's CSRF key is damaged")
    return key


class CsrfKey:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def token(self, session: str) -> str:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        mac.update(session.encode())
        return mac.finalize().hex()

    def check(self, session: str, presented: str | None) -> None:
        if not presented or not constant_time.bytes_eq(
            self.token(session).encode(), presented.encode()
        ):
            raise ForbiddenError("missing or wrong CSRF token: reload the page and try again")


def cookie_name(request: Request) -> str:
    return SECURE_COOKIE if request.url.scheme == "https" else COOKIE


def session_value(request: Request) -> str | None:
    return request.cookies.get(cookie_name(request))


def open_session(tenant: str) -> str:
    if not tenant or len(tenant) > 63 or not set(tenant) <= _TENANT_CHARS:
        raise InvalidInputError("a tenant is 1-63 characters of a-z, 0-9, '_' or '-'")
    return _OPEN_PREFIX + tenant


def set_session(request: Request, response: Response, value: str, expires: datetime | None) -> None:
    max_age = None
    if expires is not None:
        max_age = max(0, int((expires - datetime.now(UTC)).total_seconds()))
    response.set_cookie(
        cookie_name(request),
        value,
        max_age=max_age,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        cookie_name(request),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def check_origin(request: Request) -> None:
    """A state-changing request from another site is refused even before the CSRF token.

    The scheme is the one uvicorn says the request came with: behind a TLS-terminating
    proxy, X-Forwarded-Proto is believed only from the addresses in FORWARDED_ALLOW_IPS
    (uvicorn's forwarded_allow_ips, loopback by default), and the host is the Host header
    the proxy passes on. X-Forwarded-Host is never read: anyone could send it."""
    origin = request.headers.get("origin")
    if origin is None or origin == f"{request.url.scheme}://{request.url.netloc}":
        return
    if request.url.scheme == "http" and origin == f"https://{request.url.netloc}":
        # The browser used https for this very host, the service saw http: a TLS proxy
        # whose X-Forwarded-Proto is not trusted. Refused all the same, but said so.
        raise ForbiddenError(
            "cross-site request refused: the page was loaded over https but reached the "
            "service as http. Behind a TLS-terminating proxy, set FORWARDED_ALLOW_IPS to "
            "the proxy's address (see dashboards/README.md)"
        )
    raise ForbiddenError("cross-site request refused")


def viewer(request: Request, svc: Annotated[Services, Depends(services)]) -> Viewer:
    """The signed-in viewer of a console page, verified on every request."""
    value = session_value(request)
    csrf_key = CsrfKey(svc.console_key)
    if not svc.tokens.configured:
        if value is None or not value.startswith(_OPEN_PREFIX):
            raise SignInRequired("open mode: choose a tenant")
        tenant = value.removeprefix(_OPEN_PREFIX)
        return Viewer(None, open_session(tenant).removeprefix(_OPEN_PREFIX), csrf_key.token(value))
    if value is None or value.startswith(_OPEN_PREFIX):
        raise SignInRequired("sign in with your access token")
    try:
        principal = svc.tokens.verify(value)
    except AuthenticationError as exc:
        raise SignInRequired(exc.message) from None
    # For the error handler: a refused page view of a known caller is logged to its tenant.
    request.state.principal = principal
    return Viewer(principal, principal.tenant, csrf_key.token(value))


async def csrf_viewer(
    request: Request,
    who: Annotated[Viewer, Depends(viewer)],
    svc: Annotated[Services, Depends(services)],
) -> Viewer:
    """The viewer of a state-changing request: same-site, carrying its session's CSRF token
    (the `csrf` form field, or the X-CSRF-Token header htmx sends)."""
    check_origin(request)
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        form = await request.form()
        field = form.get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    CsrfKey(svc.console_key).check(session_value(request) or "", presented)
    return who


ConsoleViewer = Annotated[Viewer, Depends(viewer)]
ChangingViewer = Annotated[Viewer, Depends(csrf_viewer)]
