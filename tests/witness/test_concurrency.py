"""Concurrent add-checkpoint calls from one old size: exactly one is cosigned, every other
answers 409 with the size it set, and the stored size never goes back — on a file-backed
SQLite database and on PostgreSQL, through the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import IntegrityError

from audit.db.session import make_engine, session_factory
from audit.integrity.merkle import EMPTY_ROOT
from audit.witness.app import create_app
from audit.witness.repository import TreeHead, WitnessRepository
from tests.witness.conftest import ORIGIN, Log, WitnessSetup, serving, witness_setup

ROUNDS = 12
CONTENDERS = 6


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


def stored(url: str, origin: str = ORIGIN) -> TreeHead | None:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return WitnessRepository(session).head(origin)
    finally:
        engine.dispose()


async def _race(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    # One connection per contender, opened before the race, so the requests leave together.
    clients = [httpx.AsyncClient(timeout=60) for _ in bodies]
    try:
        for client in clients:
            await client.get(f"{url}/healthz")
        return list(
            await asyncio.gather(
                *(
                    c.post(f"{url}/add-checkpoint", content=b)
                    for c, b in zip(clients, bodies, strict=True)
                )
            )
        )
    finally:
        for client in clients:
            await client.aclose()


def test_one_old_size_one_winner(tmp_path: Path, database_url: str) -> None:
    setup: WitnessSetup = witness_setup(tmp_path, database_url)
    log = setup.log
    old = 0
    with serving(create_app(setup.settings)) as url:
        for _ in range(ROUNDS):
            sizes = [old + 1 + i for i in range(CONTENDERS)]
            responses = asyncio.run(_race(url, [log.body(old, s) for s in sizes]))
            won = [s for s, r in zip(sizes, responses, strict=True) if r.status_code == 200]
            assert len(won) == 1, [(r.status_code, r.text) for r in responses]
            winner = won[0]
            for size, response in zip(sizes, responses, strict=True):
                if size != winner:
                    assert response.status_code == 409, response.text
                    assert response.content == f"{winner}\n".encode()
            assert stored(database_url) == TreeHead(winner, log.tree.root(winner))
            old = winner


def test_first_sightings_race(tmp_path: Path, database_url: str) -> None:
    """The insert path: many calls from 0 for a log never seen; the primary key decides."""
    setup = witness_setup(tmp_path, database_url)
    log = setup.log
    sizes = [3 + i for i in range(CONTENDERS)]
    with serving(create_app(setup.settings)) as url:
        responses = asyncio.run(_race(url, [log.body(0, s) for s in sizes]))
    won = [s for s, r in zip(sizes, responses, strict=True) if r.status_code == 200]
    assert len(won) == 1, [(r.status_code, r.text) for r in responses]
    assert all(r.content == f"{won[0]}\n".encode() for r in responses if r.status_code != 200)
    assert stored(database_url) == TreeHead(won[0], log.tree.root(won[0]))


def test_compare_and_set(database_url: str) -> None:
    """The repository's two writes, interleaved by hand: a stale read cannot write."""
    log = Log.new()
    log.grow(9)
    heads = {n: TreeHead(n, log.tree.root(n)) for n in (0, 5, 7, 9)}
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            WitnessRepository(session).first_sighting(ORIGIN, heads[5])
        with pytest.raises(IntegrityError), sessions.begin() as session:
            WitnessRepository(session).first_sighting(ORIGIN, heads[0])
        with sessions.begin() as a, sessions.begin() as b:
            seen_a = WitnessRepository(a).head(ORIGIN)
            seen_b = WitnessRepository(b).head(ORIGIN)
            assert seen_a == seen_b == heads[5]
        with sessions.begin() as session:
            assert WitnessRepository(session).advance(ORIGIN, heads[5], heads[7])
        with sessions.begin() as session:  # b's read is stale now
            assert not WitnessRepository(session).advance(ORIGIN, heads[5], heads[9])
            # The size alone is not enough: the root must be the one read as well.
            assert not WitnessRepository(session).advance(ORIGIN, TreeHead(7, EMPTY_ROOT), heads[9])
        with sessions() as session:
            assert WitnessRepository(session).head(ORIGIN) == heads[7]
    finally:
        engine.dispose()
