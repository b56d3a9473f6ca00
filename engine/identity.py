"""Who calls the sidecar: bearer-token subjects, sessions bound to them, and how often a
failed authentication is written down.

Hand-written, because what is kept is specific to the audit trail: a session id is bound
to the first user who presents it (as a keyed tag on disk, so a restart keeps the binding
and the disk never holds the raw id), and failed authentications are recorded per client
address with a token bucket whose overflow is counted into the next record instead of
being lost or flooding the trail.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from audit.common.files import write_atomic
from engine.errors import ForbiddenError, UnauthorizedError, UsageError
from engine.hashing import keyed_tag

# The engine's own records use this actor namespace (engine.pipeline.engine.SYSTEM_ACTOR):
# a token may not claim it, or its records would pass for the engine's.
RESERVED_PREFIX: Final = "system:"
MAX_SUBJECT: Final = 256
MAX_SESSION: Final = 256


def subject_of(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUBJECT:
        raise UnauthorizedError("invalid token")
    if sub.lower().startswith(RESERVED_PREFIX) or any(ord(c) < 32 for c in sub):
        raise UnauthorizedError("invalid token")
    return sub


def session_of(header: str | None, claims: dict[str, Any]) -> str:
    """The caller's session: the X-Session-Id header, else the token's `sid`, else its
    `jti` (one token, one session). Without one, per-session rate limits could not apply."""
    for value in (header, claims.get("sid"), claims.get("jti")):
        if isinstance(value, str) and value.strip():
            if len(value) > MAX_SESSION or any(ord(c) < 32 for c in value):
                raise UsageError("the session id is over 256 characters or has control characters")
            return value
    raise UsageError(
        "a session is required: send X-Session-Id, or a token with a `sid` or `jti` claim"
    )


class SessionBinder:
    """A session belongs to the first user who presents it; another user is refused."""

    def __init__(self, directory: Path, key: str) -> None:
        self._dir = directory
        self._key = key
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def bind(self, session: str, actor: str) -> None:
        owner = keyed_tag(self._key, "owner", actor)
        path = self._dir / keyed_tag(self._key, "session", session)
        with self._lock:
            try:
                bound = path.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                write_atomic(path, owner.encode("ascii"), mode=0o600)
                return
            if bound != owner:
                raise ForbiddenError("this session belongs to another user")
            os.utime(path)  # last use: prune() keeps sessions in use

    def prune(self, unused_since: float) -> int:
        """Forget sessions not presented since `unused_since` (epoch seconds): one file per
        session id a caller ever sent must not grow without bound."""
        removed = 0
        with self._lock:
            for path in self._dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < unused_since:
                        path.unlink()
                        removed += 1
        return removed


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


class FailureLimiter:
    """Per client address: `burst` records, then one per `every_s`; the ones in between
    are counted and reported by the next record written (`suppressed`)."""

    def __init__(self, burst: int = 5, every_s: float = 10.0, max_clients: int = 10_000) -> None:
        self._burst, self._every, self._max = burst, every_s, max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, client: str, now: float | None = None) -> int | None:
        """None: do not write a record now. Otherwise the number suppressed before it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.pop(client, None) or _Bucket(float(self._burst), now)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) / self._every)
            bucket.at = now
            self._buckets[client] = bucket  # most recently seen last
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            if bucket.tokens < 1:
                bucket.suppressed += 1
                return None
            bucket.tokens -= 1
            suppressed, bucket.suppressed = bucket.suppressed, 0
            return suppressed
