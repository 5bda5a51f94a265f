"""Who may call ``nova serve``: tokens, failed-attempt limits, refusal audits, and safe error bodies.

* **Fixed at startup.** Whether tokens are required is decided when the service starts (a token file
  exists), and only ever tightened: a token file created later turns them on (logged); a token file that
  disappears or breaks does not turn them off, it makes every call that needs a token answer 503, audited,
  with how to repair it.
* **Off the event loop.** A token is checked with scrypt (about 50 ms) in a worker thread; a token already
  verified costs a lookup (:mod:`nova_pipeline.core.serving.tokens`, which also hashes unknown ids against a
  dummy so timing does not tell which ids exist).
* **Limited.** A client (by address) that fails :data:`MAX_FAILURES` checks within :data:`WINDOW_S` seconds
  is answered 429 until the window passes, without a check.
* **Audited, within bounds.** Every refusal, on every route, is a line in ``audit.log`` with the client
  address and the token name when one was presented; a flood is cut at :data:`REFUSAL_AUDITS` lines per
  client and window, and one line then says how many were left out. Records are written in a worker
  thread.
* **Errors as HTTP means them.** A client never sees an absolute path or an exception class:
  :func:`public_message` rewrites a message before it leaves.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from nova_pipeline.core.protect import audit
from nova_pipeline.core.serving.tokens import TokenEntry, TokenError, TokenStore

__all__ = ["Caller", "Gate", "client_of", "error", "public_message"]

log = logging.getLogger("nova_pipeline.service.auth")

MAX_FAILURES = 10  # failed token checks per client and window before 429
WINDOW_S = 60.0
REFUSAL_AUDITS = 20  # refusal records per client and window; the rest are counted
NO_TOKENS = (
    "no API tokens exist, so admin calls are refused: create one with "
    "`nova token create --name NAME --role admin` and send it as `Authorization: Bearer <token>`"
)
_ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:[\w.\-]+/)+([\w.\-]*)")


def public_message(message: str, home: Path | None = None) -> str:
    """``message`` as a client may read it: ``NOVA_HOME``'s path replaced by its name, any other absolute
    path by its last component."""
    if home is not None:
        message = message.replace(str(home), "NOVA_HOME")
    return _ABSOLUTE.sub(lambda m: m.group(1) or "/", message)


def error(status: int, message: str, home: Path | None = None, **headers: str) -> JSONResponse:
    """A JSON error body ``{"error": ...}`` with ``status``, its message through :func:`public_message`."""
    return JSONResponse({"error": public_message(message, home)}, status_code=status, headers=headers or None)


def client_of(request: Request) -> str:
    """The calling address (the TCP peer's, as uvicorn saw it), or ``unknown``."""
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Caller:
    """Who made an allowed call: the client address, and the token (None when tokens are not required)."""

    client: str
    token: TokenEntry | None

    @property
    def name(self) -> str:
        return self.token.name if self.token is not None else "anonymous"


class _Window:
    """Events per key within a sliding window (thread-safe, bounded: keys idle for a window are dropped)."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._events: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def add(self, key: str, now: float | None = None) -> int:
        """Record an event for ``key``; returns how many it has in the window, this one included."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.setdefault(key, collections.deque())
            q.append(now)
            self._trim(q, now)
            if len(self._events) > 10_000:  # a flood of addresses: forget the idle ones
                for k in [k for k, v in self._events.items() if not v or now - v[-1] > self.window_s]:
                    del self._events[k]
            return len(q)

    def count(self, key: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.get(key)
            if not q:
                return 0
            self._trim(q, now)
            return len(q)

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Seconds until the oldest event of ``key`` leaves the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.get(key)
            return max(1, int(self.window_s - (now - q[0])) + 1) if q else 1

    def _trim(self, q: collections.deque, now: float) -> None:
        while q and now - q[0] > self.window_s:
            q.popleft()


class Gate:
    """The service's authentication and refusal audit (see the module docstring).

    Args:
        home: ``NOVA_HOME`` (tokens, audit log).
        tokens: its token store.
    """

    def __init__(self, home: Path, tokens: TokenStore):
        self.home, self.tokens = Path(home), tokens
        self.required = tokens.exists()
        self._failures = _Window(WINDOW_S)
        self._refusals = _Window(WINDOW_S)
        self._suppressed: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def _still_open(self) -> bool:
        """Tokens not required: until a token file appears (then they are, for good)."""
        if not self.required and self.tokens.exists():
            self.required = True
            log.warning("a token file appeared: from now on this service requires tokens")
        return not self.required

    async def check(self, request: Request, need: str, route: str) -> Caller | JSONResponse:
        """A :class:`Caller` when the request may go on, else the refusal (401, 403, 429 or 503), audited."""
        client = client_of(request)
        if self._still_open():
            if need == "admin":
                return await self.refuse(request, route, 403, NO_TOKENS, None)
            return Caller(client, None)
        if self._failures.count(client) >= MAX_FAILURES:
            wait = self._failures.retry_after(client)
            return await self.refuse(
                request,
                route,
                429,
                f"too many failed token checks from {client}: retry in {wait} s",
                None,
                **{"Retry-After": str(wait)},
            )
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        try:
            self.tokens.require_readable()  # a stat; the file is read again only when it changed
            entry = (
                await run_in_threadpool(self.tokens.verify, presented.strip())
                if scheme.lower() == "bearer"
                else None
            )
        except TokenError as exc:
            log.error("the token file cannot be read: %s", exc)
            return await self.refuse(request, route, 503, str(exc), None)
        if entry is None:
            self._failures.add(client)
            return await self.refuse(
                request,
                route,
                401,
                "a valid token is required: Authorization: Bearer <token>",
                None,
                **{"WWW-Authenticate": "Bearer"},
            )
        if not entry.allows(need):
            return await self.refuse(
                request, route, 403, f"token {entry.name!r} is a {entry.role}; this needs {need}", entry
            )
        return Caller(client, entry)

    async def refuse(
        self,
        request: Request,
        route: str,
        status: int,
        message: str,
        entry: TokenEntry | None,
        **headers: str,
    ) -> JSONResponse:
        """The refusal response; its audit record, unless this client's refusals in the window are over
        :data:`REFUSAL_AUDITS` (then counted, and reported with the next record that is written)."""
        client = client_of(request)
        n = self._refusals.add(client)
        if n <= REFUSAL_AUDITS:
            with self._lock:
                left_out = self._suppressed.pop(client, 0)
            details = {
                "method": request.method,
                "path": request.url.path,
                "client": client,
                "token": entry.name if entry else None,
                **request.path_params,
            }
            if left_out:
                details["refusals_left_out"] = left_out
            await self.record(route, f"refused ({status})", entry.name if entry else "anonymous", **details)
        else:
            with self._lock:
                self._suppressed[client] += 1
        return error(status, message, self.home, **headers)

    async def record(self, action: str, outcome: str, who: str, **details) -> None:
        """An audit record, written in a worker thread (the event loop never waits on fsync)."""
        try:
            await run_in_threadpool(audit.record, self.home, action, outcome, who, **details)
        except OSError as exc:  # a full disk must not turn a refusal into a 500; the log says it
            log.error("cannot write the audit log: %s", exc)
