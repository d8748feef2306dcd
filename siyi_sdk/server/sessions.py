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
from typing import Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

from ..logs import call_extra
from ..pipeline import Chain
from .connection import Connection, ServerCall
from .stats import ServerStats

__all__ = [
    "MAX_SESSION_HEADER_BYTES",
    "PROVISIONAL_BUFFER",
    "PROVISIONAL_TTL",
    "SessionRegistry",
    "bounded_headers",
]

logger = logging.getLogger(__name__)

MAX_SESSION_HEADER_BYTES: Final = 8 * 1024
"""A session keeps at most this much of its latest call's headers (PROTOCOL.md §4)."""
PROVISIONAL_TTL: Final = 30.0
"""Seconds a provisional session lives unless its key is presented again (§7)."""
PROVISIONAL_BUFFER: Final = 100
"""Packets a provisional session buffers at most (§7)."""


def bounded_headers(
    headers: Mapping[str, str], limit: int = MAX_SESSION_HEADER_BYTES
) -> CIMultiDictProxy[str]:
    """A copy of `headers` that holds at most `limit` bytes of names and values.

    Headers are kept in the order sent; one that does not fit in what is left is skipped (a
    later, smaller one may still fit), so a caller with huge headers costs its session
    `limit` bytes, not what it sent. A copy, not the request's own mapping: that one keeps the
    whole raw request head alive.
    """
    kept: CIMultiDict[str] = CIMultiDict()
    room = limit
    for name, value in headers.items():
        size = len(name) + len(value)
        if size <= room:
            kept.add(name, value)
            room -= size
    return CIMultiDictProxy(kept)


class SessionRegistry:
    """The sessions of one server process.

    A session opened by a one-off HTTP call is *provisional* (PROTOCOL.md §7): it buffers at
    most `provisional_buffer` packets and ends `provisional_ttl` seconds after it opened unless
    its key is presented again (`confirm`). Provisional sessions are kept in their own list,
    oldest first, and are the first to go when the registry is full: a flood of one-shot
    callers can never push out a full session.

    Args:
        ttl: seconds a session with no WebSocket and no HTTP activity lives on.
        max_sessions: live sessions at most (provisional ones included); past it the oldest
            provisional session ends, else the longest-idle detached one.
        buffer_size: packets each session keeps for its peer while it is away.
        request_timeout: the default timeout of requests sent through a session.
        on_end: called with each session that ends (expired, closed, evicted).
        clock: monotonic seconds (injectable for tests).
        factory: builds a session handle (the backplane's kind of `Connection`).
        on_retire: when set, an expired or evicted handle is only forgotten here and handed
            to it (a shared backplane decides whether the session lives on elsewhere);
            otherwise it ends.
        provisional_ttl: seconds a provisional session lives unless confirmed.
        provisional_buffer: packets a provisional session buffers at most.
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
        provisional_ttl: float = PROVISIONAL_TTL,
        provisional_buffer: int = PROVISIONAL_BUFFER,
    ) -> None:
        self.ttl = ttl
        self.provisional_ttl = provisional_ttl
        self.provisional_buffer = provisional_buffer
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
        self.chain: Chain[ServerCall] | None = None
        self.stats: ServerStats | None = None
        """The server's counters, given to every session it makes."""
        """The server's middleware chain, given to every session handle made here."""
        # Provisional sessions by opening time, oldest first (a subset of `_sessions`).
        self._provisional: OrderedDict[str, Connection] = OrderedDict()

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

    @property
    def provisional(self) -> int:
        """How many sessions are provisional now."""
        return len(self._provisional)

    def open(
        self,
        principal: Any,
        remote_address: tuple[str, int] | None,
        headers: Mapping[str, str],
        *,
        provisional: bool = False,
    ) -> Connection:
        """Open a new session (making room at the bound: see the class docstring).

        Args:
            principal: who opens it (its owner).
            remote_address: the peer's ``(host, port)``.
            headers: the opening call's headers (a bounded copy is kept).
            provisional: opened by a one-off HTTP call: buffers little, ends soon unless
                confirmed (PROTOCOL.md §7).

        Raises:
            OverflowError: every session is attached and the bound is reached.
        """
        if not self._make_room():
            raise OverflowError(f"{self.max_sessions} sessions are live, all attached")
        # 192 bits from the OS's CSPRNG (§7 asks for at least 128).
        session = self.add(secrets.token_urlsafe(24), principal, remote_address, headers)
        if provisional:
            session.provisional = True
            session.receives = True  # it takes packets from its first moment, a few of them
            session.buffer_limit = min(self.provisional_buffer, self.buffer_size)
            self._provisional[session.session] = session
        if logger.isEnabledFor(logging.DEBUG):  # else its key is not even hashed
            logger.debug(
                "session %r opened%s",
                session,
                " (provisional)" if provisional else "",
                extra=call_extra(session=session),
            )
        return session

    def confirm(self, session: Connection) -> bool:
        """The client presented a provisional session's key again: make it a full session.

        Returns:
            True if it was provisional (nothing it buffered is lost).
        """
        if not session.provisional:
            return False
        session.provisional = False
        session.buffer_limit = self.buffer_size
        self._provisional.pop(session.session, None)
        return True

    def _make_room(self) -> bool:
        """Below the bound (ending a provisional or the longest-idle detached session)?"""
        if len(self._sessions) >= self.max_sessions:
            self.sweep()
        if len(self._sessions) >= self.max_sessions and self._provisional:
            oldest = next(iter(self._provisional.values()))
            self.retire(oldest)
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
        session.headers = bounded_headers(headers)
        session.chain = self.chain
        session.stats = self.stats
        session.opened = session.last_active = self._clock()
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
            self._provisional.pop(session.session, None)
            session.end()
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("session %r ended", session, extra=call_extra(session=session))
            self._on_end(session)

    def retire(self, session: Connection) -> None:
        """An idle session leaves this process (expired or evicted).

        It ends; or, with `on_retire` set, only its handle is forgotten here and handed over.
        """
        if self._on_retire is None:
            self.end(session)
        elif self._sessions.get(session.session) is session:
            del self._sessions[session.session]
            self._provisional.pop(session.session, None)
            self._on_retire(session)

    def sweep(self) -> int:
        """Retire every expired session. Returns how many."""
        now = self._clock()
        ended = 0
        provisional = self._provisional
        while provisional:
            oldest = next(iter(provisional.values()))
            if now - oldest.opened < self.provisional_ttl:
                break
            self.retire(oldest)
            ended += 1
        while (session := self._oldest_idle()) is not None and self._expired(session, now):
            self.retire(session)
            ended += 1
        return ended

    def discard(self, session: Connection) -> None:
        """Forget a handle here without ending anything (it ended on another node)."""
        if self._sessions.get(session.session) is session:
            del self._sessions[session.session]
            self._provisional.pop(session.session, None)

    def forget_all(self) -> None:
        """Drop every handle here without ending the sessions (they live on elsewhere)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._provisional.clear()
        for session in sessions:
            session.end()

    def end_all(self) -> None:
        """End every session (the server is stopping)."""
        for session in list(self._sessions.values()):
            self.end(session)
