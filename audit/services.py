"""The service's long-lived objects, built once at startup by the app's lifespan.

`app.state.services` is the one attribute the app keeps on its state; routes take what they
need from it through the typed dependencies of `audit.deps` (`Queries`, `LogOfLogs`, ...),
never from `app.state` directly (tests/test_services_container.py holds that).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from audit.alerts.scheduler import AlertScheduler
from audit.alerts.service import AlertService
from audit.auth.tokens import TokenVerifier
from audit.ingest.forward import ForwardServer
from audit.ingest.service import IngestService
from audit.metrics import Metrics
from audit.producers.service import ProducerService
from audit.query.service import QueryService
from audit.retention.service import RetentionService
from audit.reverify.service import Reverifier
from audit.servicelog import ServiceLog
from audit.settings import AuditSettings
from audit.store.protocol import EventStore
from audit.streams.service import StreamService
from audit.subjects.service import SubjectService
from audit.tlog.checkpointer import Checkpointer
from audit.tlog.service import TlogService
from audit.webhooks.delivery import WebhookDeliverer
from audit.webhooks.service import WebhookService


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything a request or a background loop of the service may use."""

    settings: AuditSettings
    sessions: sessionmaker[Session]  # the control database
    store: EventStore
    metrics: Metrics
    tokens: TokenVerifier
    ingest: IngestService
    streams: StreamService
    servicelog: ServiceLog  # the log of the logs
    retention: RetentionService
    queries: QueryService
    subjects: SubjectService
    producers: ProducerService
    alerts: AlertService
    alert_scheduler: AlertScheduler
    reverifier: Reverifier
    webhooks: WebhookService
    forward: ForwardServer | None  # None unless `forward_enabled`
    webhook_delivery: WebhookDeliverer | None  # None unless `webhook_delivery_enabled`
    tlog: TlogService  # transparency logs: proofs and checkpoints
    checkpointer: Checkpointer | None  # None unless `tlog_checkpointer_enabled`
    console_key: bytes  # HMAC key of the console's CSRF tokens (dashboards.auth)
