"""The console's routes: sign-in and sign-out here, each view in dashboards/views/.

`mount(app)` is called by the app factory: the pages under /console, the static files
under /console/static (with the same security headers), on the API's own port.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from audit.deps import services
from audit.errors import AuthenticationError, FFAuditError
from audit.services import Services
from dashboards.auth import (
    LOGIN_COOKIE,
    ChangingViewer,
    CsrfKey,
    SignInRequired,
    check_origin,
    clear_session,
    cookie_name,
    open_session,
    set_session,
    viewer,
)
from dashboards.pages import HERE, PREFIX, SECURITY_HEADERS, render
from dashboards.state import ConsoleState, RateLimited, console_state
from dashboards.views import ROUTERS

Svc = Annotated[Services, Depends(services)]
_LOGIN_TTL_S = 1800
# Browsers keep a cookie only if its name, value and attributes fit in 4096 bytes (RFC 6265
# asks for at least that; Chromium and Firefox drop a larger one without a word). Left for
# the attributes: Max-Age, Path, Secure, HttpOnly, SameSite (about 90 bytes).
MAX_SESSION_COOKIE = 4096 - 96


class ConsoleStatic(StaticFiles):
    """The vendored and own static files, with the pages' security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in SECURITY_HEADERS.items():
            if name != "Cache-Control":
                response.headers[name] = value
        # Versioned file names (vendor/) never change; the console's own change per release.
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response


router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _login_csrf(svc: Services, nonce: str) -> str:
    return CsrfKey(svc.console_key).token(f"login:{nonce}")


def sign_in_page(
    request: Request, svc: Services, *, message: str | None = None, status_code: int = 200
) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "sign_in.html",
        None,
        svc.settings,
        status_code=status_code,
        context={
            "message": message,
            "open_mode": not svc.tokens.configured,
            "login_csrf": _login_csrf(svc, nonce),
        },
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=_LOGIN_TTL_S,
        path=PREFIX,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request, svc: Svc) -> Response:
    return sign_in_page(request, svc)


@router.post("/sign-in")
async def sign_in(
    request: Request,
    svc: Svc,
    csrf: Annotated[str, Form(max_length=128)] = "",
    token: Annotated[str, Form(max_length=16384)] = "",
    tenant: Annotated[str, Form(max_length=63)] = "",
) -> Response:
    check_origin(request)
    # Login CSRF: the form must come from the sign-in page this browser was given.
    CsrfKey(svc.console_key).check(
        f"login:{request.cookies.get(LOGIN_COOKIE, '')}",
        csrf if csrf else None,
    )
    redirect = RedirectResponse(f"{PREFIX}/", status_code=303)
    if not svc.tokens.configured:
        set_session(request, redirect, open_session(tenant.strip()), None)
    else:
        try:
            principal = svc.tokens.verify(token.strip())
        except AuthenticationError as exc:
            return sign_in_page(request, svc, message=exc.message, status_code=401)
        size = len(cookie_name(request)) + 1 + len(token.strip().encode())
        if size > MAX_SESSION_COOKIE:
            # The browser would drop the session cookie and every page would send it back
            # here, signed in by all appearances and never in: say why instead.
            return sign_in_page(
                request,
                svc,
                message=(
                    f"this access token is too large for the console: {size} bytes as a "
                    f"session cookie, and browsers keep at most {MAX_SESSION_COOKIE}. Ask for "
                    "a token with fewer claims (roles, groups), or use the API with it"
                ),
                status_code=400,
            )
        set_session(request, redirect, token.strip(), principal.expires_at)
    redirect.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return redirect


@router.post("/sign-out")
async def sign_out(request: Request, who: ChangingViewer) -> Response:
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    clear_session(request, response)
    return response


for _views in ROUTERS:
    router.include_router(_views)


def error_page(request: Request, exc: FFAuditError, svc: Services) -> Response:
    """The console's answer to a refused or failed page: HTML, never the API's JSON."""
    if isinstance(exc, SignInRequired):
        if request.headers.get("hx-request"):
            # An htmx fragment cannot show a page: send the browser there.
            return Response(status_code=401, headers={"HX-Redirect": f"{PREFIX}/sign-in"})
        if request.method == "GET":
            return sign_in_page(request, svc, message=None)
        return sign_in_page(request, svc, message=exc.message, status_code=401)
    heading = {
        401: "Sign-in required",
        403: "Not allowed",
        404: "Not found",
        409: "Conflict",
        422: "Invalid request",
        429: "Too many requests",
    }.get(exc.http_status, "Something went wrong")
    try:
        who = viewer(request, svc)
    except FFAuditError:
        who = None
    response = render(
        request,
        "error.html",
        who,
        svc.settings,
        status_code=exc.http_status,
        context={"status": exc.http_status, "heading": heading, "message": exc.message},
    )
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def http_error(request: Request, status: int, message: str) -> Response:
    """The framework's own refusals (unknown page, bad parameters) as console pages."""
    error = FFAuditError(message)
    error.http_status = status
    return error_page(request, error, services(request))


def mount(app: FastAPI) -> None:
    # Per app, as the services are: read by views through dashboards.state.Console.
    state = ConsoleState()
    app.dependency_overrides[console_state] = lambda: state
    app.include_router(router)
    app.mount(f"{PREFIX}/static", ConsoleStatic(directory=HERE / "static"), name="console-static")
