"""Prometheus metrics of one service instance (its own registry: no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter(
            "ffaudit_records_ingested",
            "Records handled at ingest, by outcome and source",
            ["outcome", "source"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "ffaudit_records_rejected",
            "Input refused or quarantined, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.integrity_failures = Counter(
            "ffaudit_integrity_failures",
            "Integrity failures found at ingest, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "ffaudit_ack_latency_seconds",
            "Receipt of a batch to its acknowledgement",
            ["source"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.in_flight = Gauge(
            "ffaudit_ingest_in_flight",
            "Batches being verified and stored",
            registry=self.registry,
        )
        self.backpressure = Gauge(
            "ffaudit_store_backpressure",
            "1 while the event store refuses writes (no acks)",
            registry=self.registry,
        )
