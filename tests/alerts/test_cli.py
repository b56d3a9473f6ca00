"""`ffaudit alerts ...` against a running service (open mode, loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from audit.alerts.kinds import RuleId
from audit.alerts.service import raise_event_alert
from audit.cli import cli
from audit.db.session import make_engine, session_factory, upgrade
from audit.errors import ServiceRefusedError
from audit.settings import AuditSettings
from tests.apptools import serving


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuditSettings]]:
    tmp = tmp_path_factory.mktemp("alerts-cli")
    settings = AuditSettings(
        database_url=f"sqlite:///{tmp}/cli.db",
        forward_enabled=False,
        service_keys_dir=tmp / "sk",
        keyrings_dir=tmp / "kr",
        exports_dir=tmp / "ex",
        alert_evaluation_enabled=False,
    )
    upgrade(settings.database_url)
    with serving(settings, log_level="error") as url:
        yield url, settings


def ffaudit(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--service", url, "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    return result.output


def test_list_show_ack_resolve(service: tuple[str, AuditSettings], tmp_path: Path) -> None:
    url, settings = service
    sessions = session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:
        alert = raise_event_alert(
            session,
            settings,
            rule=RuleId.SEQUENCE_GAP,
            title="records 5..9 of stream cam-1 never arrived",
            tenant_id="acme",
            stream_id="cam-1",
            group="cam-1",
        ).id
    table = ffaudit(url, "alerts", "list")
    assert "sequence_gap" in table
    assert "never arrived" in table
    shown = orjson.loads(ffaudit(url, "alerts", "show", str(alert)))
    assert (shown["id"], shown["state"], shown["severity"]) == (alert, "open", "high")
    assert f"alert {alert}: acknowledged" in ffaudit(url, "alerts", "ack", str(alert))
    assert f"alert {alert}: resolved" in ffaudit(url, "alerts", "resolve", str(alert))
    listed = orjson.loads(ffaudit(url, "alerts", "list", "--state", "resolved", "--json"))
    assert [a["id"] for a in listed] == [alert]
    again = CliRunner().invoke(
        cli, ["alerts", "resolve", str(alert), "--service", url, "--tenant", "acme"]
    )
    assert isinstance(again.exception, ServiceRefusedError)  # `ffaudit` exits 2 with it
    assert "409" in again.exception.message


def test_rules_add_list_delete(service: tuple[str, AuditSettings]) -> None:
    url, _ = service
    added = ffaudit(
        url,
        "alerts",
        "rules",
        "add",
        "--name",
        "failed logins",
        "--group-by",
        "user.hash",
        "--window",
        "60",
        "--threshold",
        "5",
        "--action",
        "auth.failed",
    )
    rule_id = added.split()[1]
    listing = ffaudit(url, "alerts", "rules", "list")
    assert "client_ip_burst" in listing
    assert f"custom:{rule_id}" in listing
    assert "failed logins: > 5 per user.hash in 60 s" in listing
    ffaudit(url, "alerts", "rules", "delete", rule_id)
    assert f"custom:{rule_id}" not in ffaudit(url, "alerts", "rules", "list")
    rule = ["--name", "x", "--group-by", "user.hash", "--window", "60", "--threshold", "1"]
    bad = CliRunner().invoke(
        cli,
        [
            "alerts",
            "rules",
            "add",
            *rule,
            "--action",
            "no.such",
            "--service",
            url,
            "--tenant",
            "acme",
        ],
    )
    assert isinstance(bad.exception, ServiceRefusedError)
    assert "422: body.filter.action.0" in bad.exception.message
