"""Screenshots of every console view at 1440x900, for docs/console/<view>.png.

Taken by tests/dashboards/test_browser.py::test_screenshots_of_every_view against its
running service and data (into a temporary folder on every run; into docs/console/ when
FFAUDIT_SCREENSHOTS=1). To refresh the documentation's images:

    FFAUDIT_SCREENSHOTS=1 .venv/bin/python -m tests.dashboards.screenshots
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from tests.dashboards.browser import ADMIN, SECURITY, SUBJECT

DOCS = Path(__file__).parents[2] / "docs" / "console"


@dataclass(frozen=True)
class Shot:
    view: str  # the file's name: <view>.png
    path: str  # under the base URL; {name} filled from capture's `values`
    tenant: str = "acme"
    claims: Mapping[str, Any] | None = field(default_factory=lambda: ADMIN)  # None: signed out
    ready: str = ".integrity-strip .badge:not(.unknown)"  # shown once the page has settled


SHOTS = (
    Shot("sign-in", "/console/sign-in", claims=None, ready="#token"),
    Shot("integrity", "/console/"),
    Shot("integrity-red", "/console/", tenant="broken"),
    Shot("events", "/console/events"),
    Shot("event", "{event}"),
    Shot("actors", "/console/actors?actor=alice"),
    Shot("jobs", "/console/jobs"),
    Shot("job", "/console/jobs/job-1"),
    Shot("alerts", "/console/alerts", tenant="broken", claims=SECURITY),
    Shot("verify", "/console/verify"),
    Shot("retention", "/console/retention"),
    Shot("mine", "/console/mine", claims=SUBJECT),
)


def capture(
    page_for: Callable[[Shot], Page],
    base_url: str,
    values: Mapping[str, str],
    out: Path,
    shots: tuple[Shot, ...] = SHOTS,
) -> list[Path]:
    """One PNG per shot in `out`; `page_for(shot)` gives a page signed in as the shot says."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for shot in shots:
        page = page_for(shot)
        answer = page.goto(base_url + shot.path.format(**values))
        assert answer is not None
        assert answer.ok, f"{shot.view}: HTTP {answer.status}"
        page.wait_for_selector(shot.ready, timeout=10_000)
        if page.locator("[data-histogram]").count():
            page.wait_for_selector("[data-histogram] canvas", timeout=10_000)
        target = out / f"{shot.view}.png"
        page.screenshot(path=str(target), full_page=False)
        written.append(target)
    return written


def main() -> int:
    """Run the screenshot test with FFAUDIT_SCREENSHOTS=1 (it owns the service and data)."""
    test = Path(__file__).with_name("test_browser.py")
    env = {**os.environ, "FFAUDIT_SCREENSHOTS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", f"{test}::test_screenshots_of_every_view"]
    return subprocess.run([*command, "-k", "sqlite"], env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
