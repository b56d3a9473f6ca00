"""The Kibana saved objects of the audit trail (dashboards/kibana/ffaudit.ndjson): load,
adapt to a deployment, check, and write back as NDJSON.

The file is a Kibana 8 saved-objects export: one data view over the event indices
(`<prefix>-*`, every tenant's daily indices), Lens visualizations and three dashboards
(auditor, security, engineer). Every Lens object carries one filter that splits the two
kinds of record in the indices: the producers' (engines') records and the service's log of
the logs. The split is by `ffaudit.ingest.stream`, which the service assigns (a producer
cannot write into a service stream, `<service_stream>.<tenant>.<replica>`), rather than by
the record's own `event.dataset`, which a producer writes. The time field is
`ffaudit.ingest.timestamp`, the record time the store writes on every document;
`@timestamp` is absent from a record stored unindexed (audit.store.elastic), which a data
view on it would hide from every panel.

`ffaudit dashboards kibana export|import` (audit.cli.dashboards) is the command line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

from audit.errors import InvalidInputError, UsageError

PACKAGED: Final = "ffaudit.ndjson"  # in the package's kibana/ directory
DEFAULT_INDEX_PREFIX: Final = "ffaudit-events"  # AuditSettings.elasticsearch_index_prefix
DEFAULT_SERVICE_STREAM: Final = "ffaudit-service"  # AuditSettings.service_stream
STREAM_FIELD: Final = "ffaudit.ingest.stream"  # the field of the dataset filter
TYPES: Final = frozenset({"index-pattern", "lens", "dashboard"})
# Lens' pseudo-field of a count of records (no field of the mapping).
RECORDS: Final = "___records___"
# Keys every saved object of the file has (Kibana's export format).
REQUIRED: Final = ("id", "type", "attributes", "references", "managed")

# What Elasticsearch takes as an index prefix (lowercase; none of \/*?"<>|,# or a space) and
# what the service takes as a stream name (audit.streams.schemas).
_INDEX_PREFIX = re.compile(r"[a-z0-9][a-z0-9._-]{0,199}")
_STREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# A field named in a KQL query: `field : value` (the queries here use that form only).
_KQL_FIELD = re.compile(r"([A-Za-z@_][\w.@]*)\s*:")
# Elasticsearch query clauses whose keys are field names.
_FIELD_CLAUSES: Final = frozenset(
    {"prefix", "term", "terms", "match", "match_phrase", "range", "wildcard"}
)


@dataclass(frozen=True, slots=True)
class FieldUse:
    """One field a saved object names: in a Lens column (`operation` its operation), a
    filter or query (`operation` "filter"), or the data view's time field ("time")."""

    object_id: str
    field: str
    operation: str

    @property
    def aggregated(self) -> bool:
        """Whether Kibana aggregates on it (a bucket or metric column, the time field)."""
        return self.operation != "filter"


def packaged_text() -> str:
    """The NDJSON shipped with the package."""
    return files("dashboards").joinpath("kibana", PACKAGED).read_text(encoding="utf-8")


def parse(text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The saved objects of an export, and its summary line (`exportedCount`) if any."""
    objects: list[dict[str, Any]] = []
    summary: dict[str, Any] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise InvalidInputError(f"line {number}: not a JSON object")
        if "exportedCount" in value:
            if summary is not None:
                raise InvalidInputError(f"line {number}: a second export summary")
            summary = value
        elif summary is not None:
            raise InvalidInputError(f"line {number}: an object after the export summary")
        else:
            objects.append(value)
    return objects, summary


def load() -> list[dict[str, Any]]:
    """The packaged saved objects (without the summary line)."""
    return parse(packaged_text())[0]


def render(objects: Sequence[Mapping[str, Any]]) -> str:
    """NDJSON as Kibana exports it: one object a line, then the summary line."""
    lines = [json.dumps(o, separators=(",", ":"), sort_keys=True) for o in objects]
    summary = {
        "excludedObjects": [],
        "excludedObjectsCount": 0,
        "exportedCount": len(objects),
        "missingRefCount": 0,
        "missingReferences": [],
    }
    lines.append(json.dumps(summary, separators=(",", ":")))
    return "\n".join(lines) + "\n"


def adapt(
    objects: Sequence[Mapping[str, Any]],
    *,
    index_prefix: str = DEFAULT_INDEX_PREFIX,
    service_stream: str = DEFAULT_SERVICE_STREAM,
) -> list[dict[str, Any]]:
    """Copies of `objects` for a deployment's index prefix (the data view's title becomes
    `<index_prefix>-*`) and service stream prefix (the dataset filters)."""
    if not _INDEX_PREFIX.fullmatch(index_prefix):
        raise UsageError(
            f"index prefix {index_prefix!r}: lowercase letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    if not _STREAM.fullmatch(service_stream):
        raise UsageError(f"service stream {service_stream!r} is not a stream name")
    adapted: list[dict[str, Any]] = json.loads(json.dumps(list(objects)))
    for obj in adapted:
        attributes = obj["attributes"]
        if obj["type"] == "index-pattern":
            attributes["title"] = f"{index_prefix}-*"
        elif obj["type"] == "lens":
            for flt in attributes["state"].get("filters", []):
                clause = flt.get("query", {}).get("prefix", {})
                if STREAM_FIELD in clause:
                    clause[STREAM_FIELD] = service_stream
                    flt["meta"]["value"] = json.dumps(flt["query"])
    return adapted


def export_text(
    *, index_prefix: str = DEFAULT_INDEX_PREFIX, service_stream: str = DEFAULT_SERVICE_STREAM
) -> str:
    """The packaged objects for a deployment, checked, as NDJSON."""
    objects = adapt(load(), index_prefix=index_prefix, service_stream=service_stream)
    problems = check(objects)
    if problems:
        raise InvalidInputError("the packaged Kibana objects are broken: " + "; ".join(problems))
    return render(objects)


def _panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    if not isinstance(panels, list):
        raise InvalidInputError(f"{dashboard['id']}: panelsJSON is not a list")
    return panels


def check(
    objects: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None
) -> list[str]:
    """What Kibana's `_import` would refuse or leave broken (empty: nothing): required keys,
    known types, unique ids, references that resolve to an object of the named type,
    dashboard panels whose reference exists, Lens filters whose reference exists, and the
    summary's count."""
    problems: list[str] = []
    ids: dict[str, str] = {}
    for n, obj in enumerate(objects, 1):
        missing = [key for key in REQUIRED if key not in obj]
        if missing or not ("typeMigrationVersion" in obj or "migrationVersion" in obj):
            problems.append(f"object {n}: missing {missing or ['typeMigrationVersion']}")
            continue
        if obj["type"] not in TYPES:
            problems.append(f"{obj['id']}: type {obj['type']!r} is not one of {sorted(TYPES)}")
        if obj["id"] in ids:
            problems.append(f"{obj['id']}: id used twice")
        ids[obj["id"]] = obj["type"]
        if obj["managed"] is not False:
            problems.append(f"{obj['id']}: managed must be false")
    for obj in objects:
        if any(key not in obj for key in REQUIRED):
            continue
        names: set[str] = set()
        for ref in obj["references"]:
            if ref.get("name") in names:
                problems.append(f"{obj['id']}: reference name {ref.get('name')!r} used twice")
            names.add(ref.get("name"))
            if ids.get(ref.get("id")) != ref.get("type"):
                problems.append(
                    f"{obj['id']}: reference {ref.get('name')!r} names no {ref.get('type')} "
                    f"{ref.get('id')!r} in the file"
                )
        if obj["type"] == "dashboard":
            try:
                panels = _panels(obj)
            except (ValueError, InvalidInputError) as exc:
                problems.append(f"{obj['id']}: panelsJSON: {exc}")
                continue
            for panel in panels:
                name = f"{panel.get('panelIndex')}:{panel.get('panelRefName')}"
                if name not in names:
                    problems.append(f"{obj['id']}: panel {name!r} has no reference")
        if obj["type"] == "lens":
            state = obj["attributes"]["state"]
            for flt in state.get("filters", []):
                name = flt.get("meta", {}).get("indexRefName")
                if name not in names:
                    problems.append(f"{obj['id']}: filter reference {name!r} is missing")
            for layer in state["datasourceStates"]["formBased"]["layers"]:
                if f"indexpattern-datasource-layer-{layer}" not in names:
                    problems.append(f"{obj['id']}: layer {layer!r} has no data view reference")
    if summary is not None and summary.get("exportedCount") != len(objects):
        problems.append(
            f"the summary counts {summary.get('exportedCount')} objects, the file has "
            f"{len(objects)}"
        )
    return problems


def _query_fields(query: Any) -> Iterator[str]:
    """The field names in an Elasticsearch query."""
    if isinstance(query, dict):
        for key, value in query.items():
            if key in _FIELD_CLAUSES and isinstance(value, dict):
                yield from value
            elif key == "exists" and isinstance(value, dict) and "field" in value:
                yield str(value["field"])
            else:
                yield from _query_fields(value)
    elif isinstance(query, list):
        for item in query:
            yield from _query_fields(item)


def field_uses(objects: Sequence[Mapping[str, Any]]) -> list[FieldUse]:
    """Every field of the event indices the objects name."""
    uses: list[FieldUse] = []
    for obj in objects:
        attributes = obj["attributes"]
        if obj["type"] == "index-pattern" and attributes.get("timeFieldName"):
            uses.append(FieldUse(obj["id"], attributes["timeFieldName"], "time"))
        if obj["type"] != "lens":
            continue
        state = attributes["state"]
        for layer in state["datasourceStates"]["formBased"]["layers"].values():
            for column in layer["columns"].values():
                field = column.get("sourceField")
                if field and field != RECORDS:
                    uses.append(FieldUse(obj["id"], field, column["operationType"]))
        for flt in state.get("filters", []):
            uses += [FieldUse(obj["id"], f, "filter") for f in _query_fields(flt.get("query"))]
        query = state.get("query", {})
        if query.get("language") == "kuery":
            for field in _KQL_FIELD.findall(query.get("query", "")):
                uses.append(FieldUse(obj["id"], field, "filter"))
    return uses
