"""My records: what the trail holds about the caller, for a caller whose reads are narrowed
to its own records (role `subject` without a reading role).

Every read is GET /v1/events's with its own-only rule (`audit.auth.policy.scope` →
ReadScope.OWN, then QueryService.build(tenant, own_only=subject, ...)): the records whose
actor is the caller, under the tenant keyring and its live subject key. Nothing else is
reachable from here. An export needs Permission.EXPORT, which the subject role does not
hold: the page then says how to ask for one.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from audit.auth.policy import Permission
from audit.errors import ForbiddenError
from audit.query.service import Filters
from dashboards.auth import ConsoleViewer
from dashboards.pages import PREFIX, View, render
from dashboards.views.actors import actor_jobs, own_only
from dashboards.views.common import Svc, admit, allowed, log_view
from dashboards.views.events import event_url

router = APIRouter()

PAGE_SIZE = 50


@router.get("/mine", response_class=HTMLResponse)
async def mine(
    request: Request,
    who: ConsoleViewer,
    svc: Svc,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> HTMLResponse:
    admit(who, svc, View.MINE)
    own = own_only(who, svc)
    if own is None:  # admit lets only narrowed callers in; never read the tenant from here
        raise ForbiddenError("this view is for callers who read their own records only")
    # build() reads the keyring file and the subject vault: off the event loop.
    query = await asyncio.to_thread(svc.queries.build, who.tenant, own, Filters())
    page, by_action, jobs = await asyncio.gather(
        svc.queries.search(query, PAGE_SIZE, cursor or None),
        svc.store.stats(query, by="action"),
        actor_jobs(svc, who.tenant, own, query),
    )
    await log_view(request, svc, who, View.MINE, results=len(page.events))
    return render(
        request,
        "mine.html",
        who,
        svc.settings,
        view=View.MINE,
        context={
            "subject": own,
            "events": page.events,
            "total": sum(by_action.values()),
            "by_action": sorted(by_action.items(), key=lambda kv: (-kv[1], kv[0])),
            "jobs": jobs,
            "can_export": allowed(who, svc, Permission.EXPORT),
            "export_url": f"{PREFIX}/verify",
            "event_url": event_url,
            "next_url": View.MINE.url(cursor=page.next_cursor) if page.next_cursor else None,
            "first_url": View.MINE.url() if cursor else None,
        },
    )
