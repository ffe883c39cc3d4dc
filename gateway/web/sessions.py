"""Web sessions, CSRF tokens, per-form idempotency tokens and the per-address login limit.

Sessions live in the web process's memory (one ``onecard web`` process per registry; a restart
logs everyone out, which is the safe direction). The cookie holds only a random session id; the
session holds the authenticated :class:`Actor`, the CSRF token and the forms it issued.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.services.base import Actor

#: Forms a session remembers (issued and answered); older ones are forgotten first.
MAX_FORMS = 64
MAX_SESSIONS = 50_000


@dataclass
class Flash:
    level: str  # "ok" or "error"
    zh: str
    en: str


@dataclass
class WebSession:
    id: str
    csrf: str
    last_seen: float
    actor: Actor | None = None
    must_change_password: bool = False
    flashes: list[Flash] = field(default_factory=list)
    stash: dict[str, Any] = field(default_factory=dict)
    issued: OrderedDict[str, None] = field(default_factory=OrderedDict)
    answered: OrderedDict[str, asyncio.Future[str | None]] = field(default_factory=OrderedDict)

    def form_token(self) -> str:
        """A one-use token for one rendered form (a double submit does one thing)."""
        token = secrets.token_urlsafe(18)
        self.issued[token] = None
        while len(self.issued) > MAX_FORMS:
            self.issued.popitem(last=False)
        return token

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())

    def flash(self, level: str, zh: str, en: str) -> None:
        self.flashes.append(Flash(level, zh, en))

    def take_flashes(self) -> list[Flash]:
        out, self.flashes = self.flashes, []
        return out

    async def once(
        self, token: str | None, action: Callable[[], Awaitable[str]]
    ) -> tuple[str | None, bool]:
        """Run ``action`` once per form token: ``(redirect target, ran)``.

        A repeated token gets the first submission's target (waiting for it if it is still
        running); ``(None, False)`` means the token is unknown (expired page, forged form).
        An action that raises gives its token back, so the corrected form can be sent again.
        """
        if token is None:
            return None, False
        done = self.answered.get(token)
        if done is not None:
            return await asyncio.shield(done), False
        if token not in self.issued:
            return None, False
        del self.issued[token]
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.answered[token] = future
        while len(self.answered) > MAX_FORMS:
            self.answered.popitem(last=False)
        try:
            target = await action()
        except BaseException:
            self.answered.pop(token, None)
            self.issued[token] = None
            future.set_result(None)
            raise
        future.set_result(target)
        return target, True


class SessionStore:
    def __init__(self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle_timeout_s
        self.clock = clock
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        #: logged-in sessions the sweep ended for idleness: their next request still says why
        self._timed_out: OrderedDict[str, None] = OrderedDict()

    def get(self, sid: str | None) -> tuple[WebSession | None, bool]:
        """The live session for ``sid`` and whether it had just timed out."""
        if not sid:
            return None, False
        session = self._sessions.get(sid)
        if session is None:
            if sid in self._timed_out:  # the sweep was first: still say why
                del self._timed_out[sid]
                return None, True
            return None, False
        now = self.clock()
        if now - session.last_seen > self.idle:
            del self._sessions[sid]
            return None, session.actor is not None
        session.last_seen = now
        self._sessions.move_to_end(sid)
        return session, False

    def new(self) -> WebSession:
        session = WebSession(
            id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), last_seen=self.clock()
        )
        self._sessions[session.id] = session
        if len(self._sessions) > MAX_SESSIONS:
            self._evict()
        return session

    def _evict(self) -> None:
        """Past the bound, the oldest sessions nobody logged in to go first: a loop of
        cookie-less requests (anyone's) must not log the operators or holders out."""
        excess = len(self._sessions) - MAX_SESSIONS
        oldest_first = (sid for sid, s in self._sessions.items() if s.actor is None)
        for sid in list(itertools.islice(oldest_first, excess)):
            del self._sessions[sid]
        while len(self._sessions) > MAX_SESSIONS:  # all logged in: the longest idle
            self._sessions.popitem(last=False)

    def rotate(self, session: WebSession) -> WebSession:
        """A fresh id and CSRF token at login (no session fixation); the old id is dead."""
        self._sessions.pop(session.id, None)
        fresh = self.new()
        fresh.flashes = session.flashes
        return fresh

    def drop(self, session: WebSession) -> None:
        self._sessions.pop(session.id, None)

    def expired_actors(self) -> list[Actor]:
        """Forget sessions idle past the timeout; the holders they belonged to (for the audit)."""
        now = self.clock()
        gone = [s for s in self._sessions.values() if now - s.last_seen > self.idle]
        for s in gone:
            del self._sessions[s.id]
            if s.actor is not None:
                self._timed_out[s.id] = None
        while len(self._timed_out) > MAX_SESSIONS:
            self._timed_out.popitem(last=False)
        return [s.actor for s in gone if s.actor is not None]


class AddressLimiter:
    """Failed logins per client address in a sliding window (the lockout covers each account)."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        now = self.clock()
        q = self._failures.setdefault(address, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, address: str) -> bool:
        return len(self._recent(address)) >= self.limit

    def failed(self, address: str) -> None:
        self._recent(address).append(self.clock())
        if len(self._failures) > MAX_SESSIONS:
            for key in [k for k, q in self._failures.items() if not q]:
                del self._failures[key]
