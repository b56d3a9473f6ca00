"""A real browser for the console's tests: Debian's chromium driven by Playwright (sync API).

    with launch() as browser:                       # or the `chromium` fixture (module)
        page = new_page(browser)                    # 1440x900, CSP messages collected
        sign_in(page, base_url, jwt_token())
        page.goto(base_url + "/console/events")
        assert not csp_violations(page)
        assert_accessible(page)                     # axe-core: no serious/critical finding

Playwright's own browser download is never used: chromium comes from the system
(`apt-get install chromium`; .ci/run installs it). A missing chromium FAILS the tests that
need it, with the reason; nothing here skips.

Nothing weakens the page under test: no `bypass_csp`, no init script. CSP violations are
read from the console messages Chromium logs for every blocked script, handler or style;
axe-core runs through `page.evaluate`, which executes in the page's main world over CDP and
is not subject to the page's Content-Security-Policy (a `<script>` tag would be refused).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, ViewportSize, sync_playwright

CHROMIUM = Path(os.environ.get("FFAUDIT_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, chromium reaches out to Google and floods refused connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
AXE = Path(__file__).parent / "vendor" / "axe-4.14.1.min.js"
BLOCKING = ("serious", "critical")

# Who signs in (claims of tests.apptools.jwt_token): an administrator with a second factor
# opens every view but "My records"; security responds to alerts; a subject reads its own.
ADMIN: dict[str, Any] = {"sub": "root", "roles": ["admin"], "amr": ["pwd", "otp"]}
SECURITY: dict[str, Any] = {"sub": "sec-1", "roles": ["security"]}
SUBJECT: dict[str, Any] = {"sub": "alice", "roles": ["subject"]}


@contextlib.contextmanager
def launch() -> Iterator[Browser]:
    """Chromium, headless; fails (never skips) when it is not installed."""
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the console's browser tests need Debian's chromium "
            "(apt-get install chromium chromium-driver; .ci/run installs it), or "
            "FFAUDIT_CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module", name="chromium")
def chromium_fixture() -> Iterator[Browser]:
    """One chromium for the module's tests (a new context per page keeps cookies apart).

    Module scope: the sync Playwright driver is stopped before the suite's asyncio tests
    run in the same thread."""
    with launch() as browser:
        yield browser


@dataclass
class Watch:
    """What a page logged: CSP violations and other console errors, page errors."""

    csp: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.csp.clear()
        self.errors.clear()
        self.page_errors.clear()


_WATCHES: dict[int, Watch] = {}


def new_page(browser: Browser) -> Page:
    """A page in a fresh context (its own cookies), 1440x900, its console watched."""
    ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = ctx.new_page()
    watch = Watch()
    _WATCHES[id(page)] = watch

    def on_console(message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            watch.csp.append(text)
        elif message.type == "error":
            watch.errors.append(text)

    def on_error(error: Error) -> None:
        watch.page_errors.append(str(error))

    def on_close(_: Page) -> None:
        _WATCHES.pop(id(page), None)

    page.on("console", on_console)
    page.on("pageerror", on_error)
    page.on("close", on_close)
    return page


def watch(page: Page) -> Watch:
    return _WATCHES[id(page)]


def csp_violations(page: Page) -> list[str]:
    """The CSP violations Chromium reported on `page` so far."""
    return list(watch(page).csp)


def sign_in(page: Page, base_url: str, token: str) -> None:
    """Sign in through the real form; ends on the console's landing page (the integrity
    home, or My records for a subject)."""
    page.goto(f"{base_url}/console/sign-in")
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("form[action='/console/sign-in'] button[type=submit]")
    assert page.url in (f"{base_url}/console/", f"{base_url}/console/mine"), (
        f"sign-in did not reach the console: {page.url}\n{page.inner_text('main')}"
    )


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (every rule axe runs by default)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        # Evaluated in the main world over CDP: the page's CSP does not apply to it.
        page.evaluate(AXE.read_text(encoding="utf-8"))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => {
            const result = await window.axe.run(document, {resultTypes: ["violations"]});
            return result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => ({target: n.target, html: n.html, impact: n.impact,
                                          summary: n.failureSummary})),
            }));
        }"""
    )
    return found


def assert_accessible(page: Page, label: str = "") -> None:
    """No axe-core violation of impact serious or critical; the others are tolerated."""
    blocking = [v for v in axe_violations(page) if v["impact"] in BLOCKING]
    if blocking:
        lines = [f"axe-core on {label or page.url}:"]
        for v in blocking:
            lines.append(f"- {v['id']} ({v['impact']}): {v['help']}")
            for n in v["nodes"][:8]:
                lines.append(f"    {' '.join(map(str, n['target']))}: {n['html'][:160]}")
        pytest.fail("\n".join(lines), pytrace=False)
