"""Rendering: one Jinja2 environment, the navigation, the security headers of every page.

Autoescaping is on for every template: an event's free text is data, never markup. The
Content-Security-Policy allows scripts and styles from the console's own static files only
(no inline script, no inline style, no eval), so text that slipped into markup still could
not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from audit import __version__
from audit.auth.policy import Permission, holds, reads
from audit.settings import AuditSettings
from dashboards.auth import CSRF_FIELD, CSRF_HEADER, Viewer

HERE = Path(__file__).parent
PREFIX = "/console"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, Chromium sends `Origin: null` on the console's own form
    # posts, and the Origin check (dashboards.auth.check_origin) could not tell them from
    # another site's. same-origin still tells other sites nothing.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class View(StrEnum):
    """The console's views, in navigation order; each carries its path, title and the
    permission that shows it (`reads`: a subject's own records count)."""

    path: str
    heading: str
    permission: Permission
    own_records: bool  # a `subject` sees it with its own records

    def __new__(
        cls, value: str, path: str, title: str, permission: Permission, own: bool = False
    ) -> View:
        member = str.__new__(cls, value)
        member._value_ = value
        member.path = path
        member.heading = title
        member.permission = permission
        member.own_records = own
        return member

    INTEGRITY = "integrity", "/", "Integrity", Permission.READ_STREAMS
    EVENTS = "events", "/events", "Events", Permission.READ_EVENTS
    ACTORS = "actors", "/actors", "Who did what", Permission.READ_EVENTS
    JOBS = "jobs", "/jobs", "Jobs", Permission.READ_JOBS
    ALERTS = "alerts", "/alerts", "Alerts", Permission.READ_ALERTS
    VERIFY = "verify", "/verify", "Verify & export", Permission.VERIFY
    RETENTION = "retention", "/retention", "Retention & erasure", Permission.MANAGE_RETENTION
    MINE = "mine", "/mine", "My records", Permission.READ_EVENTS, True

    def url(self, **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")}, doseq=True)
        return PREFIX + self.path + (f"?{query}" if query else "")


def visible(view: View, who: Viewer, settings: AuditSettings) -> bool:
    """Whether `who` may open `view` (and sees it in the navigation)."""
    if view is View.MINE:
        # Only for a caller whose reads are narrowed to its own records.
        return (
            who.principal is not None
            and not holds(who.principal, settings, view.permission)
            and reads(who.principal, settings, view.permission)
        )
    return holds(who.principal, settings, view.permission)


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class NavItem:
    view: View
    href: str
    current: bool


def render(
    request: Request,
    template: str,
    who: Viewer | None,
    settings: AuditSettings,
    *,
    view: View | None = None,
    status_code: int = 200,
    context: Mapping[str, Any] | None = None,
) -> HTMLResponse:
    nav = (
        [NavItem(v, v.url(), v is view) for v in View if visible(v, who, settings)]
        if who is not None
        else []
    )
    html = _env.get_template(template).render(
        request=request,
        who=who,
        view=view,
        nav=nav,
        version=__version__,
        prefix=PREFIX,
        csrf_field=CSRF_FIELD,
        csrf_header=CSRF_HEADER,
        **(context or {}),
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
