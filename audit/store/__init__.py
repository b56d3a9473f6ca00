"""The event store: where verified records live (Elasticsearch, or SQL when embedded)."""

from __future__ import annotations

from audit.settings import AuditSettings
from audit.store.protocol import EventStore, StoredEvent, WriteResult


def make_event_store(settings: AuditSettings) -> EventStore:
    """Elasticsearch when `elasticsearch_url` is set, else the SQL store.

    The SQL store's schema comes from the migrations (`ffaudit db upgrade` / `upgrade()`).
    """
    if settings.elasticsearch_url:
        from audit.store.elastic import ElasticEventStore

        return ElasticEventStore(
            settings.elasticsearch_url, prefix=settings.elasticsearch_index_prefix
        )
    from audit.store.sql import SqlEventStore

    return SqlEventStore(settings.event_store_database_url)


__all__ = ["EventStore", "StoredEvent", "WriteResult", "make_event_store"]
