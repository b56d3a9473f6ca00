"""Erasing a data subject: destroy its vault entries, keep a tombstone, log the erasure.

The raw id is used only to compute where the vault files the subject (its lookups under
every key of the tenant keyring); it is never stored, logged or returned. The log of the
logs gets the erasure id, the kind and the number of entries destroyed, and no pseudonym:
the subject's v2 pseudonym would single out exactly the records that were just unlinked,
and its v1 pseudonym can be recomputed from the raw id by any keyring holder, which would
turn the erasure record itself into a link back to the person.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from audit.auth.tokens import Principal
from audit.integrity.events import EventAction
from audit.integrity.pseudonym import PiiKind
from audit.integrity.subjects import Erasure, SubjectVault
from audit.query.keyrings import TenantKeyrings
from audit.store.protocol import EventStore
from audit.store.query import EventQuery
from audit.subjects.schemas import ErasureOut

if TYPE_CHECKING:
    from audit.servicelog import ServiceLog


class SubjectService:
    def __init__(
        self,
        vault: SubjectVault,
        keyrings: TenantKeyrings,
        store: EventStore,
        servicelog: ServiceLog,
    ) -> None:
        self.vault = vault
        self.keyrings = keyrings
        self.store = store
        self.servicelog = servicelog

    async def erase(
        self,
        who: Principal | None,
        tenant: str,
        kind: PiiKind,
        raw: str,
        *,
        client_ip: str | None = None,
    ) -> ErasureOut:
        """Erase `raw` (kind user or email) in `tenant`. Idempotent in effect: a second
        erasure destroys nothing and says so (entries_destroyed 0), with its own tombstone."""
        pseudonymizer = self.keyrings.require(tenant)
        lookups = pseudonymizer.subject_lookups(kind, raw)
        erasure = await asyncio.to_thread(self.vault.erase, tenant, kind.value, lookups)
        legacy: bool | None = None
        if kind is PiiKind.USER:
            # After the erasure only keyring (v1) pseudonyms remain among the candidates.
            found = await asyncio.to_thread(pseudonymizer.candidates, kind, raw)
            v1 = tuple(sorted(set(found.values())))
            page = await self.store.search(EventQuery(tenant=tenant, actor_hashes=v1), limit=1)
            legacy = bool(page.events)
        # Logged after the vault commit: a failure here (503) leaves the tombstone as the
        # evidence; the erasure itself has happened and is not repeated by a retry.
        await self.servicelog.record(
            who,
            tenant,
            EventAction.SUBJECT_ERASED,
            metadata={
                "erasure_id": erasure.erasure_id,
                "kind": erasure.kind,
                "entries_destroyed": erasure.entries,
                "legacy_records": legacy,
            },
            client_ip=client_ip,
        )
        return describe(erasure, legacy)

    async def erasures(self, tenant: str, limit: int) -> list[ErasureOut]:
        rows = await asyncio.to_thread(self.vault.erasures, tenant, limit)
        return [describe(e, None) for e in rows]


def describe(erasure: Erasure, legacy: bool | None) -> ErasureOut:
    return ErasureOut(
        erasure_id=erasure.erasure_id,
        tenant=erasure.tenant,
        kind=erasure.kind,
        erased_at=erasure.erased_at,
        entries_destroyed=erasure.entries,
        legacy_records=legacy,
    )
