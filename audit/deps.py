"""FastAPI dependencies: the caller, and the services the app built once at startup.

The app keeps one attribute on its state, `services` (audit.services.Services); `services`
below is the one place that reads it. Routes name what they use by type: `Queries`,
`LogOfLogs`, `Settings`, ... The service dependencies are coroutines so that FastAPI calls
them on the event loop rather than in its thread pool (they only read an attribute), and
none has a parameter of its own: they add nothing to the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from audit.alerts.service import AlertService
from audit.auth.policy import Permission, authorize
from audit.auth.tokens import Principal
from audit.errors import AuthenticationError, InvalidInputError
from audit.ingest.service import IngestService
from audit.producers.service import ProducerService
from audit.query.service import QueryService
from audit.retention.service import RetentionService
from audit.reverify.service import Reverifier
from audit.servicelog import ServiceLog
from audit.services import Services
from audit.settings import AuditSettings
from audit.streams.service import StreamService
from audit.subjects.service import SubjectService
from audit.tlog.service import TlogService
from audit.webhooks.delivery import WebhookDeliverer
from audit.webhooks.service import WebhookService


def services(request: Request) -> Services:
    """The services of the app serving `request`, built by its lifespan."""
    found: Services = request.app.state.services
    return found


async def services_dep(request: Request) -> Services:
    return services(request)


async def settings_dep(request: Request) -> AuditSettings:
    return services(request).settings


async def ingest_service(request: Request) -> IngestService:
    return services(request).ingest


async def stream_service(request: Request) -> StreamService:
    return services(request).streams


async def query_service(request: Request) -> QueryService:
    return services(request).queries


async def retention_service(request: Request) -> RetentionService:
    return services(request).retention


async def subject_service(request: Request) -> SubjectService:
    return services(request).subjects


async def producer_service(request: Request) -> ProducerService:
    return services(request).producers


async def alert_service(request: Request) -> AlertService:
    return services(request).alerts


async def reverifier(request: Request) -> Reverifier:
    return services(request).reverifier


async def webhook_service(request: Request) -> WebhookService:
    return services(request).webhooks


async def webhook_deliverer(request: Request) -> WebhookDeliverer | None:
    return services(request).webhook_delivery


async def service_log(request: Request) -> ServiceLog:
    return services(request).servicelog


async def tlog_service(request: Request) -> TlogService:
    return services(request).tlog


AppServices = Annotated[Services, Depends(services_dep)]
Settings = Annotated[AuditSettings, Depends(settings_dep)]
Ingest = Annotated[IngestService, Depends(ingest_service)]
Streams = Annotated[StreamService, Depends(stream_service)]
Queries = Annotated[QueryService, Depends(query_service)]
Retention = Annotated[RetentionService, Depends(retention_service)]
Subjects = Annotated[SubjectService, Depends(subject_service)]
Producers = Annotated[ProducerService, Depends(producer_service)]
Alerts = Annotated[AlertService, Depends(alert_service)]
Reverification = Annotated[Reverifier, Depends(reverifier)]
Webhooks = Annotated[WebhookService, Depends(webhook_service)]
Deliverer = Annotated[WebhookDeliverer | None, Depends(webhook_deliverer)]  # None: not enabled
Tlog = Annotated[TlogService, Depends(tlog_service)]
LogOfLogs = Annotated[ServiceLog, Depends(service_log)]  # the tenants' logs of the logs

_bearer = HTTPBearer(auto_error=False)


def principal_dep(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller, or None in open mode (no verification key configured: development on
    loopback only, refused by `ffaudit serve` on any other address)."""
    verifier = services(request).tokens
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


def allow(request: Request, who: Principal | None, permission: Permission) -> Principal | None:
    """The permission check of audit.auth.policy (the console uses the same table); open
    mode lets everything through."""
    authorize(who, services(request).settings, permission)
    return who
