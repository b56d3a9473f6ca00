"""The Kibana saved objects (dashboards/kibana/ffaudit.ndjson) and `ffaudit dashboards kibana`.

Kibana does not run here, so what its `_import` and its panels need is checked against what
does: the NDJSON's structure against the export format, every field the objects name against
the mapping of an index the real ElasticEventStore made (and `_field_caps` where Kibana
aggregates), the dataset filters against stored documents, and the import command against a
small HTTP server answering as Kibana does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from audit.store.elastic import ElasticEventStore
from dashboards.kibana_objects import (
    DEFAULT_SERVICE_STREAM,
    RECORDS,
    adapt,
    check,
    export_text,
    field_uses,
    load,
    packaged_text,
    parse,
)
from tests.store.conftest import make_event

ROOT = Path(__file__).resolve().parents[2]
NDJSON = ROOT / "dashboards" / "kibana" / "ffaudit.ndjson"
WHEN = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SERVICE_STREAM = f"{DEFAULT_SERVICE_STREAM}.acme.replica-1"


def _objects() -> list[dict[str, Any]]:
    return load()


# -- (b) the file is what Kibana's _import takes -------------------------------------------


def test_every_line_is_a_saved_object_with_the_export_keys() -> None:
    lines = NDJSON.read_text(encoding="utf-8").splitlines()
    assert lines
    assert all(line.strip() for line in lines)
    decoded = [json.loads(line) for line in lines]
    assert all(isinstance(d, dict) for d in decoded)
    *objects, summary = decoded
    assert summary["exportedCount"] == len(objects)
    assert summary["missingRefCount"] == 0
    assert summary["missingReferences"] == []
    for obj in objects:
        assert {"id", "type", "attributes", "references", "managed"} <= obj.keys()
        assert obj["managed"] is False
        assert "typeMigrationVersion" in obj or "migrationVersion" in obj
        assert isinstance(obj["id"], str)
        assert obj["id"]
        assert isinstance(obj["attributes"], dict)
        assert isinstance(obj["references"], list)
        assert isinstance(obj["attributes"]["title"], str)
        assert obj["attributes"]["title"]
    types = [o["type"] for o in objects]
    assert set(types) == {"index-pattern", "lens", "dashboard"}
    assert types.count("index-pattern") == 1
    ids = [o["id"] for o in objects]
    assert len(ids) == len(set(ids))


def test_the_data_view_reads_every_tenants_event_indices() -> None:
    [view] = [o for o in _objects() if o["type"] == "index-pattern"]
    assert view["attributes"]["title"] == "ffaudit-events-*"
    assert view["attributes"]["timeFieldName"] == "ffaudit.ingest.timestamp"
    assert view["references"] == []


def test_every_reference_resolves_to_an_object_of_its_type() -> None:
    objects, summary = parse(packaged_text())
    assert check(objects, summary) == []
    by_id = {o["id"]: o["type"] for o in objects}
    for obj in objects:
        names = [r["name"] for r in obj["references"]]
        assert len(names) == len(set(names)), obj["id"]
        for ref in obj["references"]:
            assert by_id.get(ref["id"]) == ref["type"], (obj["id"], ref)


def test_dashboards_reference_each_panel_and_lens_objects_their_data_view() -> None:
    objects = _objects()
    lenses = {o["id"]: o for o in objects if o["type"] == "lens"}
    dashboards = {o["attributes"]["title"]: o for o in objects if o["type"] == "dashboard"}
    assert set(dashboards) == {"ffaudit: auditor", "ffaudit: security", "ffaudit: engineer"}
    shown: set[str] = set()
    for dashboard in dashboards.values():
        panels = json.loads(dashboard["attributes"]["panelsJSON"])
        json.loads(dashboard["attributes"]["optionsJSON"])
        json.loads(dashboard["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert panels
        refs = {r["name"]: r for r in dashboard["references"]}
        indices = [p["panelIndex"] for p in panels]
        assert len(indices) == len(set(indices))
        for panel in panels:
            ref = refs[f"{panel['panelIndex']}:{panel['panelRefName']}"]
            assert ref["type"] == "lens"
            assert ref["id"] in lenses
            assert panel["gridData"]["i"] == panel["panelIndex"]
            assert panel["gridData"]["x"] + panel["gridData"]["w"] <= 48
            shown.add(ref["id"])
    assert shown == set(lenses)  # every visualization is on some dashboard
    for lens in lenses.values():
        state = lens["attributes"]["state"]
        refs = {r["name"]: r for r in lens["references"]}
        for layer_id, layer in state["datasourceStates"]["formBased"]["layers"].items():
            assert refs[f"indexpattern-datasource-layer-{layer_id}"]["type"] == "index-pattern"
            assert set(layer["columnOrder"]) == set(layer["columns"])
        # Each panel says which records it counts: the dataset filter.
        [dataset] = state["filters"]
        assert refs[dataset["meta"]["indexRefName"]]["type"] == "index-pattern"
        assert set(dataset["query"]["prefix"]) == {"ffaudit.ingest.stream"}


def test_the_broken_cases_are_caught() -> None:
    objects = _objects()
    lens = next(o for o in objects if o["type"] == "lens")
    dashboard = next(o for o in objects if o["type"] == "dashboard")
    dangling = [
        {**o, "references": [{**o["references"][0], "id": "nowhere"}, *o["references"][1:]]}
        if o is lens
        else o
        for o in objects
    ]
    assert any("names no index-pattern 'nowhere'" in p for p in check(dangling))
    no_panel_ref = [
        {**o, "references": o["references"][1:]} if o is dashboard else o for o in objects
    ]
    assert any("has no reference" in p for p in check(no_panel_ref))
    assert any("used twice" in p for p in check([*objects, lens]))
    assert any("summary counts" in p for p in check(objects, {"exportedCount": 1}))


def test_export_substitutes_the_index_prefix_and_service_stream() -> None:
    objects, summary = parse(export_text(index_prefix="audit-prod", service_stream="svc"))
    assert check(objects, summary) == []
    [view] = [o for o in objects if o["type"] == "index-pattern"]
    assert view["attributes"]["title"] == "audit-prod-*"
    for lens in (o for o in objects if o["type"] == "lens"):
        [dataset] = lens["attributes"]["state"]["filters"]
        assert dataset["query"] == {"prefix": {"ffaudit.ingest.stream": "svc"}}
        assert json.loads(dataset["meta"]["value"]) == dataset["query"]
    assert [o["id"] for o in objects] == [o["id"] for o in _objects()]


def test_the_ndjson_ships_with_the_package() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = config["tool"]["setuptools"]["package-data"]["dashboards"]
    assert "kibana/*.ndjson" in data
    assert "dashboards" in config["tool"]["setuptools"]["packages"]
    assert NDJSON.is_file()
    # Loaded as package data (importlib.resources), not by a path into the checkout.
    assert packaged_text() == NDJSON.read_text(encoding="utf-8")


# -- (a) every field exists in the real mapping, aggregatable where Kibana aggregates ------


def _leaf_fields(properties: dict[str, Any], parent: str = "") -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, spec in properties.items():
        key = f"{parent}{name}"
        if "properties" in spec:
            found.update(_leaf_fields(spec["properties"], f"{key}."))
        else:
            found[key] = spec
            for sub, sub_spec in spec.get("fields", {}).items():
                found[f"{key}.{sub}"] = sub_spec
    return found


@pytest.fixture
def stored(elasticsearch_url: str, fresh_es_prefix: str) -> Iterator[Elasticsearch]:
    """Indices made by the real store: a producer record, a record of the service's log of
    the logs, and a record stored unindexed (a field of the wrong type)."""

    async def write() -> None:
        store = ElasticEventStore(elasticsearch_url, prefix=fresh_es_prefix)
        try:
            await store.write(
                [
                    make_event("acme", 1, timestamp=WHEN, extra={"error.type": "Timeout"}),
                    make_event(
                        "acme",
                        1,
                        stream=SERVICE_STREAM,
                        timestamp=WHEN,
                        extra={"event.dataset": "ffaudit.service", "event.action": "audit.queried"},
                    ),
                    make_event(
                        "acme",
                        2,
                        timestamp=WHEN,
                        verdict="rejected",
                        failure="modified",
                        extra={"event.outcome": {"not": "a keyword"}},
                    ),
                ]
            )
        finally:
            await store.close()

    asyncio.run(write())
    with Elasticsearch(elasticsearch_url) as client:
        client.indices.refresh(index=f"{fresh_es_prefix}-*")
        yield client


def test_every_field_named_is_mapped_and_aggregatable_where_aggregated(
    stored: Elasticsearch, fresh_es_prefix: str
) -> None:
    objects = adapt(_objects(), index_prefix=fresh_es_prefix)
    [view] = [o for o in objects if o["type"] == "index-pattern"]
    pattern = view["attributes"]["title"]
    mappings = stored.indices.get_mapping(index=pattern).body
    assert mappings, f"the data view's {pattern} matches no index of the store"
    caps = stored.field_caps(index=pattern, fields="*").body["fields"]
    uses = field_uses(objects)
    assert {u.operation for u in uses} >= {"terms", "date_histogram", "unique_count", "filter"}
    for mapping in mappings.values():
        fields = _leaf_fields(mapping["mappings"]["properties"])
        for use in uses:
            assert use.field != RECORDS
            assert use.field in fields, f"{use.object_id}: {use.field} is not mapped"
            assert fields[use.field].get("type") not in ("object", "nested"), use
            assert fields[use.field].get("enabled", True), use
    for use in uses:
        [(kind, cap)] = caps[use.field].items()
        assert cap["searchable"], use
        if use.aggregated:
            assert cap["aggregatable"], f"{use.object_id}: {use.field} cannot be aggregated"
        if use.operation == "date_histogram" or use.operation == "time":
            assert kind == "date", use
        if use.operation == "terms":
            assert kind == "keyword", use


def test_the_dataset_filter_splits_producer_records_from_the_log_of_the_logs(
    stored: Elasticsearch, fresh_es_prefix: str
) -> None:
    objects = adapt(_objects(), index_prefix=fresh_es_prefix)
    pattern = f"{fresh_es_prefix}-*"
    [view] = [o for o in objects if o["type"] == "index-pattern"]
    time_field = view["attributes"]["timeFieldName"]
    seen: dict[bool, set[str]] = {}
    for lens in (o for o in objects if o["type"] == "lens"):
        [dataset] = lens["attributes"]["state"]["filters"]
        clause = {
            "bool": {"must_not" if dataset["meta"]["negate"] else "filter": [dataset["query"]]}
        }
        # As Kibana asks: the dataset filter and the time picker's range on the time field.
        query = {
            "bool": {
                "filter": [
                    clause,
                    {"range": {time_field: {"gte": "2026-11-21", "lt": "2026-11-22"}}},
                ]
            }
        }
        hits = stored.search(index=pattern, query=query, size=10).body["hits"]["hits"]
        seen.setdefault(dataset["meta"]["negate"], set()).update(h["_id"] for h in hits)
    # Producer panels count the producer's records, the unindexed one included (it has no
    # @timestamp, but the time field is on every document); the log-of-the-logs panels count
    # the service's records only.
    assert seen == {True: {"cam-1:1", "cam-1:2"}, False: {f"{SERVICE_STREAM}:1"}}
    unindexed = stored.search(
        index=pattern, query={"term": {"ffaudit.ingest.verdict": "rejected"}}
    ).body["hits"]["hits"]
    assert len(unindexed) == 1
    assert "@timestamp" not in unindexed[0]["_source"]


# -- the command line ------------------------------------------------------------------------


def ffaudit(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_export_writes_the_packaged_objects(tmp_path: Path) -> None:
    out = tmp_path / "kibana.ndjson"
    done = ffaudit("dashboards", "kibana", "export", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == packaged_text()
    done = ffaudit("dashboards", "kibana", "export", "--out", str(out), "--index-prefix", "acme-x")
    assert done.returncode == 0, done.stderr
    objects, _ = parse(out.read_text(encoding="utf-8"))
    assert objects[0]["attributes"]["title"] == "acme-x-*"
    done = ffaudit("dashboards", "kibana", "export", "--out", str(out), "--index-prefix", "A*")
    assert done.returncode == 2
    assert "index prefix 'A*'" in done.stderr


# -- (c) import: the request Kibana gets, and what its answers make of the exit code -------


class Kibana(ThreadingHTTPServer):
    """Answers `_import` as Kibana does (`status`, `body`); records each request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Kibana

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.requests.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        payload = json.dumps(self.server.body).encode()
        self.send_response(self.server.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def kibana() -> Iterator[Kibana]:
    server = Kibana()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _uploaded(request: dict[str, Any]) -> tuple[str, bytes]:
    """The multipart request's one part: its field name and its content."""
    content_type = request["headers"]["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request["body"]
    )
    [part] = list(message.iter_parts())
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)
    return str(part.get_param("name", header="content-disposition")), content


def test_import_posts_the_objects_as_kibana_expects(kibana: Kibana) -> None:
    count = len(_objects())
    kibana.body = {"success": True, "successCount": count, "successResults": []}
    done = ffaudit(
        "dashboards",
        "kibana",
        "import",
        "--url",
        kibana.url + "/",
        "--space",
        "audit",
        "--overwrite",
        "--user",
        "elastic",
        "--password",
        "s3cret",
    )
    assert done.returncode == 0, done.stderr
    assert f"imported {count} Kibana objects" in done.stdout
    [request] = kibana.requests
    assert request["path"] == "/s/audit/api/saved_objects/_import?overwrite=true"
    assert request["headers"]["kbn-xsrf"] == "true"
    token = base64.b64encode(b"elastic:s3cret").decode()
    assert request["headers"]["authorization"] == f"Basic {token}"
    name, content = _uploaded(request)
    assert name == "file"
    assert content.decode() == packaged_text()


def test_import_with_an_api_key_and_without_overwrite(kibana: Kibana) -> None:
    kibana.body = {"success": True, "successCount": len(_objects())}
    done = ffaudit(
        "dashboards",
        "kibana",
        "import",
        "--url",
        kibana.url,
        "--index-prefix",
        "audit-prod",
        env={"FFAUDIT_KIBANA_API_KEY": "a2V5OnNlY3JldA=="},
    )
    assert done.returncode == 0, done.stderr
    [request] = kibana.requests
    assert request["path"] == "/api/saved_objects/_import"
    assert request["headers"]["authorization"] == "ApiKey a2V5OnNlY3JldA=="
    objects, _ = parse(_uploaded(request)[1].decode())
    assert objects[0]["attributes"]["title"] == "audit-prod-*"


def test_import_errors_exit_non_zero_and_are_printed(kibana: Kibana) -> None:
    kibana.body = {
        "success": False,
        "successCount": 2,
        "errors": [
            {
                "id": "ffaudit-dashboard-auditor",
                "type": "dashboard",
                "meta": {"title": "ffaudit: auditor"},
                "error": {"type": "conflict"},
            },
            {
                "id": "ffaudit-lens-records",
                "type": "lens",
                "title": "Producer records",
                "error": {
                    "type": "missing_references",
                    "references": [{"type": "index-pattern", "id": "ffaudit-events"}],
                },
            },
        ],
    }
    done = ffaudit("dashboards", "kibana", "import", "--url", kibana.url)
    assert done.returncode == 2
    assert "dashboard ffaudit-dashboard-auditor (ffaudit: auditor): conflict" in done.stderr
    assert "missing_references: index-pattern ffaudit-events" in done.stderr
    assert "imported 2 objects and refused 2" in done.stderr
    assert "--overwrite" in done.stderr


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "Kibana refused the import: 401: unauthorized"), (404, "is the space right?")],
)
def test_import_refused_by_kibana(kibana: Kibana, status: int, expected: str) -> None:
    kibana.status, kibana.body = status, {"statusCode": status, "message": "unauthorized"}
    done = ffaudit("dashboards", "kibana", "import", "--url", kibana.url, "--space", "nope")
    assert done.returncode == 2
    assert expected in done.stderr


def test_import_of_an_unreachable_kibana_says_so() -> None:
    done = ffaudit(
        "dashboards", "kibana", "import", "--url", "http://127.0.0.1:9", "--timeout", "5"
    )
    assert done.returncode == 2
    assert "cannot reach Kibana at http://127.0.0.1:9" in done.stderr
