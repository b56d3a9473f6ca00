"""FastAPI dependencies: everything lives on app.state, built once by the app factory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from audit.auth.tokens import Principal, Role, TokenVerifier, require
from audit.errors import AuthenticationError, InvalidInputError
from audit.settings import AuditSettings

if TYPE_CHECKING:
    from audit.ingest.service import IngestService
    from audit.streams.service import StreamService


def settings_dep(request: Request) -> AuditSettings:
    settings: AuditSettings = request.app.state.settings
    return settings


def ingest_service(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


def stream_service(request: Request) -> StreamService:
    service: StreamService = request.app.state.streams
    return service


_bearer = HTTPBearer(auto_error=False)


def principal_dep(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller, or None in open mode (no verification key configured: development on
    loopback only, refused by `ffaudit serve` on any other address)."""
    verifier: TokenVerifier = request.app.state.tokens
    if not verifier.configured:
        return None
    if credentials is None:
        raise AuthenticationError("a bearer token is required")
    principal = verifier.verify(credentials.credentials)
    # For the error handler: a refused request of a known caller goes to its tenant's log
    # of the logs.
    request.state.principal = principal
    return principal


Caller = Annotated[Principal | None, Depends(principal_dep)]


def tenant_scope(who: Principal | None, tenant: str | None) -> str:
    """The token's tenant; only in open mode (development) does the caller name one."""
    if who is not None:
        return who.tenant
    if tenant is None:
        raise InvalidInputError("open mode: pass ?tenant=")
    return tenant


def allow(request: Request, who: Principal | None, *roles: Role) -> Principal | None:
    """Role check; open mode lets everything through."""
    if who is None:
        return None
    return require(who, request.app.state.settings, *roles)
