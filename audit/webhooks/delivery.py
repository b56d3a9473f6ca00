"""The delivery loop: sends due webhook deliveries, retries with backoff, keeps the log.

It runs as its own task of the service (never on the ingest path), so a receiver that is
down or slow costs only the loop's own time. Each attempt is claimed with a lease in the
database first (FOR UPDATE SKIP LOCKED plus a compare-and-set on the lease), so replicas
sharing a database never send the same attempt at once, and a replica that dies mid-send
only delays the attempt until its lease runs out. Delivery is at least once: a crash after
the receiver answered but before the outcome is written sends that attempt again, with the
same `X-FFAudit-Event-Id`, which receivers use to drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from audit import __version__
from audit.db.base import utcnow
from audit.secretbox import SecretBox
from audit.settings import AuditSettings
from audit.webhooks.destinations import (
    REFUSED,
    DestinationPolicy,
    DestinationRefused,
    pinned_request,
)
from audit.webhooks.repository import Claimed, WebhookRepository
from audit.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger("audit.webhooks")
_ERROR_CHARS = 500
_LEASE_MARGIN_S = 5.0


class WebhookDeliverer:
    def __init__(
        self,
        settings: AuditSettings,
        sessions: sessionmaker[Session],
        *,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._policy = DestinationPolicy(settings)
        self._box = SecretBox.load(settings.service_keys_dir)
        self._timeout = settings.webhook_timeout_s
        self._base = settings.webhook_backoff_base_s
        self._cap = settings.webhook_backoff_cap_s
        self._max_attempts = settings.webhook_max_attempts
        self._poll = settings.webhook_poll_interval_s
        self._concurrency = settings.webhook_concurrency
        # An attempt must end (timeout) well before anyone else may take it over.
        self._lease = timedelta(
            seconds=max(settings.webhook_lease_s, self._timeout + _LEASE_MARGIN_S)
        )
        # Redirects are not followed: a 3xx is a failed attempt (the URL is what was approved).
        # HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE from the environment apply (httpx's default).
        self._client = client or httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        self._rng = rng or random.SystemRandom()
        self._wallclock = wallclock  # the signature's `t`: the receiver's clock judges it
        self._wakeup = asyncio.Event()

    def backoff_s(self, failed_attempts: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(n-1))] after the n-th failure, so
        receivers coming back are not hit by every retry at the same instant."""
        exponent = min(failed_attempts - 1, 62)  # 2**63 * base is past any cap already
        return self._rng.uniform(0.0, min(self._cap, self._base * 2.0**exponent))

    def wake(self) -> None:
        """Scan now rather than at the next poll (a test delivery was just queued)."""
        self._wakeup.set()

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim what is due at `now` (up to the concurrency), send it, record the outcomes;
        returns how many attempts were made. The deterministic step of the loop."""
        at = now or utcnow()
        token, claimed = await asyncio.to_thread(self._claim, at, self._concurrency)
        await asyncio.gather(*(self._attempt(item, token, now) for item in claimed))
        return len(claimed)

    async def run_forever(self) -> None:
        """The service's loop: keeps up to `concurrency` attempts in flight, so one slow
        receiver holds one slot, not the loop. Closes the HTTP client when cancelled."""
        inflight: dict[asyncio.Task[None], tuple[str, int]] = {}
        try:
            while True:
                self._wakeup.clear()  # before the scan: a wake-up during it is kept
                free = self._concurrency - len(inflight)
                if free > 0:
                    try:
                        token, claimed = await asyncio.to_thread(self._claim, utcnow(), free)
                    except Exception:  # the database may be back at the next poll
                        log.exception("webhook delivery: claiming due deliveries failed")
                        claimed = []
                    for item in claimed:
                        task = asyncio.create_task(self._attempt(item, token, None))
                        inflight[task] = (token, item.id)
                        task.add_done_callback(lambda done: inflight.pop(done, None))
                waker = asyncio.create_task(self._wakeup.wait())
                try:
                    # Whichever first: a poll, a wake-up, or a finished attempt (a free slot).
                    await asyncio.wait(
                        [waker, *inflight], timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waker.cancel()
        finally:
            await self._shutdown(inflight)

    async def _shutdown(self, inflight: dict[asyncio.Task[None], tuple[str, int]]) -> None:
        leases = list(inflight.values())
        for task in list(inflight):
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        with contextlib.suppress(Exception):  # a lease not given back only runs out later
            await asyncio.to_thread(self._release, leases)
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client (done by `run_forever` when it ends)."""
        await self._client.aclose()

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, item: Claimed, token: str, now: datetime | None) -> None:
        body = item.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": f"ffaudit-webhooks/{__version__}",
            EVENT_ID_HEADER: item.event_id,
            SIGNATURE_HEADER: sign(self._box.open(item.secret), body, int(self._wallclock())),
        }
        status: int | None = None
        error: str | None = None
        try:
            # Checked again at every attempt (DNS may now point elsewhere) and sent to the
            # very address that passed: nothing reaches an internal service.
            destination = await asyncio.to_thread(self._policy.check, item.url)
            url, host, extensions = pinned_request(destination)
            # The whole exchange is bounded (httpx's timeout is per read/write, and a
            # receiver dripping bytes would otherwise hold the slot indefinitely); the
            # response body is never read.
            async with asyncio.timeout(self._timeout):
                async with self._client.stream(
                    "POST", url, content=body, headers={**headers, **host}, extensions=extensions
                ) as response:
                    status = response.status_code
        except DestinationRefused:
            error = REFUSED
        except TimeoutError:
            error = f"timed out after {self._timeout:g} s"
        except Exception as exc:  # whatever stopped the send, it is this attempt's failure
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        if status is not None and not 200 <= status < 300:
            redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
            error = f"HTTP {status}{redirect}"
        try:
            await asyncio.to_thread(self._record, item, token, status, error, now or utcnow())
        except Exception:  # the lease runs out and the attempt is made again
            log.exception("webhook delivery %s: recording the attempt failed", item.event_id)

    def _record(
        self, item: Claimed, token: str, status: int | None, error: str | None, at: datetime
    ) -> None:
        attempts = item.attempts + 1
        next_at: datetime | None = None
        if error is None:
            state = "delivered"
        elif attempts >= self._max_attempts:
            state = "failed"
            log.warning(
                "webhook delivery %s failed for good after %d attempts: %s",
                item.event_id,
                attempts,
                error,
            )
        else:
            state = "pending"
            next_at = at + timedelta(seconds=self.backoff_s(attempts))
        with self._sessions.begin() as session:
            kept = WebhookRepository(session).record_attempt(
                item.id,
                token,
                attempts=attempts,
                state=state,
                at=at,
                next_attempt_at=next_at,
                status_code=status,
                error=error,
            )
        if not kept:
            # Our lease ran out (or the webhook was deleted) while we were sending.
            log.warning("webhook delivery %s: outcome not recorded, lease lost", item.event_id)

    # -- leases -----------------------------------------------------------------------------

    def _claim(self, now: datetime, limit: int) -> tuple[str, list[Claimed]]:
        token = uuid.uuid4().hex
        with self._sessions.begin() as session:
            repo = WebhookRepository(session)
            ids = repo.due_ids(now, limit)
            return token, repo.claim(ids, token, now, now + self._lease)

    def _release(self, leases: list[tuple[str, int]]) -> None:
        with self._sessions.begin() as session:
            repo = WebhookRepository(session)
            for token, delivery_id in leases:
                repo.release([delivery_id], token)
