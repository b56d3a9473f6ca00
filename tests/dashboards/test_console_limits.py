"""Review findings on the console, each held by a test that failed before its fix: the
integrity badge served from a per-tenant cache, the explorer's per-caller rate bound, a
token too large for a cookie refused at sign-in, and the Origin check behind a
TLS-terminating proxy (trusted proxies only)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from audit.app import create_app
from audit.settings import AuditSettings
from dashboards.router import MAX_SESSION_COOKIE
from dashboards.state import (
    BadgeVerdict,
    ConsoleState,
    TokenBuckets,
    TtlCache,
    console_state,
)
from tests.apptools import app_settings, jwt_token, running
from tests.dashboards.conftest import ConsoleFactory, seed, sign_in

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class FakeClock:
    """Time the test moves by hand: TTLs and refills without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state_of(client: TestClient) -> ConsoleState:
    bound = client.app.dependency_overrides[console_state]  # type: ignore[attr-defined]
    state: ConsoleState = bound()
    return state


# -- (a) the integrity badge -----------------------------------------------------------------


def test_badge_is_cached_per_tenant_for_a_short_time(console: ConsoleFactory) -> None:
    client = console()
    clock = FakeClock()
    state_of(client).badges = TtlCache[str, BadgeVerdict](10.0, clock=clock)
    first = client.get("/console/integrity/badge")
    assert first.status_code == 200, first.text
    assert "no streams yet" in first.text
    # A stream appears: within the TTL every open page still gets the cached verdict, so
    # the overview (every stream's head, the store's verdict counts) is not recomputed.
    seed(client, "acme", "cam-1", 3)
    clock.now += 9
    assert "no streams yet" in client.get("/console/integrity/badge").text
    # The integrity page itself is never served from the cache.
    assert "cam-1" in client.get("/console/").text
    clock.now += 2
    fresh = client.get("/console/integrity/badge").text
    assert "cam-1" in fresh
    assert "no streams yet" not in fresh
    # Another tenant has its own entry: never acme's verdict.
    sign_in(client, tenant="other")
    assert "no streams yet" in client.get("/console/integrity/badge").text
    sign_in(client)
    assert "cam-1" in client.get("/console/integrity/badge").text


async def test_concurrent_misses_share_one_computation() -> None:
    import asyncio

    cache = TtlCache[str, int](5.0)
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    got = await asyncio.gather(*(cache.get("acme", compute) for _ in range(20)))
    assert got == [1] * 20
    assert calls == 1
    assert await cache.get("other", compute) == 2


# -- (b) the explorer's rate bound -----------------------------------------------------------


def test_explorer_is_rate_bound_per_token_subject(console: ConsoleFactory) -> None:
    client = console()
    clock = FakeClock()
    state_of(client).explorer = TokenBuckets(0.5, 3, clock=clock)
    seed(client, "acme", "cam-1", 2)
    for _ in range(3):
        assert client.get("/console/events").status_code == 200
    refused = client.get("/console/events")
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("text/html")
    assert "Too many requests" in refused.text  # the console's own error page
    assert "try again in 2 s" in refused.text
    assert refused.headers["retry-after"] == "2"
    # Other pages are not bounded by it, and another subject has its own bucket.
    assert client.get("/console/jobs").status_code == 200
    sign_in(client, sub="auditor-2")
    assert client.get("/console/events").status_code == 200
    sign_in(client, sub="auditor-1")
    assert client.get("/console/events").status_code == 429
    clock.now += 2  # one token refilled
    assert client.get("/console/events").status_code == 200
    assert client.get("/console/events").status_code == 429


def test_token_buckets_refill_and_forget() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(2.0, 2, clock=clock, size=2)
    assert [buckets.take("a") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now -= 100  # a clock going back refunds nothing
    assert buckets.take("a") > 0
    clock.now += 100.25
    assert buckets.take("a") == 0.0
    buckets.take("b")
    buckets.take("c")  # "a" forgotten: at most `size` callers remembered
    assert buckets.take("a") == 0.0


# -- (c) a token too large for a cookie ------------------------------------------------------


def test_a_token_too_large_for_a_cookie_is_refused_at_sign_in(tmp_path: Path) -> None:
    token = jwt_token(groups=[f"group-{n:04d}-of-a-large-directory" for n in range(150)])
    assert len(token) > MAX_SESSION_COOKIE
    with TestClient(create_app(app_settings(tmp_path))) as client:
        page = client.get("/console/sign-in")
        found = _CSRF.search(page.text)
        assert found
        answer = client.post(
            "/console/sign-in",
            data={"csrf": found.group(1), "token": token},
            follow_redirects=False,
        )
        # Not a redirect into a session the browser would drop (and back to sign-in).
        assert answer.status_code == 400, answer.status_code
        assert "too large for the console" in answer.text
        assert 'role="alert"' in answer.text
        assert "ffaudit_console=" not in answer.headers.get("set-cookie", "")
        # A token of ordinary size still signs in.
        sign_in(client)
        assert client.get("/console/").status_code == 200


# -- (d) the Origin check behind a TLS-terminating proxy -------------------------------------


@contextlib.contextmanager
def served(settings: AuditSettings, forwarded_allow_ips: str) -> Iterator[str]:
    """The app under uvicorn as `ffaudit serve` runs it (proxy headers on), trusting
    X-Forwarded-* from `forwarded_allow_ips` only."""
    with running(
        create_app(settings), proxy_headers=True, forwarded_allow_ips=forwarded_allow_ips
    ) as url:
        yield url


def sign_in_through(base: str, headers: dict[str, str]) -> httpx.Response:
    """The sign-in form fetched and posted as a browser behind the proxy would."""
    with httpx.Client(base_url=base, headers=headers) as client:
        page = client.get("/console/sign-in")
        found = _CSRF.search(page.text)
        assert found, page.text
        # Sent by hand: the cookie is Secure when the service saw https, and this client
        # talks plain http to the service as the proxy does.
        nonce = page.headers["set-cookie"].split(";", 1)[0]
        client.cookies.clear()
        return client.post(
            "/console/sign-in",
            data={"csrf": found.group(1), "token": jwt_token()},
            headers={"origin": "https://audit.example.org", "cookie": nonce},
            follow_redirects=False,
        )


# What a TLS-terminating proxy in front of the service sends on: the browser's Host and
# the scheme it used.
PROXIED = {"host": "audit.example.org", "x-forwarded-proto": "https"}


def test_origin_check_behind_a_trusted_tls_proxy(tmp_path: Path) -> None:
    with served(app_settings(tmp_path), forwarded_allow_ips="127.0.0.1") as base:
        answer = sign_in_through(base, PROXIED)
        assert answer.status_code == 303, answer.text
        # The scheme seen is https: the session cookie is the Secure, __Host- one.
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("__Host-ffaudit_console=")
        assert "Secure" in cookie
        # Another site's form is still refused, whatever the proxy forwards.
        with httpx.Client(base_url=base, headers=PROXIED) as client:
            other = client.post(
                "/console/sign-in",
                data={"token": jwt_token()},
                headers={"origin": "https://evil.example"},
            )
            assert other.status_code == 403
        # X-Forwarded-Host is not read: it cannot make another site's origin look local.
        spoofed = sign_in_through(
            base,
            {
                "host": "audit.internal",
                "x-forwarded-host": "audit.example.org",
                "x-forwarded-proto": "https",
            },
        )
        assert spoofed.status_code == 403


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    # The proxy's address is not ours: X-Forwarded-Proto from this peer is not believed,
    # so the page was served over http and an https Origin is another site.
    with served(app_settings(tmp_path), forwarded_allow_ips="192.0.2.10") as base:
        answer = sign_in_through(base, PROXIED)
        assert answer.status_code == 403, answer.text
        assert "cross-site request refused" in answer.text
        # Said why, for the operator who forgot to trust the proxy.
        assert "FORWARDED_ALLOW_IPS" in answer.text
