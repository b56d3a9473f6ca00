"""Control-database models, all on the one declarative base (`audit.db.base.Base`).

Importing this package registers every table with the metadata Alembic compares against.
"""

from audit.models.alerts import Alert, AlertLease, AlertRule, AlertWatermark
from audit.models.events import Event
from audit.models.producers import Producer
from audit.models.quarantine import QuarantinedRecord
from audit.models.retention import (
    LegalHold,
    RetentionArchive,
    RetentionCheckpoint,
    RetentionLease,
    RetentionPolicy,
    RetentionRun,
)
from audit.models.reverify import ReverifyMark
from audit.models.streams import (
    ChainHead,
    Checkpoint,
    PendingRecord,
    Stream,
    StreamKey,
    Tenant,
)
from audit.models.subjects import SubjectErasure, SubjectKey
from audit.models.tlog import TlogCheckpoint, TlogLeaf, TlogLog, TlogNode, WitnessLog
from audit.models.webhooks import Webhook, WebhookDelivery

__all__ = [
    "Alert",
    "AlertLease",
    "AlertRule",
    "AlertWatermark",
    "ChainHead",
    "Checkpoint",
    "Event",
    "LegalHold",
    "PendingRecord",
    "Producer",
    "QuarantinedRecord",
    "RetentionArchive",
    "RetentionCheckpoint",
    "RetentionLease",
    "RetentionPolicy",
    "RetentionRun",
    "ReverifyMark",
    "Stream",
    "StreamKey",
    "SubjectErasure",
    "SubjectKey",
    "Tenant",
    "TlogCheckpoint",
    "TlogLeaf",
    "TlogLog",
    "TlogNode",
    "Webhook",
    "WebhookDelivery",
    "WitnessLog",
]
