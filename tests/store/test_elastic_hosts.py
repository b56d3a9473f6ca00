"""Several Elasticsearch nodes in `elasticsearch_url`: one that cannot be reached is skipped
(tests/ingest/test_cluster.py kills the node listed first mid-stream)."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime

import pytest

from audit.errors import UsageError
from audit.store.elastic import ElasticEventStore, elasticsearch_hosts
from audit.store.protocol import StoredEvent
from tests.conftest import drop_prefix


def test_hosts_are_comma_separated_urls() -> None:
    assert elasticsearch_hosts("http://a:9200") == ["http://a:9200"]
    assert elasticsearch_hosts(" http://a:9200, https://b:9201 ,") == [
        "http://a:9200",
        "https://b:9201",
    ]
    for bad in ("", " , ", "a:9200", "http://a:9200,ftp://b"):
        with pytest.raises(UsageError, match="several separated by commas"):
            elasticsearch_hosts(bad)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


async def test_a_node_that_cannot_be_reached_is_skipped(elasticsearch_url: str) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    prefix = f"ffaudit-hosts-{uuid.uuid4().hex[:8]}"
    store = ElasticEventStore(f"{dead},{elasticsearch_url}", prefix=prefix, retry_budget_s=0.1)
    alone = ElasticEventStore(dead, prefix=prefix, retry_budget_s=0.1)
    try:
        assert await store.ping()
        assert not await alone.ping()
        now = datetime.now(UTC)
        events = [
            StoredEvent(
                doc_id=f"cam-1:{n}",
                tenant="acme",
                stream="cam-1",
                sequence=n,
                event_hash=f"{n:064x}",
                timestamp=now,
                record={"event.sequence": n},
                verdict="ok",
                failure=None,
                received_at=now,
            )
            for n in range(1, 6)
        ]
        # Written within a retry budget too short for any retry of ours: the client itself
        # went on to the live node.
        assert (await store.write(events)).written == 5
        assert [e.sequence async for e in store.scan("acme", "cam-1")] == [1, 2, 3, 4, 5]
    finally:
        await store.close()
        await alone.close()
        drop_prefix(elasticsearch_url, prefix)
