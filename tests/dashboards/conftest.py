"""Shared fixtures of the console tests: a signed-in TestClient and a record seeder.

    with console_client(tmp_path, roles=["auditor"]) as client:   # SQLite, tenant acme
        records = seed(client, "acme", "cam-1", 5)                 # 5 sealed events
        client.get("/console/events")
        sign_in(client, tenant="other", roles=["auditor"])         # now another viewer

`console_client(tmp_path, settings=None, **claims)`: the real app (bearer tokens required,
the test secret of tests.apptools), signed in through the real sign-in form with
`jwt_token(**claims)`; pass `settings` (e.g. `store_settings(...)`) for another store.
`seed(client_or_settings, tenant, stream, records)`: registers the stream (once), imports
the tenant's pseudonym keyring into the service (so raw-id filters work), seals `records`
as an engine would and ingests them through the API; returns the sealed record dicts (with
their `event.id`; the console's id of a record is `document_id(stream, sequence)`, see
`doc_id`). `records`: a count, or AuditEvents, or dicts of AuditEvent fields. Seeding the
same stream again continues its chain.

Fixtures: `console` (a factory of signed-in clients on SQLite, closed at teardown; a
module can override `console_settings` to run on another store) and `any_store_settings`
(parametrised: SQLite and Elasticsearch).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.integrity.chain import ChainWriter, CheckpointPolicy
from audit.integrity.events import EventAction, Outcome
from audit.integrity.keys import Keyring, Signer
from audit.integrity.pseudonym import Pseudonymizer
from audit.integrity.record import document_id
from audit.integrity.seal import AuditEvent, Sealer
from audit.query.keyrings import TenantKeyrings
from audit.settings import AuditSettings
from tests.apptools import app_settings, bearer, jwt_token

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def store_settings(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest | None = None, **extra: Any
) -> AuditSettings:
    """Settings of `app_settings` on `backend`: "sqlite" (the embedded store), or
    "elasticsearch" (needs `request` for the session's Elasticsearch fixtures; a fresh index
    prefix of this test)."""
    if backend == "elasticsearch":
        assert request is not None, "the Elasticsearch store needs the test's request"
        extra = {
            "elasticsearch_url": request.getfixturevalue("elasticsearch_url"),
            "elasticsearch_index_prefix": request.getfixturevalue("fresh_es_prefix"),
            **extra,
        }
    return app_settings(tmp_path, **extra)


def settings_of(client: TestClient) -> AuditSettings:
    settings: AuditSettings = client.app.state.services.settings  # type: ignore[attr-defined]
    return settings


def sign_in(client: TestClient, **claims: Any) -> TestClient:
    """Sign `client` in (through the sign-in form) with jwt_token(**claims); a previous
    session of the client is replaced. Default claims: auditor-1 of tenant acme, auditor."""
    client.cookies.clear()
    page = client.get("/console/sign-in")
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found, "no CSRF field on the sign-in page"
    answer = client.post(
        "/console/sign-in",
        data={"csrf": found.group(1), "token": jwt_token(**claims)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return client


@contextlib.contextmanager
def console_client(
    tmp_path: Path, settings: AuditSettings | None = None, **claims: Any
) -> Iterator[TestClient]:
    """The real app (lifespan run), signed in as jwt_token(**claims)."""
    settings = settings or app_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        sign_in(client, **claims)
        yield client


@dataclass
class _Chain:
    sealer: Sealer
    last: datetime


# (database, event store, tenant, stream) -> the chain the seeder continues.
_CHAINS: dict[tuple[str, str, str, str], _Chain] = {}


def _keyring(settings: AuditSettings, tenant: str) -> Keyring:
    path = settings.keyrings_dir / f"{tenant}.pii.key"
    if path.is_file():
        return Keyring.load(path)
    keyring = Keyring.generate()
    TenantKeyrings(settings.keyrings_dir).import_keyring(tenant, keyring.dumps())
    return keyring


def _event(item: AuditEvent | Mapping[str, Any], i: int, when: datetime) -> AuditEvent:
    if isinstance(item, AuditEvent):
        return item if item.timestamp is not None else _replace_ts(item, when)
    fields = dict(item)
    fields["action"] = EventAction(fields.get("action", EventAction.FACE_SWAPPED))
    fields["outcome"] = Outcome(fields.get("outcome", Outcome.SUCCESS))
    fields.setdefault("timestamp", when)
    return AuditEvent(**fields)


def _replace_ts(event: AuditEvent, when: datetime) -> AuditEvent:
    from dataclasses import replace

    return replace(event, timestamp=when)


def sample(i: int) -> AuditEvent:
    """The i-th of a generic history: three actors, two jobs, a failed frame now and then."""
    action = (EventAction.JOB_STARTED, EventAction.FACE_SWAPPED, EventAction.FRAME_FAILED)[i % 3]
    failed = action is EventAction.FRAME_FAILED
    return AuditEvent(
        action=action,
        outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
        actor=("alice", "bob", "carol")[i % 3],
        session=f"s-{i % 3}",
        client_ip="198.51.100.7",
        target=f"/in/{i}.png",
        job_id=f"job-{i % 2}",
        error_type="NoFaceDetected" if failed else None,
        error_message="no face in frame" if failed else None,
        metadata={"frame": i},
    )


def seed(
    client_or_settings: TestClient | AuditSettings,
    tenant: str,
    stream: str,
    records: int | Sequence[AuditEvent | Mapping[str, Any]],
    *,
    start: datetime | None = None,
    step: timedelta = timedelta(seconds=1),
    checkpoint_every: int = 5,
) -> list[dict[str, Any]]:
    """Seal `records` for `tenant`/`stream` and ingest them through the API (see the module
    docstring). Events without a timestamp get `start` (default: an hour ago, or just after
    the stream's last seeded event) plus `step` each. Returns the sealed records, the
    chain's checkpoints included."""
    if isinstance(client_or_settings, AuditSettings):
        with TestClient(create_app(client_or_settings)) as client:
            return seed(client, tenant, stream, records, start=start, step=step)
    client = client_or_settings
    settings = settings_of(client)
    key = (
        settings.database_url,
        f"{settings.elasticsearch_url}/{settings.elasticsearch_index_prefix}",
        tenant,
        stream,
    )
    chain = _CHAINS.get(key)
    admin = bearer(sub="root", roles=["admin"], tenant=tenant)
    if chain is None:
        signer = Signer.generate()
        client.post(
            "/v1/streams",
            headers=admin,
            json={
                "stream": stream,
                "tenant": tenant,
                "public_key_pem": signer.verifier.pem().decode(),
            },
        ).raise_for_status()
        sealer = Sealer(
            ChainWriter(stream, tenant, signer, policy=CheckpointPolicy(checkpoint_every, None)),
            Pseudonymizer(_keyring(settings, tenant), tenant),
        )
        first = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        chain = _CHAINS[key] = _Chain(sealer, first - step)
    items: Sequence[AuditEvent | Mapping[str, Any]] = (
        [sample(i) for i in range(records)] if isinstance(records, int) else records
    )
    out: list[dict[str, Any]] = []
    when = start or chain.last + step
    for i, item in enumerate(items):
        event = _event(item, i, when)
        assert event.timestamp is not None
        chain.last = max(chain.last, event.timestamp)
        when = chain.last + step
        out += [r.record for r in chain.sealer.seal(event)]
    client.post(
        f"/v1/streams/{stream}/records",
        content=orjson.dumps(out),
        headers={**bearer(roles=["ingest"], tenant=tenant), "content-type": "application/json"},
    ).raise_for_status()
    return out


def doc_id(record: Mapping[str, Any]) -> str:
    """The console's (and GET /v1/events/{id}'s) id of a sealed record."""
    return document_id(str(record["ffaudit.stream"]), int(record["event.sequence"]))


ConsoleFactory = Callable[..., TestClient]


@pytest.fixture
def console_settings(tmp_path: Path) -> AuditSettings:
    """The settings `console` runs on: SQLite. Override in a module for another store."""
    return app_settings(tmp_path)


@pytest.fixture(params=["sqlite", "elasticsearch"])
def any_store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> AuditSettings:
    return store_settings(tmp_path, str(request.param), request)


@pytest.fixture
def console(console_settings: AuditSettings) -> Iterator[ConsoleFactory]:
    """console(**claims) -> a client signed in as jwt_token(**claims); the app is started
    once per test (a second call signs the same client in again: one cookie jar)."""
    with contextlib.ExitStack() as stack:
        clients: list[TestClient] = []

        def factory(**claims: Any) -> TestClient:
            if not clients:
                clients.append(stack.enter_context(TestClient(create_app(console_settings))))
            return sign_in(clients[0], **claims)

        yield factory
