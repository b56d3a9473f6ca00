"""The integrity home: per stream of the tenant, is the log intact, and if not, why.

Green, amber or red, with the reason spelled out, from what the service already knows:
the chain head verified at ingest and its last signed checkpoint (control database), the
records that failed verification or wait behind a gap (the store's verdict counts, one
aggregation per kind), the re-verifier's last pass, and open alerts. The badge on every
page is the worst of the tenant's streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from audit.alerts.schemas import AlertOut
from audit.auth.policy import Permission
from audit.integrity import record as f
from audit.integrity.record import document_id
from audit.query.service import Filters
from audit.reverify.schemas import MarkOut
from audit.services import Services
from audit.streams.schemas import StreamRead
from dashboards.auth import ConsoleViewer
from dashboards.pages import View, render, visible
from dashboards.state import BadgeVerdict, Console
from dashboards.views.common import Svc, admit, allowed, log_view

router = APIRouter()

# A head this far past its last signed checkpoint, for this long, is worth a look: the
# records after the checkpoint rest on hashes alone until the next one is signed.
_UNSIGNED_AGE = timedelta(minutes=10)
_REVERIFY_STALE = timedelta(days=2)
_ALERT_PAGE = 200


class Health(IntEnum):
    GREEN = 0
    AMBER = 1
    RED = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class StreamHealth:
    stream: str
    head_sequence: int
    signed_through: int
    closed: bool
    checkpoint_at: datetime | None
    unsigned_since: datetime | None  # the first record after the last checkpoint
    failed: int  # broken or rejected at ingest
    pending: int  # waiting behind a gap
    reverify: MarkOut | None
    alerts: list[AlertOut] = field(default_factory=list)
    health: Health = Health.GREEN
    reasons: list[str] = field(default_factory=list)

    @property
    def checkpoint_age(self) -> timedelta | None:
        return datetime.now(UTC) - self.checkpoint_at if self.checkpoint_at else None


def assess(item: StreamHealth, now: datetime) -> StreamHealth:
    """The verdict and its reasons: pure, so that each rule is tested on its own."""
    red: list[str] = []
    amber: list[str] = []
    if item.failed:
        red.append(
            f"{item.failed} record(s) failed verification at ingest (forged, forked or not "
            "linking to the chain): kept as evidence, see the events with verdict broken or "
            "rejected"
        )
    if item.reverify is not None and not item.reverify.ok:
        red.append(
            "re-verification found the store no longer holds what ingest accepted after "
            f"sequence {item.reverify.verified_through}"
        )
    critical = [a for a in item.alerts if a.severity == "critical"]
    if critical:
        red.append(f"{len(critical)} open critical alert(s): {critical[0].title}")
    if item.pending:
        amber.append(f"{item.pending} record(s) wait for a missing sequence (a gap)")
    unsigned = item.head_sequence - item.signed_through
    waited = now - item.unsigned_since if item.unsigned_since else None
    if unsigned > 0 and not item.closed and waited is not None and waited > _UNSIGNED_AGE:
        amber.append(
            f"{unsigned} record(s) not covered by a signed checkpoint for {_human(waited)}"
        )
    if item.reverify is None or item.reverify.checked_at is None:
        amber.append("not re-verified from the store yet")
    elif now - item.reverify.checked_at > _REVERIFY_STALE:
        amber.append(f"last re-verified {_human(now - item.reverify.checked_at)} ago")
    others = [a for a in item.alerts if a.severity != "critical"]
    if others:
        amber.append(f"{len(others)} open alert(s)")
    item.health = Health.RED if red else Health.AMBER if amber else Health.GREEN
    item.reasons = red + amber
    if not item.reasons:
        item.reasons = [
            f"all {item.head_sequence} record(s) verified at ingest, signed through "
            f"{item.signed_through}" + (", stream closed" if item.closed else "")
        ]
    return item


def _human(delta: timedelta | None) -> str:
    if delta is None:
        return "never"
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


async def overview(svc: Services, tenant: str) -> list[StreamHealth]:
    names = await asyncio.to_thread(svc.streams.names, tenant)
    heads: Sequence[StreamRead] = await asyncio.gather(
        *(asyncio.to_thread(svc.streams.read, name, tenant) for name in names)
    )
    failed_q = await asyncio.to_thread(
        svc.queries.build, tenant, None, Filters(verdicts=("broken", "rejected"))
    )
    pending_q = await asyncio.to_thread(
        svc.queries.build, tenant, None, Filters(verdicts=("pending",))
    )
    failed, pending, marks, alerts = await asyncio.gather(
        svc.store.stats(failed_q, by="stream"),
        svc.store.stats(pending_q, by="stream"),
        asyncio.to_thread(svc.reverifier.marks, tenant),
        svc.alerts.list(tenant, limit=_ALERT_PAGE, states=["open"]),
    )
    by_stream = {m.stream: m for m in marks}
    # The last checkpoint's record and the first record after it: how long records have
    # waited unsigned.
    checkpoints = await svc.store.get_many(
        tenant,
        [
            document_id(h.stream, n)
            for h in heads
            for n in (h.signed_through, h.signed_through + 1)
            if 0 < n <= h.head_sequence
        ],
    )
    now = datetime.now(UTC)
    out = []
    for head in heads:
        cp = checkpoints.get(document_id(head.stream, head.signed_through))
        first = checkpoints.get(document_id(head.stream, head.signed_through + 1))
        out.append(
            assess(
                StreamHealth(
                    stream=head.stream,
                    head_sequence=head.head_sequence,
                    signed_through=head.signed_through,
                    closed=head.closed,
                    checkpoint_at=_stamp(cp.record if cp else None),
                    unsigned_since=_stamp(first.record if first else None),
                    failed=failed.get(head.stream, 0),
                    pending=pending.get(head.stream, 0),
                    reverify=by_stream.get(head.stream),
                    alerts=[a for a in alerts.alerts if a.stream_id == head.stream],
                ),
                now,
            )
        )
    return sorted(out, key=lambda s: (-s.health, s.stream))


def _stamp(record: Mapping[str, object] | None) -> datetime | None:
    stamp = record.get(f.TIMESTAMP) if record is not None else None
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, who: ConsoleViewer, svc: Svc) -> Response:
    if not visible(View.INTEGRITY, who, svc.settings):
        # The landing page after sign-in: a caller who may not read streams (a subject)
        # goes to the first view it may open instead of a 403 (and an access.denied).
        first = next((v for v in View if visible(v, who, svc.settings)), None)
        if first is not None:
            return RedirectResponse(first.url(), status_code=303)
    admit(who, svc, View.INTEGRITY)
    streams = await overview(svc, who.tenant)
    await log_view(request, svc, who, View.INTEGRITY, streams=len(streams))
    worst = max((s.health for s in streams), default=Health.GREEN)
    return render(
        request,
        "integrity.html",
        who,
        svc.settings,
        view=View.INTEGRITY,
        context={
            "streams": streams,
            "worst": worst,
            "can_verify": allowed(who, svc, Permission.VERIFY),
            "human": _human,
        },
    )


async def badge_verdict(svc: Services, tenant: str) -> BadgeVerdict:
    """The worst stream's colour and first reason, from a fresh overview."""
    streams = await overview(svc, tenant)
    worst = max(streams, key=lambda s: s.health, default=None)
    if worst is None:
        return BadgeVerdict("unknown", None, "", 0)
    return BadgeVerdict(worst.health.label, worst.stream, worst.reasons[0], len(streams))


@router.get("/integrity/badge", response_class=HTMLResponse)
async def badge(request: Request, who: ConsoleViewer, svc: Svc, console: Console) -> HTMLResponse:
    """The strip on every page: the worst stream's colour and its first reason. Callers who
    may not read streams (a subject) see the colour alone. Polled every 30 s by every open
    page: served from the tenant's cached verdict (BADGE_TTL_S), one overview per tenant
    however many pages are open."""
    verdict = await console.badges.get(who.tenant, lambda: badge_verdict(svc, who.tenant))
    detailed = allowed(who, svc, Permission.READ_STREAMS)
    # Not logged: a colour and a count, polled every 30 s by every open page, would bury
    # the reads in the log of the logs; opening the integrity page is logged.
    return render(
        request,
        "integrity_badge.html",
        who,
        svc.settings,
        context={"verdict": verdict, "detailed": detailed},
    )
