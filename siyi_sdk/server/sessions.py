"""The live sessions of one server: open, find, expire, bound (PROTOCOL.md §7).

`SessionRegistry` is in memory; a registry shared between processes is a second
implementation of the same methods.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .connection import Connection

__all__ = ["SessionRegistry"]

logger = logging.getLogger(__name__)


class SessionRegistry:
    """The sessions of one server process.

    Args:
        ttl: seconds a session with no WebSocket and no HTTP activity lives on.
        max_sessions: live sessions at most; past it the longest-idle detached one ends.
        buffer_size: packets each session keeps for its peer while it is away.
        request_timeout: the default timeout of requests sent through a session.
        on_end: called with each session that ends (expired, closed, evicted).
        clock: monotonic seconds (injectable for tests).
        factory: builds a session handle (the backplane's kind of `Connection`).
        on_retire: when set, an expired or evicted handle is only forgotten here and handed
            to it (a shared backplane decides whether the session lives on elsewhere);
            otherwise it ends.
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        max_sessions: int = 10_000,
        buffer_size: int = 1000,
        request_timeout: float | None = 30.0,
        on_end: Callable[[Connection], None] = lambda connection: None,
        clock: Callable[[], float] = time.monotonic,
        factory: Callable[..., Connection] = Connection,
        on_retire: Callable[[Connection], None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.buffer_size = buffer_size
        self.request_timeout = request_timeout
        self._on_end = on_end
        self._clock = clock
        self._factory = factory
        self._on_retire = on_retire
        # Ordered by last activity, oldest first: expiry and eviction only ever look at the
        # front, so a flood of one-off HTTP callers costs O(1) per session, not a scan.
        self._sessions: OrderedDict[str, Connection] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._sessions.values()))

    def _expired(self, session: Connection, now: float) -> bool:
        return session.peer is None and session.polls == 0 and now - session.last_active > self.ttl

    def get(self, key: str | None) -> Connection | None:
        """The live session with this key, or None (unknown, ended or expired)."""
        if not key:
            return None
        session = self._sessions.get(key)
        if session is not None and self._expired(session, self._clock()):
            self.retire(session)
            return None
        return session

    def open(
        self, principal: Any, remote_address: tuple[str, int] | None, headers: Mapping[str, str]
    ) -> Connection:
        """Open a new session (ending the longest-idle detached one when at the bound).

        Raises:
            OverflowError: every session is attached and the bound is reached.
        """
        if not self._make_room():
            raise OverflowError(f"{self.max_sessions} sessions are live, all attached")
        session = self.add(secrets.token_urlsafe(24), principal, remote_address, headers)
        logger.debug("session %r opened", session)
        return session

    def _make_room(self) -> bool:
        """Below the bound (retiring the longest-idle detached session if need be)?"""
        if len(self._sessions) >= self.max_sessions:
            self.sweep()
        if len(self._sessions) >= self.max_sessions:
            idle = self._oldest_idle()
            if idle is None:
                return False
            self.retire(idle)
        return True

    def add(
        self,
        key: str,
        principal: Any,
        remote_address: tuple[str, int] | None,
        headers: Mapping[str, str],
    ) -> Connection:
        """Make a handle for a session with a given key (one another node opened).

        It is made even when every handle here is attached: the session exists already.
        """
        self._make_room()
        session = self._factory(
            session=key,
            principal=principal,
            remote_address=remote_address,
            headers=headers,
            request_timeout=self.request_timeout,
            buffer_size=self.buffer_size,
        )
        session.last_active = self._clock()
        self._sessions[key] = session
        return session

    def touch(self, session: Connection) -> None:
        """Note activity (an HTTP call, a detach): the session's idle clock restarts."""
        session.last_active = self._clock()
        if self._sessions.get(session.session) is session:
            self._sessions.move_to_end(session.session)

    def _oldest_idle(self) -> Connection | None:
        """The longest-idle detached session, moving busy ones out of the way (amortised O(1))."""
        for _ in range(len(self._sessions)):
            key, session = next(iter(self._sessions.items()))
            if session.peer is None and session.polls == 0:
                return session
            self._sessions.move_to_end(key)  # attached or polling: busy, not idle
        return None

    def end(self, session: Connection) -> None:
        """End a session now (idempotent)."""
        if self._sessions.get(session.session) is session:
            del self._sessions[session.session]
            session.end()
            logger.debug("session %r ended", session)
            self._on_end(session)

    def retire(self, session: Connection) -> None:
        """An idle session leaves this process (expired or evicted).

        It ends; or, with `on_retire` set, only its handle is forgotten here and handed over.
        """
        if self._on_retire is None:
            self.end(session)
        elif self._sessions.get(session.session) is session:
            del self._sessions[session.session]
            self._on_retire(session)

    def sweep(self) -> int:
        """Retire every expired session. Returns how many."""
        now = self._clock()
        ended = 0
        while (session := self._oldest_idle()) is not None and self._expired(session, now):
            self.retire(session)
            ended += 1
        return ended

    def discard(self, session: Connection) -> None:
        """Forget a handle here without ending anything (it ended on another node)."""
        if self._sessions.get(session.session) is session:
            del self._sessions[session.session]

    def forget_all(self) -> None:
        """Drop every handle here without ending the sessions (they live on elsewhere)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.end()

    def end_all(self) -> None:
        """End every session (the server is stopping)."""
        for session in list(self._sessions.values()):
            self.end(session)
