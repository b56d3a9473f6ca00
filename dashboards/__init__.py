"""The console: what auditors, security teams and engineers look at, at `/console`.

Server-rendered pages (Jinja2, htmx, uPlot; vendored, no CDN) on the audit service's own
services, role checks (audit.auth.policy) and log of the logs: a page view is a read like
any other. Mounted by the app factory (audit.app), the composition root.
"""
