"""One module per console view; each exports `router`, included by dashboards.router."""

from __future__ import annotations

from fastapi import APIRouter

from dashboards.views import actors, alerts, events, integrity, jobs, mine, retention, verify

ROUTERS: list[APIRouter] = [
    integrity.router,
    events.router,
    actors.router,
    jobs.router,
    alerts.router,
    verify.router,
    retention.router,
    mine.router,
]
