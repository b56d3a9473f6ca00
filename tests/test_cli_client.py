"""audit.cli.client: how a service's refusal becomes an audit.errors error."""

from __future__ import annotations

import socket

import click
import httpx
import pytest

from audit.cli.client import call, refusal, when
from audit.errors import (
    AuthenticationError,
    ConflictError,
    FFAuditError,
    NotFoundError,
    ServiceRefusedError,
    UsageError,
)


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": "X", "message": message}})


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (401, AuthenticationError, "bad token"),
        (404, NotFoundError, "no such thing"),
        (409, ServiceRefusedError, "409: no such thing"),
        (422, ServiceRefusedError, "422: no such thing"),
    ],
)
def test_the_error_schema_maps_to_audit_errors(
    status: int, kind: type[FFAuditError], message: str
) -> None:
    error = refusal(_error(status, message.removeprefix(f"{status}: ")))
    assert type(error) is kind
    assert error.message == message


def test_a_status_map_of_its_own_with_the_status_in_the_message() -> None:
    error = refusal(_error(409, "held"), {409: ConflictError}, status_in_message=True)
    assert type(error) is ConflictError
    assert error.message == "409: held"
    assert type(refusal(_error(401, "x"), {409: ConflictError})) is ServiceRefusedError


def test_a_body_that_is_not_the_error_schema_gives_its_text() -> None:
    assert refusal(httpx.Response(502, text="bad gateway")).message == "502: bad gateway"
    assert refusal(httpx.Response(502, text="x" * 2000)).message == "502: " + "x" * 500
    assert refusal(httpx.Response(404, json={"detail": "gone"})).message == '{"detail":"gone"}'


def test_an_unreachable_service_is_a_usage_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="cannot reach the audit service"):
        call("GET", f"http://127.0.0.1:{port}", "/v1/alerts", None)


def test_a_date_on_the_command_line_means_midnight_utc() -> None:
    from click.testing import CliRunner

    from audit.cli import cli

    seen: list[str | None] = []

    @click.command()
    @click.option("--since", callback=when)
    def probe(since: str | None) -> None:
        seen.append(since)

    for given in ("2026-11-03", "2026-11-03T10:00:00+01:00", None):
        CliRunner().invoke(probe, ["--since", given] if given else [], catch_exceptions=False)
    assert seen == ["2026-11-03T00:00:00Z", "2026-11-03T10:00:00+01:00", None]
    assert "date (midnight UTC)" in CliRunner().invoke(cli, ["query", "--help"]).output


def test_the_job_summary_shows_models_providers_error_and_steps() -> None:
    from audit.cli.query import _job_summary

    def event(at: str, action: str, **fields: object) -> dict[str, object]:
        return {"record": {"@timestamp": at, "event.action": action, **fields}}

    model = {"role": "swapper", "name": "inswapper_128", "sha256": "e4a3f08c" * 8}
    lines = _job_summary(
        [
            event(
                "2026-12-04T10:00:00.000000+00:00",
                "job.submitted",
                **{"ffaudit.metadata": {"models": [model], "providers": ["CPUExecutionProvider"]}},
            ),
            event("2026-12-04T10:00:00.250000+00:00", "job.started"),
            event(
                "2026-12-04T10:00:01.750000+00:00",
                "job.failed",
                **{
                    "error.type": "ModelError",
                    "error.message": "no recognition model",
                    "ffaudit.metadata": {"duration_ms": 1750},
                },
            ),
        ]
    )
    assert "model swapper: inswapper_128 sha256 e4a3f08ce4a3f08c…" in lines
    assert "providers: CPUExecutionProvider" in lines
    assert "error: ModelError: no recognition model" in lines
    assert "duration: 1750 ms (job.failed)" in lines
    assert "steps: job.started +250 ms, job.failed +1500 ms" in lines
