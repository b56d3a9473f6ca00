"""FastAPI dependencies: everything lives on app.state, built once by the app factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from audit.settings import AuditSettings

if TYPE_CHECKING:
    from audit.ingest.service import IngestService
    from audit.streams.service import StreamService


def settings_dep(request: Request) -> AuditSettings:
    settings: AuditSettings = request.app.state.settings
    return settings


def sessions_dep(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def ingest_service(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


def stream_service(request: Request) -> StreamService:
    service: StreamService = request.app.state.streams
    return service
