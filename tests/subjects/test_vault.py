"""The subject vault and scheme-v2 pseudonyms, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from sqlalchemy import create_engine, inspect, text

from audit.db.session import make_engine, upgrade
from audit.errors import InvalidInputError, SubjectVaultUnavailableError
from audit.integrity.cache import TtlCache
from audit.integrity.keys import Keyring
from audit.integrity.pseudonym import SUBJECT_KINDS, PiiKind, Pseudonymizer
from audit.integrity.subjects import SECRET_BYTES
from audit.subjects.vault import SqlSubjectVault


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _v2(secret: bytes, kind: str, value: str) -> str:
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(b"ffaudit.pseudonym.v2\x00" + kind.encode() + b"\x00" + value.encode())
    return mac.finalize().hex()


def _rows(url: str, tenant: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM subject_keys WHERE tenant = :t")
            return int(conn.execute(query, {"t": tenant}).scalar_one())
    finally:
        engine.dispose()


def test_v2_pseudonym_matches_the_documented_construction(
    vault: SqlSubjectVault, vault_url: str, tenant: str
) -> None:
    ring = Keyring.generate()
    p = Pseudonymizer(ring, tenant, vault=vault)
    alice = p.pseudonym(PiiKind.USER, "alice")
    lookup = Pseudonymizer(ring, tenant).pseudonym(PiiKind.USER, "alice")  # v1
    [entry] = vault.find(tenant, "user", [lookup])
    assert len(entry.secret) == SECRET_BYTES
    assert alice == _v2(entry.secret, "user", "alice")
    assert alice != lookup
    # E-mail addresses are normalised before either construction.
    assert p.pseudonym(PiiKind.EMAIL, " Alice@Example.COM ") == p.pseudonym(
        PiiKind.EMAIL, "alice@example.com"
    )
    # Sessions, IPs and paths keep the keyring construction (and create no vault entry).
    plain = Pseudonymizer(ring, tenant)
    for kind, raw in (
        (PiiKind.SESSION, "s-1"),
        (PiiKind.CLIENT_IP, "192.0.2.1"),
        (PiiKind.PATH, "/in/a.png"),
    ):
        assert kind not in SUBJECT_KINDS
        assert p.pseudonym(kind, raw) == plain.pseudonym(kind, raw)
    assert {PiiKind.USER, PiiKind.EMAIL} == SUBJECT_KINDS
    assert _rows(vault_url, tenant) == 2  # alice (user) and the e-mail


def test_get_or_create_is_stable_and_find_never_creates(
    vault: SqlSubjectVault, vault_url: str, tenant: str
) -> None:
    assert vault.find(tenant, "user", ["a" * 64]) == []
    assert _rows(vault_url, tenant) == 0
    first = vault.get_or_create(tenant, "user", ["a" * 64])
    assert vault.get_or_create(tenant, "user", ["a" * 64]) == first
    assert vault.get_or_create(tenant, "email", ["a" * 64]) != first  # kinds are separate
    assert vault.get_or_create(f"{tenant}x", "user", ["a" * 64]) != first  # and tenants
    assert [e.secret for e in vault.find(tenant, "user", ["b" * 64, "a" * 64])] == [first]


def test_concurrent_producers_end_with_one_secret(vault_url: str, tenant: str) -> None:
    # Eight producers, each with its own connection pool (as separate engines would be),
    # create the same new subject at the same moment.
    vaults = [SqlSubjectVault.from_url(vault_url) for _ in range(8)]
    ring = Keyring.generate()
    start = threading.Barrier(len(vaults))

    def seal(v: SqlSubjectVault) -> str:
        p = Pseudonymizer(ring, tenant, vault=v)
        start.wait()
        return p.pseudonym(PiiKind.USER, "carol")

    try:
        with ThreadPoolExecutor(len(vaults)) as pool:
            pseudonyms = set(pool.map(seal, vaults))
    finally:
        for v in vaults:
            v.close()
    assert len(pseudonyms) == 1
    assert _rows(vault_url, tenant) == 1


def test_rotation_keeps_the_subject_and_erasure_reaches_every_lookup(
    vault: SqlSubjectVault, tenant: str
) -> None:
    ring = Keyring.generate()
    before = Pseudonymizer(ring, tenant, vault=vault).pseudonym(PiiKind.USER, "dave")
    rotated = ring.rotate()
    after = Pseudonymizer(rotated, tenant, vault=vault)
    assert after.pseudonym(PiiKind.USER, "dave") == before  # found under the older key
    assert before in after.candidates(PiiKind.USER, "dave").values()
    # A key marked inactive no longer matches queries, but still finds the vault entry.
    retired = Keyring(
        tuple(replace(k, active=k.key_id != ring.current) for k in rotated.keys), rotated.current
    )
    assert Pseudonymizer(retired, tenant, vault=vault).pseudonym(PiiKind.USER, "dave") == before
    # A producer that has not rotated yet, racing one that has, may file a second entry
    # under its own key: the erasure destroys both.
    vault.get_or_create(tenant, "user", after.subject_lookups(PiiKind.USER, "erin"))
    vault.get_or_create(
        tenant, "user", Pseudonymizer(ring, tenant).subject_lookups(PiiKind.USER, "erin")
    )
    assert len(vault.find(tenant, "user", after.subject_lookups(PiiKind.USER, "erin"))) == 2
    erasure = vault.erase(tenant, "user", after.subject_lookups(PiiKind.USER, "erin"))
    assert erasure.entries == 2
    assert vault.find(tenant, "user", after.subject_lookups(PiiKind.USER, "erin")) == []
    assert after.pseudonym(PiiKind.USER, "dave") == before  # others untouched


def test_erasure_destroys_the_link_and_keeps_a_tombstone(
    vault: SqlSubjectVault, vault_url: str, tenant: str
) -> None:
    ring = Keyring.generate()
    sealer = Pseudonymizer(ring, tenant, vault=vault)
    old = sealer.pseudonym(PiiKind.USER, "frank")
    lookups = sealer.subject_lookups(PiiKind.USER, "frank")
    erasure = vault.erase(tenant, "user", lookups)
    assert (erasure.tenant, erasure.kind, erasure.entries) == (tenant, "user", 1)
    # Nobody can link any more: not the service (no v2 candidate), not a keyring holder.
    querier = Pseudonymizer(ring, tenant, vault=vault)
    assert old not in querier.candidates(PiiKind.USER, "frank").values()
    assert old not in Pseudonymizer(ring, tenant).candidates(PiiKind.USER, "frank").values()
    # Seen again, the subject gets a new, unrelated secret.
    assert Pseudonymizer(ring, tenant, vault=vault).pseudonym(PiiKind.USER, "frank") != old
    assert vault.erase(tenant, "user", lookups).entries == 1  # the new one
    assert vault.erase(tenant, "user", lookups).entries == 0
    tombstones = vault.erasures(tenant, 10)
    assert [t.entries for t in tombstones] == [0, 1, 1]
    assert erasure.erasure_id in {t.erasure_id for t in tombstones}
    engine = create_engine(vault_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("subject_erasures")}
    finally:
        engine.dispose()
    assert columns == {"id", "tenant", "kind", "entries", "erased_at"}  # no secret, no id


def test_a_running_sealer_learns_the_erasure_within_its_ttl(
    vault: SqlSubjectVault, tenant: str
) -> None:
    ring, clock = Keyring.generate(), Clock()
    sealer = Pseudonymizer(ring, tenant, vault=vault, vault_ttl_s=60, clock=clock)
    old = sealer.pseudonym(PiiKind.USER, "gina")
    vault.erase(tenant, "user", sealer.subject_lookups(PiiKind.USER, "gina"))
    clock.now = 59.0
    assert sealer.pseudonym(PiiKind.USER, "gina") == old  # cached: the documented window
    clock.now = 61.0
    new = sealer.pseudonym(PiiKind.USER, "gina")
    assert new != old
    assert vault.find(tenant, "user", sealer.subject_lookups(PiiKind.USER, "gina"))


def test_vault_outage(tmp_path: Path, tenant: str) -> None:
    # A real database without the vault's tables: every vault call fails.
    broken = SqlSubjectVault.from_url(f"sqlite:///{tmp_path}/empty.db")
    try:
        with pytest.raises(SubjectVaultUnavailableError, match="ffaudit db upgrade"):
            broken.ping()
        p = Pseudonymizer(Keyring.generate(), tenant, vault=broken)
        with pytest.raises(SubjectVaultUnavailableError) as info:
            p.pseudonym(PiiKind.USER, "hank")
        assert "hank" not in str(info.value)
        assert p.pseudonym(PiiKind.SESSION, "s-1")  # keyring kinds never touch the vault
        with pytest.raises(InvalidInputError):
            p.pseudonym(PiiKind.CLIENT_IP, "not an ip")
    finally:
        broken.close()


def test_known_subjects_survive_a_vault_outage(
    vault: SqlSubjectVault, tmp_path: Path, tenant: str
) -> None:
    clock = Clock()
    p = Pseudonymizer(Keyring.generate(), tenant, vault=vault, vault_ttl_s=10, clock=clock)
    known = p.pseudonym(PiiKind.USER, "ivy")
    # The same sealer now reaches a vault that fails: a database without its tables.
    broken = SqlSubjectVault.from_url(f"sqlite:///{tmp_path}/gone.db")
    p.vault = broken
    clock.now = 11.0
    try:
        assert p.pseudonym(PiiKind.USER, "ivy") == known  # stale, but the subject is known
        with pytest.raises(SubjectVaultUnavailableError):
            p.pseudonym(PiiKind.USER, "jack")  # a new subject cannot be sealed
    finally:
        broken.close()


def test_ttl_cache_is_bounded_and_goes_stale() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(2, 5.0, clock)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert len(cache) == 2
    clock.now = 5.0
    hit = cache.get("a")
    assert hit is not None
    assert (hit.value, hit.fresh) == (1, False)
    with pytest.raises(ValueError, match="positive"):
        TtlCache(0, 1.0)


def test_a_connection_opening_beside_a_writer_waits_instead_of_failing(tmp_path: Path) -> None:
    # Switching to WAL meets "database is locked" at once (no busy handler) while another
    # connection writes: eight engines opening a freshly migrated file together failed
    # that way. The migrated file is already in WAL mode, and a file that is not yet
    # waits for the writer.
    url = f"sqlite:///{tmp_path}/vault.db"
    upgrade(url)
    assert (tmp_path / "vault.db").read_bytes()[18:20] == b"\x02\x02"  # WAL, in the header
    raw = f"sqlite:///{tmp_path}/plain.db"
    writer = sqlite3.connect(tmp_path / "plain.db", isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (a INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    released = threading.Timer(0.3, writer.execute, ("COMMIT",))
    released.start()
    engine = make_engine(raw)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        released.join()
        engine.dispose()
        writer.close()
