"""The checkpointer's backoff per (witness, origin), against a real witness
(`ffaudit witness serve`'s app) whose add-checkpoint requests are counted where they
arrive: a witness that refuses an origin, or is down, is asked again only after a growing
backoff, and is used again once the backoff is over. The checkpointer's clock is a manual
one, so "over N ticks" means N calls with the clock moved, not N sleeps."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.db.session import make_engine, session_factory
from audit.errors import UsageError
from audit.integrity.keys import Signer
from audit.settings import AuditSettings
from audit.tlog.checkpointer import BACKOFF_FIRST_S, Checkpointer, load_witnessing
from audit.tlog.repository import TlogRepository
from audit.tlog.service import TlogService, append_accepted, origin_of
from audit.witness.app import create_app as create_witness
from audit.witness.schemas import ADD_CHECKPOINT_PATH
from tests.apptools import app_settings, running
from tests.tlog.test_witnessed import witness
from tests.witness.conftest import free_port

TENANT = "acme"
TICK_S = 0.25  # what Checkpointer.run sleeps between ticks


class CountingWitness:
    """ASGI middleware: counts add-checkpoint requests per checkpoint origin."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(ADD_CHECKPOINT_PATH):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        # The body is "old N", the proof lines, an empty line, then the note (origin first).
        self.requests[body.split(b"\n\n", 1)[1].split(b"\n", 1)[0].decode()] += 1
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay)

        await self.app(scope, replayed, send)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    settings: AuditSettings
    sessions: sessionmaker[Session]
    tlog: TlogService
    witness_port: int
    counting: CountingWitness
    clock: Clock

    def grow(self, stream: str, first: int, count: int) -> int:
        """Append `count` leaves to `stream`'s log and sign a checkpoint; its size."""
        accepted = [(seq, f"{seq:064x}") for seq in range(first, first + count)]
        with self.sessions.begin() as session:
            assert append_accepted(session, self.settings, TENANT, stream, accepted)
        return self.tlog.sign_now(TENANT, stream).size

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(
            self.settings,
            self.sessions,
            self.tlog,
            load_witnessing(self.settings),
            clock=self.clock,
            jitter=random.Random(7),
        )

    def cosigned_size(self, stream: str) -> int:
        with self.sessions() as session:
            repo = TlogRepository(session)
            row = repo.log(TENANT, stream)
            assert row is not None
            latest = repo.latest_checkpoint(row.id, cosigned=True)
            return 0 if latest is None else latest.size

    def origin(self, stream: str) -> str:
        return origin_of(self.settings, TENANT, stream)


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    key = Signer.generate().key
    if request.param == "postgres":
        settings = app_settings(tmp_path, str(request.getfixturevalue("fresh_postgres_url")))
    else:
        settings = app_settings(tmp_path)
    # The witness knows cam-1's log only: cam-2's origin is unknown to it (404).
    probe = TlogService(settings, session_factory(make_engine(settings.database_url)), key)
    w1, w1_vkey = witness(tmp_path, "w1", probe.verifier(TENANT, "cam-1").vkey())
    port = free_port()
    policy = tmp_path / "policy"
    policy.write_text(f"witness w1 {w1_vkey} http://127.0.0.1:{port}\nquorum w1\n")
    settings = app_settings(
        tmp_path, settings.database_url, tlog_policy_file=policy, tlog_witness_timeout_s=2
    )
    sessions = session_factory(make_engine(settings.database_url))
    return Setup(
        settings,
        sessions,
        TlogService(settings, sessions, key),
        port,
        CountingWitness(create_witness(w1)),
        Clock(),
    )


async def test_an_origin_the_witness_refuses_is_retried_with_a_growing_backoff(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    known, unknown = setup.origin("cam-1"), setup.origin("cam-2")
    size = setup.grow("cam-1", 0, 5)
    unknown_size = setup.grow("cam-2", 0, 3)
    checkpointer = setup.checkpointer()
    ticks = 60  # 15 s of the checkpointer's clock
    with running(setup.counting, port=setup.witness_port), caplog.at_level(logging.DEBUG):
        for _ in range(ticks):
            await checkpointer.cosign_pending()
            setup.clock.now += TICK_S
        assert setup.cosigned_size("cam-1") == size
        # Cosigned once, then never submitted again.
        assert setup.counting.requests[known] == 1
        # Without backoff: one request a tick. With it (1 s doubling, jitter down to half
        # of each delay), retries at no less than 0.5, 1.5, 3.5, 7.5 s and at no more than
        # 1, 3, 7, 15 s after the first: 5 requests at most in 15 s, 4 at least.
        refused = setup.counting.requests[unknown]
        assert 4 <= refused <= 5, refused
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and unknown in r.message
        ]
        assert len(warnings) == 1, [r.message for r in warnings]

        # A newer checkpoint of the refused origin is submitted at once (a new size may be
        # accepted), and is then backed off in its turn, from where the backoff stood.
        newer = setup.grow("cam-2", 3, 2)
        assert newer > unknown_size
        await checkpointer.cosign_pending()
        assert setup.counting.requests[unknown] == refused + 1
        # That was failure 5 or 6 in a row: the next wait is at least 2**4 / 2 = 8 s.
        for _ in range(int(7 / TICK_S)):
            await checkpointer.cosign_pending()
            setup.clock.now += TICK_S
        assert setup.counting.requests[unknown] == refused + 1
        assert setup.counting.requests[known] == 1
        assert setup.cosigned_size("cam-2") == 0


async def test_a_witness_that_comes_back_is_used_again_after_its_backoff(setup: Setup) -> None:
    origin = setup.origin("cam-1")
    setup.grow("cam-1", 0, 5)
    checkpointer = setup.checkpointer()
    # The witness is down: the first tick finds no one on its port.
    assert await checkpointer.cosign_pending() == 0
    setup.clock.now += BACKOFF_FIRST_S  # past the first backoff (at most 1 s)
    assert await checkpointer.cosign_pending() == 0  # down again: the backoff is 1-2 s now
    with running(setup.counting, port=setup.witness_port):
        # Back up, and a newer checkpoint: a witness that did not answer is not asked
        # before its backoff is over, whatever the size.
        size = setup.grow("cam-1", 5, 3)
        setup.clock.now += BACKOFF_FIRST_S / 2
        for _ in range(2):
            assert await checkpointer.cosign_pending() == 0
        assert setup.counting.requests[origin] == 0
        assert setup.cosigned_size("cam-1") == 0
        setup.clock.now += 2 * BACKOFF_FIRST_S  # past the second backoff (at most 2 s)
        assert await checkpointer.cosign_pending() == 1
        assert setup.counting.requests[origin] == 1
        assert setup.cosigned_size("cam-1") == size


@pytest.mark.parametrize(
    ("content", "line"),
    [(b"witness w1 not-a-vkey\nquorum w1\n", 1), (b"# policy\n\xff\n", 2)],
    ids=["bad-vkey", "not-utf8"],
)
def test_a_malformed_policy_file_is_a_usage_error(
    tmp_path: Path, content: bytes, line: int
) -> None:
    policy = tmp_path / "policy"
    policy.write_bytes(content)
    with pytest.raises(UsageError, match=rf"{policy}: not a C2SP tlog-policy: line {line}:"):
        load_witnessing(app_settings(tmp_path, tlog_policy_file=policy))
