"""`ffaudit erase-subject`: GDPR erasure, directly on the service's databases."""

from __future__ import annotations

import asyncio
import getpass

import click

from audit.cli.client import echo_json
from audit.errors import InvalidInputError
from audit.settings import AuditSettings
from audit.subjects.schemas import ErasureOut, check_subject


@click.command("erase-subject")
@click.option("--tenant", required=True)
@click.option("--subject", required=True, help="The raw id: a user id or an e-mail address.")
@click.option("--kind", type=click.Choice(["user", "email"]), default="user", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the erasure as JSON.")
def erase_subject(tenant: str, subject: str, kind: str, as_json: bool) -> None:
    """Erase a data subject: destroy its per-subject pseudonym keys so that no record can be
    linked to SUBJECT any more, while every chain still verifies.

    Runs on the service's control database and subject vault (FFAUDIT_* settings; the
    tenant's keyring must have been imported) and records the erasure, with an erasure id
    and never the raw id, in the log of the logs. Engines sealing with the vault stop using
    the destroyed key within their FFENGINE_SUBJECT_CACHE_TTL_S.
    """
    try:
        check_subject(subject)
    except ValueError as exc:
        raise InvalidInputError(f"--subject: {exc}") from None
    out = asyncio.run(_erase(AuditSettings(), tenant, kind, subject))
    if as_json:
        echo_json(out.model_dump(mode="json"))
        return
    click.echo(
        f"erasure {out.erasure_id}: tenant {out.tenant}, kind {out.kind}, "
        f"{out.entries_destroyed} vault entr{'y' if out.entries_destroyed == 1 else 'ies'} "
        "destroyed"
    )
    if out.entries_destroyed == 0:
        click.echo("  the vault held no key for this subject (unknown, or erased before)", err=True)
    if out.legacy_records:
        click.echo(
            "  records sealed before the vault still match this id under the tenant keyring: "
            "they stay linkable until that keyring key is retired (docs/record-spec.md §11)",
            err=True,
        )


async def _erase(settings: AuditSettings, tenant: str, kind: str, raw: str) -> ErasureOut:
    from audit.auth.tokens import Principal, Role
    from audit.db.session import make_engine, session_factory, upgrade
    from audit.ingest.service import IngestService
    from audit.integrity.pseudonym import PiiKind
    from audit.query.keyrings import TenantKeyrings
    from audit.servicelog import ServiceLog
    from audit.store import make_event_store
    from audit.subjects.service import SubjectService
    from audit.subjects.vault import SqlSubjectVault

    upgrade(settings.database_url)
    if settings.subject_vault_url:
        upgrade(settings.subject_vault_url)
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    store = make_event_store(settings)
    vault = (
        SqlSubjectVault.from_url(settings.subject_vault_url)
        if settings.subject_vault_url
        else SqlSubjectVault(sessions)
    )
    # A stream of its own: a running service holds the head of `<service_stream>.<tenant>.
    # <host>` in memory, and appending to it from here would fork that chain.
    cli_settings = settings.model_copy(update={"service_stream": f"{settings.service_stream}-cli"})
    servicelog = ServiceLog(cli_settings, sessions, IngestService(settings, sessions, store))
    service = SubjectService(
        vault, TenantKeyrings(settings.keyrings_dir, vault=vault), store, servicelog
    )
    who = Principal(
        subject=f"cli:{getpass.getuser()}",
        tenant=tenant,
        roles=frozenset({Role.ADMIN}),
        amr=frozenset(),
    )
    try:
        return await service.erase(who, tenant, PiiKind(kind), raw)
    finally:
        await servicelog.close()
        await store.close()
        vault.close()
        engine.dispose()
