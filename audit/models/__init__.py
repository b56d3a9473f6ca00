"""Control-database models, all on the one declarative base (`audit.db.base.Base`).

Importing this package registers every table with the metadata Alembic compares against.
"""

from audit.models.alerts import Alert
from audit.models.events import Event
from audit.models.quarantine import QuarantinedRecord
from audit.models.streams import ChainHead, Checkpoint, PendingRecord, Stream, Tenant

__all__ = [
    "Alert",
    "ChainHead",
    "Checkpoint",
    "Event",
    "PendingRecord",
    "QuarantinedRecord",
    "Stream",
    "Tenant",
]
