"""kill -9 the service mid-stream, restart it, let the producer resend: nothing lost or doubled."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from audit.devtools.elasticsearch import ElasticsearchConfig
from audit.devtools.elasticsearch import down as es_down
from audit.devtools.elasticsearch import up as es_up
from audit.integrity.keys import Signer
from audit.store.elastic import ElasticEventStore
from audit.store.sql import SqlEventStore
from tests.conftest import register_stream

from .conftest import make_records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`ffaudit serve` as a real child process."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "FFAUDIT_HTTP_PORT": str(self.port),
            "FFAUDIT_FORWARD_PORT": "0",
        }
        self.log = (tmp / "service.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audit", "serve"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, "service exited during start"
            time.sleep(0.1)
        raise AssertionError("service did not become ready")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class Producer(threading.Thread):
    """Sends batches in order; a batch counts as delivered only once acknowledged (2xx)."""

    def __init__(self, url: str, batches: list[list[dict[str, Any]]]) -> None:
        super().__init__(daemon=True)
        self.url, self.batches = url, batches
        self.acked = 0
        self.retries = 0

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            for batch in self.batches:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        response = http.post(
                            f"{self.url}/v1/streams/cam-1/records",
                            content=orjson.dumps(batch),
                            headers={"content-type": "application/json"},
                        )
                        if response.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    self.retries += 1
                    time.sleep(0.05)
                else:
                    return
                self.acked += 1


@pytest.mark.slow
async def test_kill9_mid_stream_then_resend_stores_every_record_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/durable.db"
    service = Service(tmp_path, {"FFAUDIT_DATABASE_URL": url})
    signer = Signer.generate()
    records = make_records(signer, 400, every=50)
    batches = [records[i : i + 10] for i in range(0, len(records), 10)]
    service.start()
    try:
        register_stream(service.url, "cam-1", "acme", signer.verifier.pem().decode())
        producer = Producer(service.url, batches)
        producer.start()
        for kill_at in (8, 20, 31):  # three crashes at different points of the stream
            while producer.acked < kill_at and producer.is_alive():
                time.sleep(0.005)
            service.kill9()
            service.start()
        producer.join(timeout=300)
        assert producer.acked == len(batches)
        assert producer.retries > 0  # the crashes really interrupted deliveries
        head = httpx.get(f"{service.url}/v1/streams/cam-1").json()
    finally:
        service.stop()

    store = SqlEventStore(url)
    try:
        stored = [e async for e in store.scan("acme", "cam-1")]
    finally:
        await store.close()
    assert [e.sequence for e in stored] == list(range(1, len(records) + 1))
    assert [e.record for e in stored] == records
    assert [(e.sequence, e.verdict, e.failure) for e in stored if e.verdict != "ok"] == []
    assert head["head_sequence"] == len(records)
    assert head["signed_through"] == len(records)


@pytest.fixture
def private_elasticsearch() -> Iterator[ElasticsearchConfig]:
    """An Elasticsearch node of this test alone: it is stopped and started mid-stream."""
    runtime = Path(f"/tmp/ffaudit-es-durability-{uuid.uuid4().hex[:8]}")
    config = ElasticsearchConfig(port=free_port(), runtime_dir=runtime)
    es_up(config)
    try:
        yield config
    finally:
        es_down(config)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.slow
async def test_elasticsearch_down_mid_stream_loses_nothing(
    tmp_path: Path, private_elasticsearch: ElasticsearchConfig
) -> None:
    url = f"sqlite:///{tmp_path}/control.db"
    service = Service(
        tmp_path,
        {"FFAUDIT_DATABASE_URL": url, "FFAUDIT_ELASTICSEARCH_URL": private_elasticsearch.url},
    )
    signer = Signer.generate()
    records = make_records(signer, 300, every=50)
    batches = [records[i : i + 10] for i in range(0, len(records), 10)]
    service.start()
    try:
        register_stream(service.url, "cam-1", "acme", signer.verifier.pem().decode())
        producer = Producer(service.url, batches)
        producer.start()
        while producer.acked < 10 and producer.is_alive():
            time.sleep(0.01)
        es_down(private_elasticsearch)
        acked_while_down = producer.acked
        time.sleep(3)  # the service must refuse (503) rather than ack into the void
        assert producer.acked <= acked_while_down + 1
        assert httpx.get(f"{service.url}/readyz").status_code == 503
        es_up(private_elasticsearch)
        producer.join(timeout=300)
        assert producer.acked == len(batches)
        metrics = httpx.get(f"{service.url}/metrics").text
    finally:
        service.stop()
    assert "ffaudit_store_backpressure 0.0" in metrics

    store = ElasticEventStore(private_elasticsearch.url)
    try:
        await store.refresh()
        stored = [e async for e in store.scan("acme", "cam-1")]
    finally:
        await store.close()
    assert [e.sequence for e in stored] == list(range(1, len(records) + 1))
    assert [e.record for e in stored] == records
    assert [(e.sequence, e.verdict, e.failure) for e in stored if e.verdict != "ok"] == []
