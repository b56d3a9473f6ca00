"""Verify and export: re-verify stored chains with live progress, and build a signed export
bundle that anyone can check offline with `ffaudit verify-export`.

Verification is POST /v1/verify's (`QueryService.expected_records` and `verify_stream` with
a progress callback, the AUDIT_VERIFIED record in the log of the logs): the console answers
the same NDJSON progress lines, and ends with the summary rendered here (`{"html": ...}`)
instead of the JSON report. Exports are POST /v1/exports' one code path
(audit.exports.service.create_export: the same selection, cap and log record); the download
serves the bundle's own files, byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import AsyncIterator
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import ValidationError
from starlette.background import BackgroundTask

from audit.auth.policy import Permission, authorize
from audit.errors import InvalidInputError
from audit.exports import service as exports
from audit.exports.service import ExportFile, ExportRequest
from audit.integrity.events import EventAction, Outcome
from audit.query.progress import NDJSON, verification_lines, verified
from audit.query.service import StreamVerification
from audit.services import Services
from dashboards.auth import ChangingViewer, ConsoleViewer, Viewer
from dashboards.pages import PREFIX, View, render
from dashboards.views.common import Svc, admit, allowed, log_view
from dashboards.views.events import OUTCOMES, parse_time

log = logging.getLogger(__name__)
router = APIRouter()

FILES: tuple[str, ...] = get_args(ExportFile)


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


@router.get("/verify", response_class=HTMLResponse)
async def verify_page(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    stream: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=512)] = None,
    action: Annotated[list[str] | None, Query(max_length=50)] = None,
    outcome: Annotated[list[str] | None, Query(max_length=8)] = None,
    job: Annotated[str | None, Query(max_length=256)] = None,
    file_hash: Annotated[list[str] | None, Query(max_length=20)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """The range form, and the export form pre-filled from the query string (the events
    explorer's filters link here)."""
    admit(who, svc, View.VERIFY)
    names = await asyncio.to_thread(svc.streams.names, who.tenant)
    await log_view(request, svc, who, View.VERIFY, streams=len(names))
    return render(
        request,
        "verify.html",
        who,
        svc.settings,
        view=View.VERIFY,
        context={
            "streams": names,
            "can_export": allowed(who, svc, Permission.EXPORT),
            "max_records": svc.settings.max_export_records,
            "actions": [a.value for a in EventAction],
            "outcomes": OUTCOMES,
            "f": {
                "stream": stream or "",
                "since": since or "",
                "until": until or "",
                "actor": actor or "",
                "actions": set(action or ()),
                "outcomes": set(outcome or ()),
                "job": job or "",
                "file_hash": "\n".join(file_hash or ()),
                "q": q or "",
            },
        },
    )


# -- verification -------------------------------------------------------------------------


@router.post("/verify/run")
async def verify_run(
    request: Request,
    who: ChangingViewer,
    svc: Svc,
    stream: Annotated[str, Form(max_length=128)] = "",
    since: Annotated[str, Form(max_length=64)] = "",
    until: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """POST /v1/verify with Accept: application/x-ndjson, for the console: a stream, or
    (nothing named, or a time range) every stream of the tenant, since a chain is only
    provable whole."""
    admit(who, svc, View.VERIFY)
    authorize(who.principal, svc.settings, Permission.VERIFY)
    parse_time("since", since)  # malformed: 422 before the first line
    parse_time("until", until)
    name = stream.strip()
    names = [name] if name else await asyncio.to_thread(svc.streams.names, who.tenant)
    # Read now, so that an unknown stream is a plain 404 rather than an error line.
    heads = {
        n: (await asyncio.to_thread(svc.streams.read, n, who.tenant)).head_sequence for n in names
    }
    return StreamingResponse(_lines(request, svc, who, heads), media_type=NDJSON)


def _lines(
    request: Request, svc: Services, who: Viewer, heads: dict[str, int]
) -> AsyncIterator[bytes]:
    """The API's NDJSON lines (audit.query.progress), ending with the rendered summary."""

    async def record(outcome: Outcome, metadata: dict[str, Any]) -> None:
        await svc.servicelog.record(
            who.principal,
            who.tenant,
            EventAction.AUDIT_VERIFIED,
            outcome=outcome,
            metadata={"endpoint": "console:verify", **metadata},
            client_ip=_ip(request),
        )

    async def finish(results: list[StreamVerification]) -> tuple[bool, dict[str, Any]]:
        ok = all(verified(r) for r in results)
        page = render(
            request,
            "verify_result.html",
            who,
            svc.settings,
            context={"results": results, "ok": ok, "ok_of": verified},
        )
        return ok, {"html": bytes(page.body).decode()}

    return verification_lines(svc.queries, who.tenant, heads, record=record, finish=finish)


# -- exports ------------------------------------------------------------------------------


def _lines_of(value: str) -> list[str]:
    return [v.strip().lower() for v in value.replace(",", "\n").splitlines() if v.strip()]


@router.post("/exports")
async def create_export(
    request: Request,
    who: ChangingViewer,
    svc: Svc,
    actor: Annotated[str, Form(max_length=512)] = "",
    action: Annotated[list[str] | None, Form()] = None,
    outcome: Annotated[list[str] | None, Form()] = None,
    job: Annotated[str, Form(max_length=256)] = "",
    stream: Annotated[str, Form(max_length=128)] = "",
    file_hash: Annotated[str, Form(max_length=2000)] = "",
    since: Annotated[str, Form(max_length=64)] = "",
    until: Annotated[str, Form(max_length=64)] = "",
    q: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """POST /v1/exports from the console's form; then the export's page."""
    admit(who, svc, View.VERIFY)
    authorize(who.principal, svc.settings, Permission.EXPORT)
    try:
        body = ExportRequest.model_validate(
            {
                "actor": _text(actor),
                "action": [a for a in action or () if a],
                "outcome": [o for o in outcome or () if o],
                "job": [j] if (j := job.strip()) else [],
                "stream": [s] if (s := stream.strip()) else [],
                "file_hash": _lines_of(file_hash),
                "since": parse_time("since", since),
                "until": parse_time("until", until),
                "q": _text(q),
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(problems) from None
    made = await exports.create_export(
        svc.queries,
        svc.settings,
        svc.servicelog,
        who.principal,
        who.tenant,
        body,
        tlog=svc.tlog,
        client_ip=_ip(request),
    )
    return RedirectResponse(f"{PREFIX}/exports/{made.export_id}", status_code=303)


@router.get("/exports/{export_id}", response_class=HTMLResponse)
async def export_page(
    request: Request, who: ConsoleViewer, svc: Svc, export_id: str
) -> HTMLResponse:
    admit(who, svc, View.VERIFY)
    authorize(who.principal, svc.settings, Permission.EXPORT)
    manifest = await asyncio.to_thread(exports.read_manifest, svc.settings, who.tenant, export_id)
    files = await asyncio.to_thread(exports.export_files, svc.settings, who.tenant, export_id)
    await log_view(request, svc, who, "export", export_id=export_id)
    return render(
        request,
        "export.html",
        who,
        svc.settings,
        view=View.VERIFY,
        context={
            "export_id": export_id,
            "manifest": manifest,
            "files": files,
            "zip_name": zip_name(export_id),
            "commands": commands(export_id),
        },
    )


def zip_name(export_id: str) -> str:
    return f"ffaudit-export-{export_id}.zip"


def commands(export_id: str) -> list[str]:
    """What to run, offline, on the downloaded archive: unpack it, verify the folder with
    the service's public key obtained separately (never the bundle's own service.pub)."""
    folder = shlex.quote(export_id)
    return [
        f"unzip {shlex.quote(zip_name(export_id))}",
        f"ffaudit verify-export {folder} --pubkey ffaudit-service.pub",
    ]


@router.get("/exports/{export_id}/download")
async def download(request: Request, who: ConsoleViewer, svc: Svc, export_id: str) -> Response:
    """The whole bundle, its files unchanged, in one zip archive."""
    admit(who, svc, View.VERIFY)
    authorize(who.principal, svc.settings, Permission.EXPORT)
    path = await asyncio.to_thread(exports.zip_bundle, svc.settings, who.tenant, export_id)
    try:
        await log_view(request, svc, who, "export_download", export_id=export_id)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path,
        media_type="application/zip",
        filename=zip_name(export_id),
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.get("/exports/{export_id}/files/{name}")
async def export_file(
    request: Request, who: ConsoleViewer, svc: Svc, export_id: str, name: ExportFile
) -> Response:
    """One file of the bundle, as GET /v1/exports/{id}/{name} serves it."""
    admit(who, svc, View.VERIFY)
    authorize(who.principal, svc.settings, Permission.EXPORT)
    path = exports.export_file(svc.settings, who.tenant, export_id, name)
    await log_view(request, svc, who, "export_download", export_id=export_id, file=name)
    return FileResponse(path, filename=name)
