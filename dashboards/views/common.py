"""What every view shares: its typed dependencies, the permission check, the page-view log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from audit.auth.policy import Permission, authorize
from audit.deps import services
from audit.errors import ForbiddenError
from audit.integrity.events import EventAction
from audit.services import Services
from dashboards.auth import Viewer
from dashboards.pages import View, visible

Svc = Annotated[Services, Depends(services)]


def admit(who: Viewer, svc: Services, view: View) -> None:
    """403 (the console's own page) unless `who` may open `view`: the API's rule."""
    if not visible(view, who, svc.settings):
        if who.principal is not None:
            authorize(who.principal, svc.settings, view.permission)  # its precise reason
        raise ForbiddenError(f"this view needs the permission {view.permission.value}")


def allowed(who: Viewer, svc: Services, permission: Permission) -> bool:
    try:
        authorize(who.principal, svc.settings, permission)
    except ForbiddenError:
        return False
    return True


async def log_view(
    request: Request, svc: Services, who: Viewer, view: View | str, **metadata: Any
) -> None:
    """A console page view is a read of the trail like any API read: it goes into the
    tenant's log of the logs before the page is answered."""
    await svc.servicelog.record(
        who.principal,
        who.tenant,
        EventAction.AUDIT_QUERIED,
        metadata={"endpoint": f"console:{view}", **metadata},
        client_ip=request.client.host if request.client else None,
    )
